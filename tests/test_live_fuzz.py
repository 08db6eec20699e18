"""Property-based fuzzing of LiveSession.receive over the SDK's Live client-event request types.

Events are generated from ``openai.types.live.ClientEventParam`` (with tests/test_fuzz.py's
strategy builder and mutations: a field dropped, null, a wrong type, huge or odd values), sent to
a started session, and the model is stepped. The session must never raise nor fall back on its
`server_error` guard, must name the client's `event_id` in every error, and every event it sends
must validate strictly against `openai.types.live`. Reproducible (``derandomize``) and quick.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.live.client_event_param import ClientEventParam

from voice.live import LiveOptions, LiveSession
from voice.protocol.audio import FRAME_SAMPLES

from .strict_live import strict_live
from .test_fuzz import WRONG, from_param, mutate, paths, to_text

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
EVENTS = from_param(ClientEventParam)
LOUD = (0.5 * np.sin(np.arange(FRAME_SAMPLES) * 0.1)).astype(np.float32)
SILENT = {"session.input_audio.append"}


@st.composite
def mutated(draw: st.DrawFn) -> str:
    event: Any = draw(EVENTS)
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        if not isinstance(event, dict):
            break
        path = draw(st.sampled_from(paths(event)))
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        event = mutate(event, path, action, draw(st.none() | WRONG))
    return to_text(event)


def new_session() -> LiveSession:
    session = LiveSession(LiveOptions(transcription_model="w", max_duration_s=5))
    session.receive(json.dumps({"type": "session.start", "session": {"model": "gpt-live-1"}}))
    assert session.started
    return session


def check(session: LiveSession, text: str) -> None:
    effects = session.receive(text)
    try:
        sent = json.loads(text)
    except (ValueError, RecursionError):
        sent = None
    event_id = sent.get("event_id") if isinstance(sent, dict) else None
    kind = sent.get("type") if isinstance(sent, dict) else None
    if not effects.events and not session.closed:
        assert kind in SILENT, f"no answer to {text[:200]}"
    for event in effects.events:
        strict_live(event)
        if event["type"] == "error":
            assert event["error"]["type"] != "server_error", (text[:300], event)
            if isinstance(event_id, str) and event_id:
                assert event["error"]["client_event_id"] == event_id
    for index in range(3):
        for event in session.model_output(" a" if index else None, LOUD, [0.9], True).events:
            strict_live(event)


@FUZZ
@given(st.lists(EVENTS, min_size=1, max_size=4))
def test_valid_events(events: list[Any]) -> None:
    session = new_session()
    for event in events:
        check(session, to_text(event))


@FUZZ
@given(mutated())
def test_mutated_events(text: str) -> None:
    check(new_session(), text)


@FUZZ
@given(mutated())
def test_before_start(text: str) -> None:
    session = LiveSession()
    for event in session.receive(text).events:
        strict_live(event)
