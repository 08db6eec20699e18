"""Server turn detection: the TurnDetector state machine, the session's VAD flows, and real VAD on real audio.

The protocol tests play the VAD by hand: `client.hear(*probabilities)` is one tick's speech
probabilities (one per 32 ms window of the client's audio). The last section runs Silero on the
test speech (tests/audio) exactly as the inference thread does: 80 ms frames of 24 kHz.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from voice.protocol import Dialect
from voice.protocol.session_config import DEFAULT_TURN_DETECTION
from voice.protocol.turn_detection import WINDOW_MS, TurnDetector, TurnEvent

from .helpers import read_pcm16
from .protocol_client import (
    BOTH,
    LOUD,
    PAUSE,
    SPEECH,
    TURN_DETECTION_OFF,
    ProtocolClient,
    audio_ms,
    closing,
    item_events,
    opening,
    stored,
    types,
    wire,
)

SERVER_VAD = dict(DEFAULT_TURN_DETECTION)  # threshold 0.5, prefix_padding_ms 300, silence_duration_ms 500


def server_vad(**fields: Any) -> dict[str, Any]:
    return {**SERVER_VAD, **fields}


def turn_detection_update(dialect: Dialect, turn: dict[str, Any] | None) -> dict[str, Any]:
    if dialect is Dialect.GA:
        return {"type": "realtime", "audio": {"input": {"turn_detection": turn}}}
    return {"turn_detection": turn}


def windows(ms: int) -> int:
    return ms // WINDOW_MS


# --- TurnDetector -----------------------------------------------------------------------------


def test_speech_starts_at_the_first_window_over_the_threshold_moved_back_by_the_prefix_padding() -> None:
    detector = TurnDetector()
    assert detector.feed([0.1] * 20, SERVER_VAD) == []  # 640 ms of quiet
    assert detector.feed([0.49, 0.5], SERVER_VAD) == [TurnEvent("started", 21 * WINDOW_MS - 300)]
    assert detector.speaking


def test_the_prefix_padding_stops_at_the_start_of_the_session() -> None:
    detector = TurnDetector()
    assert detector.feed([0.2, 0.2, 0.9], SERVER_VAD) == [TurnEvent("started", 0)]  # 64 - 300 ms
    other = TurnDetector()
    assert other.feed([0.0] * 5 + [0.9], server_vad(prefix_padding_ms=100)) == [TurnEvent("started", 60)]


def test_hysteresis_keeps_speech_going_below_the_threshold() -> None:
    detector = TurnDetector()
    detector.feed([0.9], SERVER_VAD)
    assert detector.feed([0.36] * 50, SERVER_VAD) == []  # 1.6 s just above threshold - 0.15
    assert detector.speaking
    events = detector.feed([0.34] * windows(500) + [0.34], SERVER_VAD)
    assert events == [TurnEvent("stopped", 51 * WINDOW_MS)]


@pytest.mark.parametrize("threshold", [0.05, 0.1, 0.15])
def test_a_low_threshold_still_lets_speech_stop(threshold: float) -> None:
    """threshold - 0.15 would be zero or less: no window could ever end the speech."""
    detector = TurnDetector()
    turn = server_vad(threshold=threshold)
    assert detector.feed([threshold] * 5, turn) == [TurnEvent("started", 0)]
    assert detector.feed([threshold / 2] * 20, turn) == []  # half the threshold still counts as speech
    assert detector.feed([0.0] * 16, turn) == [TurnEvent("stopped", 25 * WINDOW_MS)]


def test_a_quiet_window_below_the_threshold_does_not_start_speech() -> None:
    detector = TurnDetector()
    assert detector.feed([0.4] * 50, SERVER_VAD) == []
    assert detector.feed([0.75] * 10, server_vad(threshold=0.8)) == []
    assert not detector.speaking


@pytest.mark.parametrize("silence_ms", [200, 500, 1000])
def test_speech_stops_after_silence_duration_ms(silence_ms: int) -> None:
    detector = TurnDetector()
    turn = server_vad(silence_duration_ms=silence_ms)
    detector.feed([0.9] * 10, turn)
    needed = -(-silence_ms // WINDOW_MS)  # whole windows until the pause reaches silence_ms
    assert detector.feed([0.0] * (needed - 1), turn) == []
    assert detector.feed([0.0], turn) == [TurnEvent("stopped", 10 * WINDOW_MS)]
    assert not detector.speaking
    assert detector.feed([0.0] * 100, turn) == []  # one stop per turn


def test_audio_end_ms_is_the_end_of_the_last_speech_window() -> None:
    detector = TurnDetector()
    # quiet 0-64 ms, speech 64-128, a short pause (shorter than silence_duration_ms), speech again
    # 256-320 (0.4 is above threshold - 0.15, so it still counts), then quiet.
    events = detector.feed([0.0, 0.0, 0.9, 0.8, 0.1, 0.1, 0.1, 0.1, 0.6, 0.4] + [0.0] * 16, SERVER_VAD)
    assert events == [TurnEvent("started", 0), TurnEvent("stopped", 320)]


def test_a_second_turn_is_timed_on_the_same_clock() -> None:
    detector = TurnDetector()
    first = detector.feed([0.9] * 10 + [0.0] * 16, SERVER_VAD)
    second = detector.feed([0.0] * 20 + [0.9] * 5 + [0.0] * 16, SERVER_VAD)
    assert first == [TurnEvent("started", 0), TurnEvent("stopped", 320)]
    assert second == [TurnEvent("started", 46 * WINDOW_MS - 300), TurnEvent("stopped", 51 * WINDOW_MS)]


def test_the_clock_runs_while_turn_detection_is_off() -> None:
    detector = TurnDetector()
    assert detector.feed([0.9] * 30, None) == []
    assert not detector.speaking
    assert detector.clock_ms == 30 * WINDOW_MS
    assert detector.feed([0.9], SERVER_VAD) == [TurnEvent("started", 30 * WINDOW_MS - 300)]


def test_turning_detection_off_mid_speech_forgets_the_turn() -> None:
    detector = TurnDetector()
    detector.feed([0.9] * 5, SERVER_VAD)
    assert detector.feed([0.0] * 30, None) == []
    assert detector.feed([0.0] * 30, SERVER_VAD) == []  # no stop for a turn that was dropped


@pytest.mark.parametrize(("eagerness", "silence_ms"), [("high", 300), ("medium", 600), ("auto", 600), ("low", 1000)])
def test_semantic_vad_eagerness_sets_how_long_a_pause_ends_the_turn(eagerness: str, silence_ms: int) -> None:
    turn = {"type": "semantic_vad", "eagerness": eagerness, "create_response": True, "interrupt_response": True}
    detector = TurnDetector()
    assert detector.feed([0.0] * 20 + [0.9] * 10, turn) == [TurnEvent("started", 20 * WINDOW_MS - 300)]
    needed = -(-silence_ms // WINDOW_MS)
    assert detector.feed([0.0] * (needed - 1), turn) == []
    assert detector.feed([0.0], turn) == [TurnEvent("stopped", 30 * WINDOW_MS)]


def test_semantic_vad_without_eagerness_is_auto() -> None:
    detector = TurnDetector()
    turn = {"type": "semantic_vad"}
    detector.feed([0.9], turn)
    assert detector.feed([0.0] * (windows(600) + 1), turn) == [TurnEvent("stopped", WINDOW_MS)]


# --- the session: one spoken turn -------------------------------------------------------------


@BOTH
def test_a_spoken_turn_gives_the_canonical_ordering(dialect: Dialect) -> None:
    """One spoken turn (docs/protocol-mapping.md): speech_started, speech_stopped, committed, user item, response."""
    client = ProtocolClient(dialect)
    client.send({"type": "input_audio_buffer.append", "audio": audio_ms(1200)})
    quiet = client.hear(0.0, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # 480 ms
    assert quiet.events == []
    started = client.hear(0.2, 0.95)
    assert types(started) == ["input_audio_buffer.speech_started"]
    assert client.hear(*SPEECH).events == []
    stopped = client.hear(*PAUSE)
    assert types(stopped) == [
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        *item_events(dialect),
        *opening(dialect),
    ]
    speech_started = started.events[0]
    speech_stopped, committed, *rest = stopped.events
    user_entered = rest[: len(item_events(dialect))]
    response_created, assistant_added, assistant_entered, _part = rest[len(item_events(dialect)) :]

    item_id = speech_started["item_id"]
    assert item_id.startswith("item_")
    assert speech_stopped["item_id"] == committed["item_id"] == item_id
    assert speech_started["audio_start_ms"] == 16 * WINDOW_MS - 300  # the 17th window, less the padding
    assert speech_stopped["audio_end_ms"] == (17 + len(SPEECH)) * WINDOW_MS
    assert committed["previous_item_id"] is None
    for event in user_entered:
        assert event["previous_item_id"] is None
        assert event["item"]["id"] == item_id
        assert (event["item"]["type"], event["item"]["role"], event["item"]["status"]) == (
            "message",
            "user",
            "completed",
        )
        assert event["item"]["content"] == [{"type": "input_audio", "transcript": None}]

    response = response_created["response"]
    assert response["status"] == "in_progress" and response["output"] == [] and response["metadata"] is None
    assert assistant_added["item"]["role"] == "assistant"
    assert assistant_entered["previous_item_id"] == item_id
    [user_record] = [r for r in stored(stopped) if r.role == "user"]
    assert user_record.item_id == item_id

    # The model's output now goes into that response.
    assert types(client.output("Sure", LOUD)) == [
        wire(dialect, "response.output_audio.delta"),
        wire(dialect, "response.output_audio_transcript.delta"),
    ]
    done = client.speak(quiet_frames=3)
    assert types(done)[-len(closing(dialect)) :] == closing(dialect)
    assert done.events[-1]["response"]["status"] == "completed"


def test_each_turn_gets_its_own_item_linked_to_the_previous_one() -> None:
    client = ProtocolClient()
    first = client.user_turn()
    first_user = first.events[0]["item_id"]
    client.speak("One", quiet_frames=3)  # the first response ends
    second = client.user_turn()
    second_user = second.events[0]["item_id"]
    assert second_user != first_user
    committed = next(e for e in second.events if e["type"] == "input_audio_buffer.committed")
    first_assistant = first.events[-1]["item_id"]
    assert committed["item_id"] == second_user and committed["previous_item_id"] == first_assistant
    assert types(second)[-4:] == opening(Dialect.GA)


@BOTH
def test_create_response_false_commits_the_turn_but_opens_no_response(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    client.update(turn_detection_update(dialect, {"type": "server_vad", "create_response": False}))
    turn = client.user_turn()
    assert types(turn) == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        *item_events(dialect),
    ]
    assert not client.session.wants_output
    assert client.speak("Hello", quiet_frames=3).events == []  # the model's output reaches nobody
    # The client decides when to answer.
    assert types(client.send({"type": "response.create"})) == opening(dialect)


# --- the session: barge-in --------------------------------------------------------------------


@BOTH
def test_speech_during_a_response_cancels_it_as_turn_detected(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    opened = client.user_turn()
    response_id = opened.events[-1]["response_id"]
    assistant_id = opened.events[-1]["item_id"]
    client.speak("Let", " me")

    barge_in = client.hear(0.1, 0.9)
    assert types(barge_in) == ["input_audio_buffer.speech_started", *closing(dialect)]
    done = barge_in.events[-1]["response"]
    assert done["id"] == response_id and done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    [item] = done["output"]
    assert item["id"] == assistant_id and item["status"] == "incomplete"
    assert item["content"][0]["transcript"] == "Let me"
    by_type = {event["type"]: event for event in barge_in.events}
    assert by_type["response.output_item.done"]["item"]["status"] == "incomplete"
    [record] = stored(barge_in)
    assert (record.item_id, record.status, record.text) == (assistant_id, "incomplete", "Let me")
    assert not client.session.wants_output
    assert client.output("more", LOUD).events == []  # the model's output is no longer sent

    # The interrupting turn then gets its own item and response.
    new_turn = barge_in.events[0]["item_id"]
    after = client.hear(*SPEECH, *PAUSE)
    assert types(after) == [
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        *item_events(dialect),
        *opening(dialect),
    ]
    assert after.events[0]["item_id"] == after.events[1]["item_id"] == new_turn
    assert after.events[1]["previous_item_id"] == assistant_id
    assert after.events[-4]["response"]["id"] != response_id


@BOTH
def test_barge_in_on_a_response_the_client_created(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    client.send({"type": "response.create"})
    client.output("Hi", LOUD)
    barge_in = client.hear(0.9)
    assert types(barge_in) == ["input_audio_buffer.speech_started", *closing(dialect)]
    assert barge_in.events[-1]["response"]["status_details"]["reason"] == "turn_detected"


@BOTH
def test_interrupt_response_false_lets_the_response_go_on(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    client.update(turn_detection_update(dialect, {"type": "server_vad", "interrupt_response": False}))
    opened = client.user_turn()
    response_id = opened.events[-1]["response_id"]
    client.output("Still", LOUD)
    assert types(client.hear(*SPEECH)) == ["input_audio_buffer.speech_started"]
    assert client.session.wants_output
    assert types(client.output(" talking", LOUD)) == [
        wire(dialect, "response.output_audio.delta"),
        wire(dialect, "response.output_audio_transcript.delta"),
    ]
    # The user's turn is committed when it ends, but no second response opens over the first:
    # it opens right after the first one is done, to answer that turn.
    ended = client.hear(*PAUSE)
    assert types(ended) == ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed", *item_events(dialect)]
    finished = client.speak(quiet_frames=3).events
    kinds = [event["type"] for event in finished]
    done = finished[kinds.index("response.done")]["response"]
    assert (done["id"], done["status"]) == (response_id, "completed")
    assert done["output"][0]["content"][0]["transcript"] == "Still talking"
    answer = finished[kinds.index("response.done") + 1]
    assert answer["type"] == "response.created" and answer["response"]["id"] != response_id


def test_speech_with_no_response_open_just_starts_a_turn() -> None:
    client = ProtocolClient()
    assert types(client.hear(0.9)) == ["input_audio_buffer.speech_started"]


# --- the session: turn detection off, and audio the client did not send ------------------------


@BOTH
def test_turn_detection_null_gives_no_vad_events(dialect: Dialect) -> None:
    client = ProtocolClient(dialect)
    client.update(TURN_DETECTION_OFF[dialect])
    client.send({"type": "input_audio_buffer.append", "audio": audio_ms(500)})
    assert client.user_turn().events == []
    assert client.hear(*SPEECH, *PAUSE, *SPEECH, *PAUSE).events == []
    assert not client.session.wants_output
    # Manual turns: commit, then response.create; and speech does not cancel the response.
    assert types(client.send({"type": "input_audio_buffer.commit"})) == [
        "input_audio_buffer.committed",
        *item_events(dialect),
    ]
    assert types(client.send({"type": "response.create"})) == opening(dialect)
    assert client.hear(*SPEECH).events == []
    assert client.session.wants_output


def test_turning_detection_back_on_keeps_the_session_clock() -> None:
    client = ProtocolClient()
    client.update(TURN_DETECTION_OFF[Dialect.GA])
    client.hear(*([0.9] * 50))  # 1.6 s of client audio while detection was off
    client.update(turn_detection_update(Dialect.GA, {"type": "server_vad"}))
    started = client.hear(0.9)
    assert started.events[0]["audio_start_ms"] == 50 * WINDOW_MS - 300


def test_server_fed_silence_does_not_move_the_vad_clock() -> None:
    """While a response plays and the client sends nothing, the server feeds the model silence;
    those frames are not the client's audio, so they are neither scored nor timed."""
    client = ProtocolClient()
    client.hear(*([0.0] * 20))  # 640 ms of the client's audio
    for _ in range(30):  # 2.4 s of server-fed silence, whatever its scores
        assert client.session.model_output(None, None, speech=(0.9, 0.9, 0.9), client_audio=False).events == []
    started = client.hear(0.9)
    assert started.events[0]["audio_start_ms"] == 640 - 300
    stopped = client.hear(*PAUSE)
    assert stopped.events[0]["audio_end_ms"] == 640 + WINDOW_MS


def test_server_fed_silence_does_not_end_a_turn() -> None:
    client = ProtocolClient()
    client.hear(*SPEECH)
    for _ in range(30):
        assert client.session.model_output(None, None, speech=(), client_audio=False).events == []
    assert types(client.hear(*PAUSE))[0] == "input_audio_buffer.speech_stopped"


# --- real VAD on real speech ------------------------------------------------------------------

FRAME_SAMPLES = 1920  # the 80 ms frames the inference thread scores
TOLERANCE_MS = 200


def frames_of(name: str, trailing_silence_s: float = 1.0) -> list[np.ndarray]:
    """The file as the engine sees it: float32 frames of 1920 samples, then a second of silence."""
    pcm = np.frombuffer(read_pcm16(name), dtype="<i2").astype(np.float32) / 32768
    pcm = np.concatenate([pcm, np.zeros(int(24000 * trailing_silence_s), dtype=np.float32)])
    usable = pcm.size // FRAME_SAMPLES * FRAME_SAMPLES
    return list(pcm[:usable].reshape(-1, FRAME_SAMPLES))


@pytest.fixture(scope="module")
def speech_detector():
    from voice.engine.vad import SpeechDetector

    return SpeechDetector()


def detect(detector: Any, name: str, turn: dict[str, Any] = SERVER_VAD) -> list[TurnEvent]:
    detector.reset()
    turns = TurnDetector()
    events: list[TurnEvent] = []
    for frame in frames_of(name):
        events.extend(turns.feed(detector.process(frame), turn))
    return events


def test_silero_scores_every_32_ms_window_of_the_stream(speech_detector: Any) -> None:
    speech_detector.reset()
    frames = frames_of("weather_en_24k.wav")
    counts = [len(speech_detector.process(frame)) for frame in frames]
    assert max(counts) <= 3  # 80 ms frames, 32 ms windows (the resampler hands over uneven chunks)
    # Every window is scored: the clock keeps up with the stream, less the resampler's delay.
    assert 0 <= len(frames) * 80 - sum(counts) * WINDOW_MS <= 100


def test_two_utterances_are_found_where_they_were_spoken(speech_detector: Any) -> None:
    events = detect(speech_detector, "hello_booking_24k.wav")
    assert [event.kind for event in events] == ["started", "stopped", "started", "stopped"], events
    truth = [(1030, 5570), (6950, 11490)]  # measured spans, see tests/audio/README.md
    prefix = SERVER_VAD["prefix_padding_ms"]
    for (start, end), (started, stopped) in zip(truth, zip(events[::2], events[1::2], strict=True), strict=True):
        assert abs(started.audio_ms + prefix - start) <= TOLERANCE_MS, (started, start)
        assert abs(stopped.audio_ms - end) <= TOLERANCE_MS, (stopped, end)


@pytest.mark.parametrize("name", ["silence_2s_24k.wav", "noise_2s_24k.wav"])
def test_no_speech_is_found_in_silence_or_noise(speech_detector: Any, name: str) -> None:
    assert detect(speech_detector, name) == []


def test_the_real_turns_through_the_session(speech_detector: Any) -> None:
    """Silero's scores for hello_booking fed to a session: two committed turns, two responses."""
    client = ProtocolClient()
    speech_detector.reset()
    for frame in frames_of("hello_booking_24k.wav"):
        client.hear(*speech_detector.process(frame))
        if client.session.wants_output:
            client.speak("Okay", quiet_frames=3)  # the model answers at once, and briefly
    seen = [event["type"] for event in client.seen]
    assert seen.count("input_audio_buffer.speech_started") == 2
    assert seen.count("input_audio_buffer.committed") == 2
    assert seen.count("response.created") == seen.count("response.done") == 2
    starts = [e["item_id"] for e in client.seen if e["type"] == "input_audio_buffer.speech_started"]
    commits = [e["item_id"] for e in client.seen if e["type"] == "input_audio_buffer.committed"]
    assert starts == commits


def test_a_manual_commit_ends_the_speech_being_followed() -> None:
    client = ProtocolClient()
    client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(9600)).decode()})
    assert types(client.hear(0.9)) == ["input_audio_buffer.speech_started"]
    committed = client.send({"type": "input_audio_buffer.commit"})
    assert committed.events[0]["type"] == "input_audio_buffer.committed"
    assert types(client.hear(*PAUSE)) == [], "no second commit when the speech's pause comes"


def test_audio_the_model_never_heard_leaves_the_clock() -> None:
    client = ProtocolClient()
    frames = client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(2 * 3840)).decode()})
    assert len(frames.frames) == 2
    client.session.input_dropped(1920)  # one frame refused by a full input queue
    assert client.session.input_audio.total == 1920 and client.session.input_audio.buffered_samples == 1920
    client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(1000)).decode()})
    client.send({"type": "input_audio_buffer.clear"})  # its 500 samples never made a whole frame
    assert client.session.input_audio.total == 1920
