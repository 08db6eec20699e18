"""The session runtime: one error boundary, one owner of cleanup, per-key caps, revocation, draining.

Through Channels' communicator (no daphne): what a client sees when our own code fails, and that
whatever ends a session gives its slot back, brings the gauge down and closes its conversation.
The wire-level points (SIGTERM, a client that stops reading) are in test_runtime_live.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from transcripts.models import Conversation
from voice import metrics
from voice.engine.manager import get_manager
from voice.engine.slots import Outbox
from voice.models import ApiKey
from voice.protocol import Dialect, RealtimeSession
from voice.recorder import SessionRecorder
from voice.runtime.live import live_sessions

from .conftest import TIMEOUT
from .helpers import Client, connected
from .strict import strict

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("model_manager")]


def slots_in_use() -> int:
    manager = get_manager()
    assert manager is not None
    return sum(engine.slots_in_use for engine in manager.engines.values())


def sessions_live() -> float:
    return metrics.SESSIONS_LIVE._value.get()


async def eventually(check: Callable[[], Any], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not await _call(check):
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)  # polling a condition, bounded by the deadline above


async def _call(check: Callable[[], Any]) -> Any:
    result = check()
    return await result if asyncio.iscoroutine(result) else result


@database_sync_to_async
def conversation_ends() -> list[tuple[str, bool]]:
    return [(c.end_reason, c.ended_at is not None) for c in Conversation.objects.order_by("started_at")]


async def assert_all_given_back(before_live: float) -> None:
    await eventually(lambda: slots_in_use() == 0, "the slot to come back")
    await eventually(lambda: sessions_live() == before_live, "realtime_sessions_live to come down")
    await eventually(
        database_sync_to_async(lambda: not Conversation.objects.filter(ended_at__isnull=True).exists()),
        "every conversation to be closed",
    )


async def recv_until_close(client: Client) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every event the server sends before it closes, and the close message."""
    events = []
    while True:
        output = await client.communicator.receive_output(timeout=TIMEOUT)
        if output["type"] == "websocket.close":
            return events, output
        event = json.loads(output["text"])
        strict(event, client.dialect)
        events.append(event)


@pytest.fixture(autouse=True)
def not_draining():
    yield
    live_sessions.draining = False


# The inputs that used to kill a session with 1011 and keep its slot forever.
MALFORMED: list[tuple[Dialect, Any]] = [
    (Dialect.GA, "[" * 10_000 + "]" * 10_000),
    (Dialect.BETA, {"type": "session.update", "event_id": "e1", "session": {"input_audio_format": None}}),
    (
        Dialect.GA,
        {"type": "session.update", "event_id": "e1", "session": {"type": "realtime", "audio": {"input": None}}},
    ),
    (Dialect.GA, {"type": "response.create", "event_id": "e1", "response": {"output_modalities": 5}}),
    (
        Dialect.BETA,
        {
            "type": "conversation.item.create",
            "event_id": "e1",
            "item": {"type": "message", "role": "user", "content": None},
        },
    ),
]


@pytest.mark.parametrize(
    ("dialect", "event"), MALFORMED, ids=["deep", "beta-format-null", "ga-input-null", "modalities-5", "content-null"]
)
async def test_a_malformed_event_is_an_error_and_the_session_goes_on(dialect: Dialect, event: Any) -> None:
    before = sessions_live()
    async with connected(dialect) as client:
        await client.send(event if isinstance(event, str) else json.dumps(event))
        error = await client.recv()
        assert error["type"] == "error"
        assert error["error"]["type"] == "invalid_request_error"
        if isinstance(event, dict):
            assert error["error"]["event_id"] == "e1"
            assert error["error"]["param"]
        await client.send(
            {
                "type": "session.update",
                "session": {"instructions": "Still here."} | ({"type": "realtime"} if dialect is Dialect.GA else {}),
            }
        )
        assert (await client.recv())["type"] == "session.updated"
    await assert_all_given_back(before)


async def test_more_malformed_sessions_than_slots_never_fill_the_server() -> None:
    """Eight crashing messages used to leave every later caller with server_busy."""
    before = sessions_live()
    manager = get_manager()
    assert manager is not None
    for _ in range(manager.config.max_sessions * 2 + 1):
        async with connected(Dialect.BETA) as client:
            await client.send({"type": "session.update", "session": {"input_audio_format": None}})
            assert (await client.recv())["type"] == "error"
    await assert_all_given_back(before)


async def test_a_failure_in_our_code_is_a_server_error_with_the_event_id(monkeypatch: pytest.MonkeyPatch) -> None:
    real_add = SessionRecorder.add
    calls = {"n": 0}

    async def failing_once(self: SessionRecorder, batch: list[Any]) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the first is session.created's config
            raise RuntimeError("secret internals")
        await real_add(self, batch)

    monkeypatch.setattr(SessionRecorder, "add", failing_once)
    before = sessions_live()
    async with connected() as client:
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
        await client.send({"type": "conversation.item.create", "event_id": "evt_7", "item": item})
        events = await client.recv_until("error")
        error = events[-1]["error"]
        assert error["type"] == "server_error" and error["code"] == "server_error"
        assert error["event_id"] == "evt_7"
        assert "secret" not in error["message"] and "RuntimeError" not in error["message"]
        await client.send({"type": "conversation.item.create", "item": item})
        assert (await client.recv())["type"] == "conversation.item.added"
    await assert_all_given_back(before)


async def test_a_failing_model_frame_is_one_error_and_later_frames_go_on(monkeypatch: pytest.MonkeyPatch) -> None:
    real = RealtimeSession.model_output
    calls = {"n": 0}

    def failing_once(self: RealtimeSession, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("bad frame")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RealtimeSession, "model_output", failing_once)
    before = sessions_live()
    async with connected() as client:
        await client.send({"type": "response.create"})
        events = await client.recv_until("response.done")
        errors = [e for e in events if e["type"] == "error"]
        assert [e["error"]["code"] for e in errors] == ["server_error"]
        assert any(e["type"] == "response.output_audio.delta" for e in events)
    await assert_all_given_back(before)


async def test_a_session_that_keeps_failing_is_ended_and_stored_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    def always(self: RealtimeSession, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("broken")

    monkeypatch.setattr(RealtimeSession, "model_output", always)
    before = sessions_live()
    async with connected() as client:
        await client.send({"type": "response.create"})
        events, closing = await recv_until_close(client)
        assert closing["code"] == 1000
        assert {e["error"]["code"] for e in events if e["type"] == "error"} == {"server_error"}
    await assert_all_given_back(before)
    assert (await conversation_ends())[-1] == ("server_error", True)


async def test_a_dead_session_task_ends_the_session_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken_get(self: Outbox) -> Any:
        raise RuntimeError("outbox gone")

    monkeypatch.setattr(Outbox, "get", broken_get)
    before = sessions_live()
    async with connected() as client:
        events, closing = await recv_until_close(client)
        assert closing["code"] == 1000
        assert events[-1]["error"]["code"] == "server_error"
    await assert_all_given_back(before)
    assert (await conversation_ends())[-1] == ("server_error", True)


async def test_a_cancelled_connection_still_gives_everything_back() -> None:
    """daphne cancels an application that outlives its close timeout; nothing may leak then."""
    from realtime_project.asgi import application

    before = sessions_live()
    communicator = WebsocketCommunicator(application, "/v1/realtime", headers=[(b"host", b"testserver")])
    assert (await communicator.connect(timeout=TIMEOUT))[0]
    assert json.loads(await communicator.receive_from(timeout=TIMEOUT))["type"] == "session.created"
    communicator.future.cancel()
    with pytest.raises(asyncio.CancelledError):
        await communicator.future
    await assert_all_given_back(before)
    assert (await conversation_ends())[-1] == ("cancelled", True)


async def test_shutdown_tells_the_client_closes_going_away_and_refuses_newcomers() -> None:
    from realtime_project.asgi import application

    before = sessions_live()
    communicator = WebsocketCommunicator(application, "/v1/realtime", headers=[(b"host", b"testserver")])
    assert (await communicator.connect(timeout=TIMEOUT))[0]
    assert json.loads(await communicator.receive_from(timeout=TIMEOUT))["type"] == "session.created"
    live_sessions.begin_drain()
    communicator.future.cancel()
    error = json.loads(await communicator.receive_from(timeout=TIMEOUT))
    strict(error, Dialect.GA)
    assert error["error"]["code"] == "server_shutting_down"
    closing = await communicator.receive_output(timeout=TIMEOUT)
    # 1001 on the wire under daphne (test_runtime_live); its private twin through the communicator.
    assert closing == {"type": "websocket.close", "code": 4001, "reason": "server_error.server_shutting_down"}
    with pytest.raises(asyncio.CancelledError):
        await communicator.future
    await assert_all_given_back(before)
    assert (await conversation_ends())[-1] == ("server_shutdown", True)

    from django.test import AsyncClient

    readiness = await AsyncClient().get("/readyz")
    assert readiness.status_code == 503 and readiness.json() == {"ready": False, "shutting_down": True}

    late = WebsocketCommunicator(application, "/v1/realtime", headers=[(b"host", b"testserver")])
    assert (await late.connect(timeout=TIMEOUT))[0]
    refusal = json.loads(await late.receive_from(timeout=TIMEOUT))
    assert refusal["error"]["code"] == "server_shutting_down"
    assert (await late.receive_output(timeout=TIMEOUT))["code"] == 4013
    await late.disconnect()


# --- API keys: a cap per key, and revocation ending live sessions ---------------------------------


@database_sync_to_async
def issue_key() -> tuple[ApiKey, str]:
    return ApiKey.issue(name="runtime tests")


async def open_with_key(key: str) -> WebsocketCommunicator:
    from realtime_project.asgi import application

    communicator = WebsocketCommunicator(
        application, "/v1/realtime", headers=[(b"host", b"testserver"), (b"authorization", f"Bearer {key}".encode())]
    )
    assert (await communicator.connect(timeout=TIMEOUT))[0]
    return communicator


async def test_one_key_holds_at_most_its_cap_of_sessions(settings) -> None:
    settings.VOICE = {**settings.VOICE, "OPEN_ENDPOINT": "0", "MAX_SESSIONS_PER_KEY": 1}
    _, key = await issue_key()
    _, other = await issue_key()
    first = await open_with_key(key)
    assert json.loads(await first.receive_from(timeout=TIMEOUT))["type"] == "session.created"
    second = await open_with_key(key)
    refusal = json.loads(await second.receive_from(timeout=TIMEOUT))
    strict(refusal, Dialect.GA)
    assert refusal["error"]["code"] == "too_many_sessions"
    assert "REALTIME_MAX_SESSIONS_PER_KEY" in refusal["error"]["message"]
    assert (await second.receive_output(timeout=TIMEOUT))["code"] == 4013
    await second.disconnect()
    third = await open_with_key(other)  # another key is not held back
    assert json.loads(await third.receive_from(timeout=TIMEOUT))["type"] == "session.created"
    await first.disconnect()
    again = await open_with_key(key)  # the cap counts live sessions only
    assert json.loads(await again.receive_from(timeout=TIMEOUT))["type"] == "session.created"
    await again.disconnect()
    await third.disconnect()
    await assert_all_given_back(0.0)


async def test_revoking_a_key_ends_its_live_sessions(settings) -> None:
    settings.VOICE = {**settings.VOICE, "OPEN_ENDPOINT": "0"}
    api_key, key = await issue_key()
    _, other = await issue_key()
    doomed = await open_with_key(key)
    spared = await open_with_key(other)
    for communicator in (doomed, spared):
        assert json.loads(await communicator.receive_from(timeout=TIMEOUT))["type"] == "session.created"
    await database_sync_to_async(api_key.revoke)()
    error = json.loads(await doomed.receive_from(timeout=TIMEOUT))
    strict(error, Dialect.GA)
    assert error["error"]["code"] == "api_key_revoked"
    assert (await doomed.receive_output(timeout=TIMEOUT))["code"] == 1000
    await doomed.disconnect()
    assert await spared.receive_nothing(timeout=0.3)
    await spared.disconnect()
    await assert_all_given_back(0.0)
    reasons = sorted(reason for reason, _ in await conversation_ends())
    assert reasons == ["api_key_revoked", "disconnect:1000"]
