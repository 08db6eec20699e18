"""bench/matching.py: which audio delta answers which sent frame, on hand-made timelines.

No server and no model: the matching is pure arithmetic on the times a client recorded. Times are
multiples of 1/64 s (exact in binary floating point), so every latency is asserted exactly. Frames
are sent every 0.125 s here; the matching never assumes the 80 ms period.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.clients import ClientRun
from bench.matching import (
    ANCHOR_SILENCE_MS,
    ANCHOR_TURN_DETECTION,
    VAD_WINDOW_MS,
    _greedy,
    _segment,
    anchors_of,
    match_deltas,
    step_time_sigma,
    vad_window_frames,
)

PERIOD = 0.125


def sends(n: int) -> list[float]:
    return [i * PERIOD for i in range(n)]


def zero_counts(**changed: int) -> dict[str, int]:
    counts = {"silence_before": 0, "silence_during": 0, "silence_after": 0, "anchors": 0, "anchors_dropped": 0}
    return {**counts, **changed}


@dataclass
class Recorded:
    """The three fields the matching reads (bench.matching.Recording)."""

    send_s: list[float]
    delta_s: list[float]
    speech_events: list[tuple[str, int, int]] = field(default_factory=list)


# --- match_deltas without anchors: the oldest unanswered frame, if sent theta before -------------


def test_no_frames_no_deltas() -> None:
    assert match_deltas([], [], 0.0) == ([], zero_counts())


def test_frame_zero_is_never_answered() -> None:
    # Frame 0 went to the slot's first step, which has no output: a delta is a step on silence.
    assert match_deltas([0.0], [0.5], 0.0) == ([None], zero_counts(silence_before=1))


def test_one_delta_per_frame_answers_the_next_frame() -> None:
    send = sends(4)
    deltas = [0.25, 0.375, 0.5]  # each 0.125 s after frame n + 1
    assert match_deltas(send, deltas, 0.0) == ([None, 0.125, 0.125, 0.125], zero_counts())
    assert match_deltas(send, deltas, 0.125) == ([None, 0.125, 0.125, 0.125], zero_counts())


def test_dropped_frames_stay_unanswered() -> None:
    # Fewer deltas than frames (the server never answered the last two): None, not a guess.
    assert match_deltas(sends(4), [0.25], 0.0) == ([None, 0.125, None, None], zero_counts())
    assert match_deltas(sends(4), [], 0.0) == ([None, None, None, None], zero_counts())


def test_deltas_before_the_first_frame_are_steps_on_silence() -> None:
    # A delta that arrives before frame 1 left cannot answer it (negative latency < theta = 0).
    send = sends(3)
    latencies, counts = match_deltas(send, [-0.5, 0.0625, 0.1875, 0.3125], 0.0)
    assert latencies == [None, 0.0625, 0.0625]
    assert counts == zero_counts(silence_before=2)


def test_only_deltas_too_early_answer_nothing() -> None:
    latencies, counts = match_deltas(sends(2), [0.0625], 0.0)
    assert latencies == [None, None]
    assert counts == zero_counts(silence_before=1)


def test_theta_tells_steps_on_silence_from_answers() -> None:
    send = sends(4)
    # d0: 1/32 s after frame 1 (< theta): silence; d1, d2 answer frames 1, 2; d3: 1/32 s after
    # frame 3: silence; d4 answers frame 3; d5 comes after every frame was answered.
    deltas = [0.15625, 0.25, 0.375, 0.40625, 0.5, 0.625]
    latencies, counts = match_deltas(send, deltas, 0.0625)
    assert latencies == [None, 0.125, 0.125, 0.125]
    assert counts == zero_counts(silence_before=1, silence_during=1, silence_after=1)
    # With theta = 0 the same timeline pairs greedily: each delta takes the oldest frame it can.
    latencies, counts = match_deltas(send, deltas, 0.0)
    assert latencies == [None, 0.03125, 0.0, 0.0]
    assert counts == zero_counts(silence_after=3)


# --- match_deltas with anchors: exact between anchors ------------------------------------------


def test_anchor_makes_an_equal_count_segment_exact_whatever_theta() -> None:
    send = sends(5)
    deltas = [0.1875, 0.3125, 0.4375, 0.5625]  # 1/16 s after frames 1..4
    # Without anchors, a theta above every latency answers nothing ...
    assert match_deltas(send, deltas, 10.0)[0] == [None] * 5
    # ... with delta 3 known to answer frame 4, deltas 0..2 answer frames 1..3 exactly.
    latencies, counts = match_deltas(send, deltas, 10.0, anchors=[(3, 4)])
    assert latencies == [None, 0.0625, 0.0625, 0.0625, 0.0625]
    assert counts == zero_counts(anchors=1)


def test_surplus_delta_between_anchors_uses_theta() -> None:
    send = sends(4)
    # d1 came 1/32 s after frame 2 was sent: a step on silence when theta = 1/16.
    deltas = [0.25, 0.28125, 0.375, 0.5]
    latencies, counts = match_deltas(send, deltas, 0.0625, anchors=[(3, 3)])
    assert latencies == [None, 0.125, 0.125, 0.125]
    assert counts == zero_counts(silence_during=1, anchors=1)
    # theta = 0: d1 answers frame 2 and d2 is the surplus.
    latencies, counts = match_deltas(send, deltas, 0.0, anchors=[(3, 3)])
    assert latencies == [None, 0.125, 0.03125, 0.125]
    assert counts == zero_counts(silence_during=1, anchors=1)


def test_too_strict_theta_is_lowered_until_the_segment_is_answered() -> None:
    send = sends(4)
    deltas = [0.25, 0.28125, 0.375, 0.5]
    # theta = 1 s would answer nothing; between anchors every frame must be answered, so the
    # threshold drops to the largest one that does (just under 1/8 s): d1 stays the surplus.
    latencies, counts = match_deltas(send, deltas, 1.0, anchors=[(3, 3)])
    assert latencies == [None, 0.125, 0.125, 0.125]
    assert counts == zero_counts(silence_during=1, anchors=1)


def test_after_the_last_anchor_theta_decides() -> None:
    send = sends(5)
    # Anchor: d1 answers frame 2 (d0 answers frame 1). After it: d2 is 1/32 s after frame 3
    # (silence at theta 1/16), d3 answers frame 3, d4 answers frame 4.
    deltas = [0.1875, 0.3125, 0.40625, 0.5, 0.625]
    latencies, counts = match_deltas(send, deltas, 0.0625, anchors=[(1, 2)])
    assert latencies == [None, 0.0625, 0.0625, 0.125, 0.125]
    assert counts == zero_counts(silence_during=1, anchors=1)


def test_contradicting_anchors_are_dropped() -> None:
    send = sends(5)
    deltas = [0.1875, 0.3125, 0.4375, 0.5625]
    # (0, 3): one delta cannot answer frames 1..3; (2, 3) then (1, 4): delta 1 is before delta 2;
    # (3, 3): frame 3 is already answered.
    latencies, counts = match_deltas(send, deltas, 10.0, anchors=[(0, 3), (2, 3), (1, 4), (3, 3)])
    assert latencies == [None, 0.0625, 0.0625, 0.0625, None]
    assert counts == zero_counts(silence_after=1, anchors=1, anchors_dropped=3)


def test_anchors_are_taken_in_the_order_given() -> None:
    # anchors_of sorts them; given unsorted, a later anchor listed first makes the earlier drop.
    send = sends(5)
    deltas = [0.1875, 0.3125, 0.4375, 0.5625]
    latencies, counts = match_deltas(send, deltas, 10.0, anchors=[(3, 4), (1, 2)])
    assert latencies == [None, 0.0625, 0.0625, 0.0625, 0.0625]
    assert counts == zero_counts(anchors=1, anchors_dropped=1)


def test_every_delta_is_an_answer_or_counted_once() -> None:
    send = sends(6)
    deltas = [0.0, 0.15625, 0.25, 0.28125, 0.375, 0.5, 0.625, 0.75, 0.875]
    for anchors in ([], [(2, 1)], [(5, 4)], [(2, 1), (5, 4)]):
        for theta in (0.0, 0.0625, 1.0):
            latencies, counts = match_deltas(send, deltas, theta, anchors)
            answered = sum(value is not None for value in latencies)
            silence = counts["silence_before"] + counts["silence_during"] + counts["silence_after"]
            assert answered + silence == len(deltas)
            assert counts["anchors"] + counts["anchors_dropped"] == len(anchors)
            assert latencies[0] is None


# --- the two passes on their own --------------------------------------------------------------


def test_greedy_pass() -> None:
    send = sends(4)
    deltas = [0.15625, 0.25, 0.375, 0.40625, 0.5]
    assert _greedy(send, deltas, 0, 5, 1, 4, 0.0625) == ({1: 1, 2: 2, 3: 4}, 0)
    assert _greedy(send, deltas, 0, 3, 1, 4, 0.0625) == ({1: 1, 2: 2}, 1)  # one frame left over
    assert _greedy(send, deltas, 0, 5, 1, 1, 0.0) == ({}, 0)  # no frames in the range


def test_segment_pass() -> None:
    send = sends(4)
    # Equal counts: paired in order, whatever the times.
    assert _segment(send, [9.0, 8.0], 0, 2, 1, 3, 0.0) == {1: 0, 2: 1}
    deltas = [0.25, 0.28125, 0.375]
    assert _segment(send, deltas, 0, 3, 1, 3, 0.0625) == {1: 0, 2: 2}
    assert _segment(send, deltas, 0, 3, 1, 3, 0.0) == {1: 0, 2: 1}
    assert _segment(send, deltas, 0, 3, 1, 3, 5.0) == {1: 0, 2: 2}


# --- anchors from the speech events -----------------------------------------------------------


def test_anchor_turn_detection_never_acts() -> None:
    assert ANCHOR_TURN_DETECTION["create_response"] is False
    assert ANCHOR_TURN_DETECTION["interrupt_response"] is False
    assert ANCHOR_TURN_DETECTION["prefix_padding_ms"] == 0
    assert ANCHOR_TURN_DETECTION["silence_duration_ms"] == ANCHOR_SILENCE_MS
    assert (VAD_WINDOW_MS, ANCHOR_SILENCE_MS) == (32, 64)


def test_anchors_of_speech_events() -> None:
    window_frames = [window // 2 for window in range(40)]  # window w is completed by frame w // 2
    run = Recorded(
        send_s=sends(10),
        delta_s=[float(i) for i in range(8)],
        speech_events=[
            ("stopped", 96, 5),  # window (96 + 64) // 32 - 1 = 4 -> frame 2
            ("started", 96, 2),  # window 96 // 32 = 3 -> frame 1
            ("started", 96, 2),  # the same again: kept once
            ("started", 100, 3),  # not on a window boundary: ignored
            ("started", 0, 0),  # window 0 -> frame 0, which has no delta: ignored
            ("started", 32 * 40, 1),  # beyond the windows known: ignored
            ("started", 32 * 30, 6),  # window 30 -> frame 15, never sent: ignored
            ("stopped", 96, 8),  # no delta 8 was received: ignored
            ("started", 32 * 16, 7),  # window 16 -> frame 8
        ],
    )
    assert anchors_of(run, window_frames) == [(2, 1), (5, 2), (7, 8)]


def test_anchors_of_a_client_run() -> None:
    run = ClientRun(index=0, audio_file="a.wav", offset_s=0.0, phase_s=0.0, frames_planned=4)
    assert anchors_of(run, [0, 1, 1, 1]) == []
    run.send_s, run.delta_s = sends(4), [0.25, 0.375]
    run.speech_events.append(("started", 32, 1))  # window 1 -> frame 1, answered by delta 1
    assert anchors_of(run, [0, 1, 1, 1]) == [(1, 1)]


def test_vad_window_frames_follow_the_resampler() -> None:
    assert vad_window_frames(0) == []
    owners = vad_window_frames(40)
    # 80 ms at 16 kHz is 1280 samples: 2.5 windows of 512 per frame, less the resampler's delay.
    assert 40 * 1280 // 512 - 3 <= len(owners) <= 40 * 1280 // 512
    assert owners == sorted(owners) and owners[0] == 0 and owners[-1] <= 39
    assert max(owners.count(frame) for frame in range(40)) == 3  # at most ceil(1280 / 512) each
    # A stream: the first frames' windows do not depend on how many frames follow.
    assert vad_window_frames(12) == owners[: len(vad_window_frames(12))]
    assert vad_window_frames(12)[:5] == [0, 1, 1, 1, 2]


# --- theta's spread ---------------------------------------------------------------------------


def test_step_time_sigma_too_few_gaps() -> None:
    assert step_time_sigma([]) == 0.0
    assert step_time_sigma([Recorded(send_s=[0.0], delta_s=[0.5, 1.0, 1.5, 2.0, 2.5])]) == 0.0
    # Seven deltas while streaming: the first three left out, three gaps remain (< 4).
    assert step_time_sigma([Recorded(send_s=[0.0, 0.5, 10.0], delta_s=[1.0 + i / 8 for i in range(7)])]) == 0.0


def test_step_time_sigma_constant_gaps() -> None:
    assert step_time_sigma([Recorded(send_s=[0.0, 0.5, 10.0], delta_s=[1.0 + i / 8 for i in range(12)])]) == 0.0


def test_step_time_sigma_from_the_median_absolute_deviation() -> None:
    start = [1.0, 1.125, 1.25, 1.375]  # the first three are left out
    rest = [1.4375, 1.5625, 1.75, 1.875, 1.9375, 2.125]  # gaps 1/16, 1/8, 3/16, 1/8, 1/16, 3/16
    run = Recorded(send_s=[0.0, 0.5, 10.0], delta_s=[0.25, *start, *rest, 20.0])  # 0.25, 20: outside
    # median gap 1/8; deviations 1/16, 0, 1/16, 0, 1/16, 1/16: MAD 1/16; sigma of one step's time
    # is the gap's (a difference of two steps) over sqrt(2).
    assert step_time_sigma([run]) == 1.4826 * 0.0625 / math.sqrt(2)
    # Gaps pool over clients; a client with one frame adds none.
    assert step_time_sigma([run, Recorded(send_s=[0.0], delta_s=[1.0, 2.0])]) == step_time_sigma([run])
