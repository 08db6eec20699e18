"""LiveSession with no server and no model: lifecycle, audio, transcripts, commands and refusals.

Every server event any test sees is validated strictly against `openai.types.live`.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from voice.live import LiveOptions, LiveSession
from voice.live.records import Fragment
from voice.protocol.audio import FRAME_SAMPLES
from voice.protocol.effects import Effects
from voice.protocol.records import TranscriptionOutcome

from .strict_live import strict_live

LOUD = (0.5 * np.sin(np.arange(FRAME_SAMPLES) * 0.1)).astype(np.float32)
HUM = np.full(FRAME_SAMPLES, 0.001, dtype=np.float32)  # Moshi's quiet noise: below the activity rms


def pcm16(seconds: float, value: int = 1000) -> str:
    return base64.b64encode(np.full(int(24000 * seconds), value, dtype="<i2").tobytes()).decode()


def checked(effects: Effects) -> Effects:
    for event in effects.events:
        strict_live(event)
    return effects


def send(live: LiveSession, **event: Any) -> Effects:
    return checked(live.receive(json.dumps(event)))


def types(effects: Effects) -> list[str]:
    return [e["type"] for e in effects.events]


def started(options: LiveOptions | None = None, **config: Any) -> LiveSession:
    session = LiveSession(options or LiveOptions())
    assert session.start().events == []
    effects = send(session, type="session.start", event_id="s1", session={"model": "gpt-live-1", **config})
    assert types(effects) == ["session.started"], effects.events
    return session


def step(session: LiveSession, text: str | None = None, pcm: np.ndarray | None = None, **kw: Any) -> Effects:
    return checked(session.model_output(text, pcm, **kw))


def error_of(effects: Effects) -> dict[str, Any]:
    assert types(effects) == ["error"], effects.events
    return effects.events[0]["error"]


# --- lifecycle --------------------------------------------------------------------------------


def test_session_started_resolves_defaults() -> None:
    session = LiveSession(LiveOptions(max_duration_s=60, wall=lambda: 1000.0))
    effects = send(session, type="session.start", event_id="s1", session={"model": "gpt-live-1.1"})
    event = effects.events[0]
    assert event["client_event_id"] == "s1"
    resource = event["session"]
    assert resource["id"] == session.session_id and resource["id"].startswith("live_")
    assert resource["status"] == "active" and resource["model"] == "gpt-live-1.1"
    assert resource["expires_at"] == 1060
    assert resource["audio"] == {"format": {"type": "audio/pcm", "rate": 24000}, "output": {"voice": "marin"}}
    assert resource["delegation"] == {"type": "client"}
    assert resource["instructions"] == LiveOptions().instructions
    assert session.model_type == "sft" and session.wants_output


def test_server_model_names_select_a_model_type() -> None:
    session = started(LiveOptions(server_models={"moshi-base": "base"}))
    assert session.model_type == "sft"
    other = LiveSession(LiveOptions(server_models={"moshi-base": "base"}))
    send(other, type="session.start", session={"model": "moshi-base"})
    assert other.model_type == "base"


def test_unknown_model_is_an_error_then_a_close() -> None:
    session = LiveSession()
    error = error_of(send(session, type="session.start", event_id="s1", session={"model": "gpt-4o"}))
    assert error["param"] == "session.model" and error["code"] == "invalid_model"
    assert error["client_event_id"] == "s1"
    assert session.close_code == 1000 and not session.wants_output


def test_command_before_start_is_an_error() -> None:
    session = LiveSession()
    error = error_of(send(session, type="session.input_audio.mute", event_id="m1"))
    assert error["code"] == "session_not_started" and error["client_event_id"] == "m1"
    assert not session.wants_output
    assert session.model_output(None, LOUD).events == []


def test_second_start_is_an_error_and_changes_nothing() -> None:
    session = started(instructions="Be brief.")
    before = dict(session.resource or {})
    error = error_of(send(session, type="session.start", event_id="s2", session={"model": "gpt-live-1.1"}))
    assert error["code"] == "session_already_started" and error["client_event_id"] == "s2"
    assert session.resource == before


def test_close_sends_closed_then_nothing() -> None:
    session = started()
    for _ in range(30):
        step(session, None, HUM)
    effects = send(session, type="session.close", event_id="c1")
    closed = effects.events[-1]
    assert closed["type"] == "session.closed" and closed["reason"] == "close_requested"
    assert closed["client_event_id"] == "c1" and closed["usage"] == {"seconds": 2}
    assert closed["session"] == session.resource and session.close_code == 1000
    assert send(session, type="session.input_audio.mute").events == []
    assert session.model_output(None, LOUD).events == [] and not session.wants_output


def test_expiry_from_model_frames() -> None:
    session = started(LiveOptions(max_duration_s=1))
    out = [step(session, None, HUM) for _ in range(13)]
    assert all(types(e)[-1] != "session.closed" for e in out[:12])
    assert out[12].events[-1]["reason"] == "expired" and session.close_reason == "expired"
    assert session.model_output(None, HUM).events == []


def test_expire_called_by_the_runtime() -> None:
    session = started()
    assert types(session.expire())[-1] == "session.closed"


def test_connection_lost_records_the_close() -> None:
    session = started()
    effects = session.close()
    assert effects.events == [] and effects.records[0].reason == "connection_lost"


def test_usage_every_few_seconds() -> None:
    session = started(LiveOptions(usage_interval_ms=2000, context_frames=100))
    usage = [e for _ in range(60) for e in step(session, None, HUM).events if e["type"] == "session.usage.updated"]
    assert [u["usage"]["seconds"] for u in usage] == [2, 4]
    assert usage[0]["context_window"]["usage_ratio"] == 0.25 and usage[1]["context_window"]["usage_ratio"] == 0.5


# --- audio ------------------------------------------------------------------------------------


def audio_bytes(effects: Effects) -> list[bytes]:
    return [base64.b64decode(e["delta"]) for e in effects.events if e["type"] == "session.output_audio.delta"]


@pytest.mark.parametrize(
    ("fmt", "size"),
    [(None, 3840), ({"type": "audio/pcm", "rate": 16000}, 2560), ({"type": "audio/pcmu", "rate": 8000}, 640)],
)
def test_one_delta_per_frame_in_the_session_format(fmt: dict[str, Any] | None, size: int) -> None:
    session = started(**({"audio": {"format": fmt}} if fmt else {}))
    for _ in range(5):
        (delta,) = audio_bytes(step(session, None, None))
        assert len(delta) == size


def test_input_is_decoded_and_cut_into_model_frames() -> None:
    session = started(audio={"format": {"type": "audio/pcma", "rate": 8000}})
    effects = send(session, type="session.input_audio.append", audio=base64.b64encode(b"\xd5" * 1600).decode())
    assert effects.events == []
    assert sum(f.size for f in effects.frames) >= FRAME_SAMPLES * 2 and all(
        f.size == FRAME_SAMPLES for f in effects.frames
    )


def test_bad_audio_names_the_param() -> None:
    session = started()
    error = error_of(send(session, type="session.input_audio.append", event_id="a1", audio="!!"))
    assert error["param"] == "audio" and error["client_event_id"] == "a1"


def test_output_is_digital_silence_outside_speech() -> None:
    session = started()
    assert audio_bytes(step(session, None, HUM))[0] == bytes(3840)
    assert audio_bytes(step(session, " Hi", LOUD))[0] != bytes(3840)
    tail = [audio_bytes(step(session, None, HUM))[0] for _ in range(12)]
    assert tail[0] != bytes(3840) and tail[-1] == bytes(3840)


def test_mute_drops_input_and_acks() -> None:
    session = started()
    assert types(send(session, type="session.input_audio.mute", event_id="m")) == ["session.input_audio.muted"]
    assert send(session, type="session.input_audio.append", audio=pcm16(0.2)).frames == []
    assert types(send(session, type="session.input_audio.unmute")) == ["session.input_audio.unmuted"]
    assert send(session, type="session.input_audio.append", audio=pcm16(0.2)).frames


def test_fixture_plays_instead_of_the_model() -> None:
    session = started()
    effects = send(session, type="session.output_audio.fixture.play", event_id="f", audio=pcm16(0.2, 3000))
    assert types(effects) == ["session.output_audio.fixture.playing"]
    assert send(session, type="session.input_audio.append", audio=pcm16(0.2)).frames == []
    assert (
        error_of(send(session, type="session.output_audio.fixture.play", audio=pcm16(0.1)))["code"] == "fixture_active"
    )
    error = error_of(send(session, type="session.commentary.append", content="hi", delegation_id=None))
    assert error["code"] == "fixture_active"
    frames = [step(session, " no", LOUD) for _ in range(3)]
    assert np.frombuffer(audio_bytes(frames[0])[0], "<i2").tolist() == [3000] * FRAME_SAMPLES
    assert types(frames[2]) == ["session.output_audio.delta", "session.output_audio.fixture.played"]
    assert not any(t.endswith("transcript.delta") for f in frames for t in types(f))


@pytest.mark.parametrize("audio", [pcm16(31), base64.b64encode(b"\x00").decode(), ""])
def test_bad_fixture_is_refused_whole(audio: str) -> None:
    session = started()
    assert error_of(send(session, type="session.output_audio.fixture.play", audio=audio))["param"] == "audio"
    assert session.fixture is None


# --- transcripts ------------------------------------------------------------------------------


def test_output_transcript_on_the_frame_grid() -> None:
    session = started()
    step(session, None, HUM)
    delta = step(session, " Hello", LOUD).events[1]
    assert (delta["type"], delta["delta"], delta["start_ms"], delta["end_ms"]) == (
        "session.output_transcript.delta",
        " Hello",
        80,
        160,
    )


def test_text_offset_option_moves_fragments() -> None:
    session = started(LiveOptions(text_offset_frames=2))
    assert step(session, "Hi", LOUD).events[1]["start_ms"] == 160


def asr_session(hold_ms: int = 10_000) -> LiveSession:
    """A session whose output fragments may wait long for the user's transcript (merging tests)."""
    return started(LiveOptions(transcription_model="whisper", segment_silence_ms=240, max_transcript_hold_ms=hold_ms))


def test_user_segment_becomes_input_fragments_in_order() -> None:
    session = asr_session()
    sent = send(session, type="session.input_audio.append", audio=pcm16(0.8))
    assert len(sent.frames) == 10
    out: list[dict[str, Any]] = []
    requests = []
    for index in range(10):
        speech = [0.9, 0.9] if 2 <= index < 6 else [0.0, 0.0]
        text = " Yes" if index == 4 else None
        effects = step(session, text, LOUD if text else HUM, speech=speech, client_audio=True)
        out += effects.events
        requests += effects.transcriptions
    assert not [e for e in out if e["type"].endswith("transcript.delta")]  # held for the user segment
    (request,) = requests
    assert request.audio.size > 0
    result = TranscriptionOutcome(request.item_id, "hello there", "whisper", None, 10, 0.3)
    effects = checked(session.transcription_completed(result))
    fragments = [(e["type"].split(".")[1], e["delta"], e["start_ms"]) for e in effects.events]
    assert fragments == [
        ("input_transcript", "hello", 160),
        ("input_transcript", " there", 320),
        ("output_transcript", " Yes", 320),
    ]


def test_an_output_fragment_goes_when_the_model_stops_speaking_and_user_words_never_step_back() -> None:
    """Held for a pending user segment, an output fragment still goes out when the model's speech
    ends (the client closes its audio burst then); the user's words, later, are stamped at the
    last start sent."""
    session = asr_session()  # a long hold: the end of the speech releases the fragment
    send(session, type="session.input_audio.append", audio=pcm16(2.4))
    out: list[dict[str, Any]] = []
    requests = []
    sent_at: dict[str, int] = {}
    end_frames = 800 // 80  # the gate's end silence: the speech ends this many quiet frames later
    for index in range(30):
        speech = [0.9, 0.9] if 2 <= index < 6 else [0.0, 0.0]
        effects = step(
            session, " Yes" if index == 4 else None, LOUD if index == 4 else HUM, speech=speech, client_audio=True
        )
        for event in effects.events:
            if event["type"] == "session.output_transcript.delta":
                sent_at[event["delta"]] = index
        out += effects.events
        requests += effects.transcriptions
    assert sent_at == {" Yes": 4 + end_frames}, "held until the speech ended, not until the transcript"
    (request,) = requests
    outcome = TranscriptionOutcome(request.item_id, "hello there", "whisper", None, 10, 0.3)
    users = [e for e in checked(session.transcription_completed(outcome)).events if "input_transcript" in e["type"]]
    assert [e["delta"] for e in users] == [" hello", " there"]  # after the model's words: spaced
    last_output_start = next(e["start_ms"] for e in out if e["type"] == "session.output_transcript.delta")
    assert all(e["start_ms"] >= last_output_start for e in users), "the clock never goes back"


def test_an_output_fragment_waits_at_most_the_hold() -> None:
    session = started(LiveOptions(transcription_model="whisper", segment_silence_ms=240, max_transcript_hold_ms=400))
    send(session, type="session.input_audio.append", audio=pcm16(1.6))
    sent_at = {}
    for index in range(20):
        speech = [0.9, 0.9] if 2 <= index < 6 else [0.0, 0.0]
        effects = step(session, " Yes" if index == 4 else None, LOUD, speech=speech, client_audio=True)
        sent_at.update({e["delta"]: index for e in effects.events if e["type"] == "session.output_transcript.delta"})
    assert sent_at == {" Yes": 4 + 400 // 80}, "the model keeps speaking: the hold bounds the wait"


def test_what_is_held_at_the_clients_close_is_stored_not_sent() -> None:
    """pipecat ends its turns before session.close: a fragment sent after it would open a turn."""
    session = asr_session()
    send(session, type="session.input_audio.append", audio=pcm16(0.8))
    for index in range(8):
        step(
            session, " Yes" if index == 4 else None, LOUD, speech=[0.9] if 2 <= index < 6 else [0.0], client_audio=True
        )
    effects = send(session, type="session.close")
    assert [e["type"] for e in effects.events] == ["session.closed"]
    assert [r.text for r in effects.records if isinstance(r, Fragment)] == [" Yes"]


def test_lost_asr_reply_releases_held_fragments() -> None:
    session = started(LiveOptions(transcription_model="w", segment_silence_ms=240, max_transcript_hold_ms=800))
    send(session, type="session.input_audio.append", audio=pcm16(2))
    released = []
    for index in range(25):
        effects = step(
            session, " ok" if index == 5 else None, LOUD, speech=[0.9] if index < 3 else [0.0], client_audio=True
        )
        released += [e for e in effects.events if e["type"] == "session.output_transcript.delta"]
    assert len(released) == 1


def test_starts_never_step_back_across_speakers() -> None:
    session = asr_session()
    send(session, type="session.input_audio.append", audio=pcm16(1.6))
    events: list[dict[str, Any]] = []
    requests = []
    for index in range(20):
        effects = step(
            session,
            " a" if index % 3 == 0 else None,
            LOUD,
            speech=[0.9] if 5 <= index < 9 else [0.1],
            client_audio=True,
        )
        events += effects.events
        requests += effects.transcriptions
    for request in requests:
        events += session.transcription_completed(
            TranscriptionOutcome(request.item_id, "one two", "w", None, 1, 1.0)
        ).events
    events += send(session, type="session.close").events
    starts = [e["start_ms"] for e in events if e["type"].endswith("transcript.delta")]
    assert starts == sorted(starts) and len(starts) > 5


# --- text appends, update, refusals -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["instructions", "thinking"])
def test_appends_are_acked_recorded_and_explained_once(kind: str) -> None:
    session = started()
    step(session, None, HUM)
    effects = send(session, type=f"session.{kind}.append", event_id="p", content="Say hi.", delegation_id=None)
    assert types(effects) == [f"session.{kind}.appended", "info"]
    assert effects.events[0]["start_ms"] == effects.events[0]["end_ms"] == 80
    assert effects.records[0].content == "Say hi." and effects.speak == []
    again = send(session, type=f"session.{kind}.append", content="More.", delegation_id=None)
    assert types(again) == [f"session.{kind}.appended"]


def test_commentary_is_spoken_without_a_companion() -> None:
    """Commentary needs only the engine's forcing: Moshi says it word for word, no info needed."""
    session = started()
    effects = send(session, type="session.commentary.append", event_id="p", content=" Say hi. ", delegation_id=None)
    assert types(effects) == ["session.commentary.appended"] and effects.speak == ["Say hi."]
    assert effects.records[0].content == " Say hi. "
    silent = started(LiveOptions(speak_commentary=False))
    effects = send(silent, type="session.commentary.append", content="Say hi.", delegation_id=None)
    assert types(effects) == ["session.commentary.appended", "info"] and effects.speak == []


@pytest.mark.parametrize(
    ("event", "param"),
    [
        ({"content": "x"}, "delegation_id"),
        ({"content": "x", "delegation_id": "dlg_1"}, "delegation_id"),
        ({"content": "word " * 600, "delegation_id": None}, "content"),
        ({"content": None, "delegation_id": None}, "content"),
    ],
)
def test_bad_appends(event: dict[str, Any], param: str) -> None:
    session = started()
    error = error_of(send(session, type="session.commentary.append", event_id="e", **event))
    assert error["param"] == param and error["client_event_id"] == "e"


RESPONSES = {"type": "responses", "responses": {"model": "gpt-5.6-luna", "tools": [{"type": "function", "name": "t"}]}}


def test_update_same_delegation_type_echoes_the_full_resource() -> None:
    session = started(delegation=RESPONSES)
    update = {"delegation": {"type": "responses", "responses": {"instructions": "Be terse."}}}
    effects = send(session, type="session.update", event_id="u", session=update)
    assert types(effects) == ["session.updated"]
    resource = effects.events[0]["session"]
    assert resource["delegation"]["responses"] == {**RESPONSES["responses"], "instructions": "Be terse."}
    assert resource["id"] == session.session_id and resource["model"] == "gpt-live-1"


@pytest.mark.parametrize(
    ("update", "param"),
    [
        ({"delegation": {"type": "client"}}, "session.delegation.type"),
        ({"instructions": "x"}, "session.instructions"),
        ({"model": "gpt-live-1"}, "session.model"),
        ({"audio": {}}, "session.audio"),
        ({"triggers": [{"type": "decision", "on": "input_transcript"}]}, "session.triggers"),
    ],
)
def test_update_refusals(update: dict[str, Any], param: str) -> None:
    session = started(delegation=RESPONSES)
    before = session.resource
    error = error_of(send(session, type="session.update", event_id="u", session=update))
    assert error["param"] is not None and error["param"].startswith(param) and error["client_event_id"] == "u"
    assert session.resource == before


@pytest.mark.parametrize(
    ("config", "param", "code"),
    [
        ({"store": True}, "session.store", "unsupported_parameter"),
        ({"client": {"data_channel": {}}}, "session.client", "unsupported_parameter"),
        (
            {"delegation": {"type": "decisions", "decisions": {"model": "m", "questions": []}}},
            "session.delegation.type",
            "unsupported_delegation",
        ),
        (
            {"delegation": {"type": "responses", "responses": {"model": "m", "tools": [{"type": "web_search"}]}}},
            "session.delegation.responses.tools[0].type",
            "unsupported_server_tool",
        ),
        ({"audio": {"output": {"voice": "nobody"}}}, "session.audio.output.voice", "invalid_value"),
        ({"audio": {"format": {"type": "audio/pcmu", "rate": 16000}}}, "session.audio.format.rate", "invalid_value"),
        ({"audio": {"format": {"type": "audio/pcm", "rate": 8000}}}, "session.audio.format.rate", "invalid_value"),
        ({"bogus": 1}, "session.bogus", "unknown_parameter"),
        ({"instructions": 5}, "session.instructions", "invalid_type"),
    ],
)
def test_start_refusals(config: dict[str, Any], param: str, code: str) -> None:
    session = LiveSession()
    error = error_of(send(session, type="session.start", event_id="s", session={"model": "gpt-live-1", **config}))
    assert (error["param"], error["code"], error["client_event_id"]) == (param, code, "s")
    assert not session.started


def test_start_accepts_what_clients_send() -> None:
    session = started(
        instructions="Be kind.",
        audio={"format": {"type": "audio/pcm", "rate": 24000}, "output": {"voice": "marin"}},
        delegation=RESPONSES,
        input=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        store=False,
        safety_identifier="u1",
        triggers=[],
    )
    assert session.resource is not None and session.resource["instructions"] == "Be kind."


@pytest.mark.parametrize(
    ("event", "code"),
    [
        ({"type": "decision.create", "event_id": "d"}, "unsupported_command"),
        ({"type": "decision.item.delete", "event_id": "d", "item_id": "x"}, "unsupported_command"),
        ({"type": "response.create", "event_id": "d"}, "responses_delegation_required"),
    ],
)
def test_refused_commands_keep_the_session(event: dict[str, Any], code: str) -> None:
    session = started()
    error = error_of(send(session, **event))
    assert error["code"] == code and error["client_event_id"] == "d"
    assert session.wants_output


def test_response_create_under_responses_delegation() -> None:
    session = started(delegation=RESPONSES)
    assert error_of(send(session, type="response.create"))["code"] == "no_pending_delegation"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", "invalid_event"),
        ("[]", "invalid_event"),
        ('{"type": 5}', "invalid_type"),
        ('{"type": "x.y"}', "invalid_value"),
    ],
)
def test_garbage_is_an_error(text: str, code: str) -> None:
    session = started()
    assert error_of(checked(session.receive(text)))["code"] == code


def test_last_resort_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    session = started()

    def boom(event: Any, event_id: Any) -> Effects:
        raise RuntimeError("bug")

    monkeypatch.setitem(session._handlers, "session.input_audio.mute", boom)
    error = error_of(send(session, type="session.input_audio.mute", event_id="m"))
    assert error["type"] == "server_error" and error["client_event_id"] == "m"
