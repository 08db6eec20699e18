"""The staff console in-process: the page, its WebSocket, and sessions seen and ended through it.

Sessions run on the demo checkpoint through WebsocketCommunicator; the console's WebSocket goes
through the whole ASGI stack (Host and origin checks, Django session auth, router) with a real
session cookie. The channel layer is the in-memory one: tests/test_console_redis.py covers two
processes. Who may open the console (its own origin only) and what each staff member may do on it
(permissions, read afresh for every action) are tested here too.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import numpy as np
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.test import Client as HttpClient

from transcripts.models import Conversation
from voice.console import groups
from voice.console.publisher import PUBLISH_INTERVAL_S, SERVER_NAME, SessionFacts, SessionPublisher
from voice.models import ApiKey
from voice.protocol import Dialect

from .conftest import TIMEOUT
from .helpers import Client, read_pcm16, silence, stream

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("model_manager")]

SPEECH = "weather_en_24k.wav"
Message = dict[str, Any]

# The console's own origin in these tests: the Host its handshakes name, over plain HTTP.
HOST = b"127.0.0.1:8000"
OWN_ORIGIN = b"http://127.0.0.1:8000"
FOLLOW = "view_conversation"
END = "end_session"
BOTH = (FOLLOW, END)


# --- helpers ------------------------------------------------------------------------------------


def create_user(username: str, *, staff: bool, perms: tuple[str, ...] = ()) -> User:
    """A user with the named transcripts permissions (the console's: FOLLOW, END)."""
    user = User.objects.create_user(username, password="pw-for-tests", is_staff=staff)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="transcripts", codename__in=perms))
    return user


make_user = database_sync_to_async(create_user)


@database_sync_to_async
def revoke(user: User, codename: str) -> None:
    user.user_permissions.remove(Permission.objects.get(content_type__app_label="transcripts", codename=codename))


@database_sync_to_async
def session_cookie(user: User) -> str:
    """A real Django session for ``user``, as the browser's cookie header carries it."""
    client = HttpClient()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


@database_sync_to_async
def issue_key(name: str) -> str:
    return ApiKey.issue(name=name)[1]


class Feed:
    """The console's WebSocket: what it received, and waiting for a message that matches."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.received: list[Message] = []

    async def send(self, action: Message) -> None:
        await self.communicator.send_json_to(action)

    async def until(self, matches: Callable[[Message], bool], timeout: float = TIMEOUT) -> Message:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no matching console message in {timeout}s; got {[m['type'] for m in self.received]}"
            message = await self.communicator.receive_json_from(timeout=remaining)
            self.received.append(message)
            if matches(message):
                return message


async def console_socket(user: User | None, *, origin: bytes | None = OWN_ORIGIN, extra=()) -> WebsocketCommunicator:
    """The console's handshake as a browser on the console page sends it (cookie, Host, Origin)."""
    from realtime_project.asgi import application

    headers = [(b"host", HOST), *extra]
    if user is not None:
        headers.append((b"cookie", (await session_cookie(user)).encode()))
    if origin is not None:
        headers.append((b"origin", origin))
    return WebsocketCommunicator(application, "/console/live", headers=headers)


@asynccontextmanager
async def console(user: User) -> AsyncIterator[Feed]:
    """A staff console connected through the full ASGI stack; always disconnected after."""
    communicator = await console_socket(user)
    ok, _ = await communicator.connect(timeout=TIMEOUT)
    assert ok, "a staff member's console was refused"
    feed = Feed(communicator)
    try:
        hello = await feed.until(lambda m: True)
        assert hello == {"type": "hello", "user": user.get_username()}
        yield feed
    finally:
        await communicator.disconnect(timeout=TIMEOUT)


@asynccontextmanager
async def keyed_session(key: str) -> AsyncIterator[Client]:
    """A Realtime session opened with a real API key, so the console can show the key's name."""
    from realtime_project.asgi import application

    communicator = WebsocketCommunicator(
        application, "/v1/realtime", headers=[(b"host", b"testserver"), (b"authorization", f"Bearer {key}".encode())]
    )
    assert (await communicator.connect(timeout=TIMEOUT))[0]
    client = Client(communicator, Dialect.GA)
    try:
        assert (await client.recv())["type"] == "session.created"
        yield client
    finally:
        await communicator.disconnect(timeout=TIMEOUT)


def about(session_id: str, kind: str) -> Callable[[Message], bool]:
    def matches(message: Message) -> bool:
        if message["type"] != kind:
            return False
        return (message.get("session_id") or message.get("session", {}).get("session_id")) == session_id

    return matches


# --- the page -----------------------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_the_login_page(client) -> None:
    response = client.get("/console/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/console/"


def test_signed_in_non_staff_get_403(client) -> None:
    client.force_login(User.objects.create_user("visitor", password="pw-for-tests"))
    assert client.get("/console/").status_code == 403


def test_staff_get_the_page_with_local_static_files(client) -> None:
    client.force_login(create_user("operator", staff=True, perms=BOTH))
    page = client.get("/console/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'src="/static/console/console.js"' in html and 'href="/static/console/console.css"' in html
    assert "http://" not in html and "https://" not in html  # nothing from a CDN: it works offline
    for path in ("/static/console/console.js", "/static/console/console.css"):
        response = client.get(path)  # served by whitenoise from the app's static folder
        assert response.status_code == 200, path
        assert b"".join(response.streaming_content)


# --- the console's WebSocket ----------------------------------------------------------------------


async def test_the_console_socket_refuses_anonymous_and_non_staff() -> None:
    # Closed before the handshake is accepted: daphne answers the upgrade with HTTP 403.
    anonymous = await console_socket(None)
    assert not (await anonymous.connect(timeout=TIMEOUT))[0]
    visitor = await make_user("visitor", staff=False, perms=BOTH)
    non_staff = await console_socket(visitor)
    assert not (await non_staff.connect(timeout=TIMEOUT))[0]


async def test_a_bad_console_action_gets_an_error_and_changes_nothing() -> None:
    staff = await make_user("operator", staff=True, perms=BOTH)
    async with console(staff) as feed:
        for action in ({"action": "end", "session_id": "../../etc"}, {"action": "dance"}, ["not", "an", "object"]):
            await feed.communicator.send_to(text_data=json.dumps(action))
            assert (await feed.until(lambda m: True))["type"] == "error"


async def test_a_console_from_a_foreign_origin_is_refused_even_with_a_staff_cookie() -> None:
    """The console authenticates by cookie, so another site's page must not open it in a staff browser."""
    staff = await make_user("operator", staff=True, perms=BOTH)
    communicator = await console_socket(staff, origin=b"https://evil.example")
    assert not (await communicator.connect(timeout=TIMEOUT))[0]


@pytest.mark.parametrize(
    "origin",
    [
        b"http://127.0.0.1:8001",  # the same host on another port: another origin
        b"https://127.0.0.1:8000",  # https where the console is served over http
        b"http://localhost:8000",  # another of ALLOWED_HOSTS, not the one this handshake named
        b"https://app.example.com",  # a Realtime browser app's origin (REALTIME_ALLOWED_ORIGINS)
        b"http://127.0.0.1:8000.evil.example",
        b"null",  # a sandboxed frame or a file: page
        None,  # no Origin at all: not a browser on the console page
    ],
)
async def test_only_the_consoles_own_origin_opens_it(settings, origin: bytes | None) -> None:
    settings.VOICE = {**settings.VOICE, "ALLOWED_ORIGINS": ["https://app.example.com"]}
    staff = await make_user("operator", staff=True, perms=BOTH)
    refused = await console_socket(staff, origin=origin)
    assert not (await refused.connect(timeout=TIMEOUT))[0], origin
    # The same staff member, from the page the server itself serves, is let in.
    async with console(staff):
        pass


async def test_the_default_port_and_case_are_the_same_origin() -> None:
    from realtime_project.asgi import application

    staff = await make_user("operator", staff=True, perms=BOTH)
    cookie = (await session_cookie(staff)).encode()
    headers = [(b"host", b"LocalHost"), (b"cookie", cookie), (b"origin", b"http://localhost:80")]
    communicator = WebsocketCommunicator(application, "/console/live", headers=headers)
    assert (await communicator.connect(timeout=TIMEOUT))[0]
    await communicator.disconnect()


async def test_behind_a_tls_proxy_the_console_origin_is_https(settings) -> None:
    """With DJANGO_BEHIND_TLS_PROXY (SECURE_PROXY_SSL_HEADER), the proxy's X-Forwarded-Proto decides."""
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    staff = await make_user("operator", staff=True, perms=BOTH)
    forwarded = [(b"x-forwarded-proto", b"https")]
    for origin, expected in ((b"https://127.0.0.1:8000", True), (b"http://127.0.0.1:8000", False)):
        communicator = await console_socket(staff, origin=origin, extra=forwarded)
        assert (await communicator.connect(timeout=TIMEOUT))[0] is expected, origin
        await communicator.disconnect()
    # Without the header, the handshake came over plain HTTP.
    plain = await console_socket(staff, origin=b"https://127.0.0.1:8000")
    assert not (await plain.connect(timeout=TIMEOUT))[0]


async def test_configured_console_origins_replace_the_default(settings) -> None:
    settings.VOICE = {**settings.VOICE, "CONSOLE_ALLOWED_ORIGINS": ["https://ops.example.com"]}
    staff = await make_user("operator", staff=True, perms=BOTH)
    for origin, expected in (
        (b"https://ops.example.com", True),
        (b"https://ops.example.com:443", True),
        (OWN_ORIGIN, False),
    ):
        communicator = await console_socket(staff, origin=origin)
        assert (await communicator.connect(timeout=TIMEOUT))[0] is expected, origin
        await communicator.disconnect()


# --- what each staff member may do ----------------------------------------------------------------


def refusal(action: str) -> Callable[[Message], bool]:
    return lambda m: m["type"] == "error" and m.get("code") == "permission_denied" and m.get("action") == action


async def still_alive(client: Client) -> None:
    """The session was not ended: it still answers."""
    await client.send({"type": "session.update", "session": {"type": "realtime"}})
    assert (await client.recv_until("session.updated"))[-1]["type"] == "session.updated"


async def test_staff_without_permissions_see_the_list_but_cannot_follow_or_end() -> None:
    staff = await make_user("newcomer", staff=True)
    key = await issue_key("permission key")
    async with keyed_session(key) as client:
        session_id = client.received[0]["session"]["id"]
        async with console(staff) as feed:
            await feed.until(about(session_id, "session"))
            await feed.send({"action": "follow", "session_id": session_id})
            denied = await feed.until(refusal("follow"))
            assert "view conversation" in denied["message"] and denied["session_id"] == session_id
            await feed.send({"action": "end", "session_id": session_id})
            denied = await feed.until(refusal("end"))
            assert "end a live session" in denied["message"]
            await still_alive(client)
            assert not [m for m in feed.received if m["type"] == "detail"]


async def test_the_view_permission_follows_but_does_not_end() -> None:
    staff = await make_user("watcher", staff=True, perms=(FOLLOW,))
    key = await issue_key("permission key")
    async with keyed_session(key) as client:
        session_id = client.received[0]["session"]["id"]
        async with console(staff) as feed:
            await feed.send({"action": "follow", "session_id": session_id})
            await feed.until(about(session_id, "detail"))
            await feed.send({"action": "end", "session_id": session_id})
            await feed.until(refusal("end"))
            await still_alive(client)


async def test_a_permission_revoked_while_the_console_is_open_counts_at_the_next_action() -> None:
    staff = await make_user("operator", staff=True, perms=BOTH)
    key = await issue_key("permission key")
    async with keyed_session(key) as client:
        session_id = client.received[0]["session"]["id"]
        async with console(staff) as feed:
            await feed.send({"action": "follow", "session_id": session_id})
            await feed.until(about(session_id, "detail"))
            await revoke(staff, END)
            await feed.send({"action": "end", "session_id": session_id})
            await feed.until(refusal("end"))
            await still_alive(client)
            await revoke(staff, FOLLOW)
            await feed.send({"action": "follow", "session_id": session_id})
            await feed.until(refusal("follow"))


async def test_a_deactivated_account_can_do_nothing_on_a_console_it_still_holds() -> None:
    staff = await make_user("leaver", staff=True, perms=BOTH)
    key = await issue_key("permission key")
    async with keyed_session(key) as client:
        session_id = client.received[0]["session"]["id"]
        async with console(staff) as feed:
            await User.objects.filter(pk=staff.pk).aupdate(is_staff=False)
            await feed.send({"action": "end", "session_id": session_id})
            await feed.until(refusal("end"))
            await still_alive(client)


def test_the_page_leaves_out_what_the_staff_member_may_not_do(client) -> None:
    client.force_login(create_user("newcomer", staff=True))
    html = client.get("/console/").content.decode()
    assert 'id="end-session"' not in html and 'data-can-follow="0"' in html and 'data-can-end="0"' in html
    client.force_login(create_user("watcher", staff=True, perms=(FOLLOW,)))
    html = client.get("/console/").content.decode()
    assert 'id="end-session"' not in html and 'data-can-follow="1"' in html
    client.force_login(create_user("operator", staff=True, perms=BOTH))
    html = client.get("/console/").content.decode()
    assert 'id="end-session"' in html and 'data-can-end="1"' in html


async def test_a_console_that_opens_later_gets_the_live_sessions_by_roll_call() -> None:
    staff = await make_user("operator", staff=True, perms=BOTH)
    key = await issue_key("roll call key")
    async with keyed_session(key) as client:
        session_id = client.received[0]["session"]["id"]
        async with console(staff) as feed:
            listed = await feed.until(about(session_id, "session"))
            assert listed["session"]["api_key"] == "roll call key"
            # A session whose client hangs up is removed, with the reason.
            async with keyed_session(key) as other:
                other_id = other.received[0]["session"]["id"]
                await feed.until(about(other_id, "session"))
            gone = await feed.until(about(other_id, "session_gone"))
            assert gone["reason"].startswith("disconnect:")


async def test_a_session_is_listed_followed_and_ended_from_the_console() -> None:
    staff = await make_user("operator", staff=True, perms=BOTH)
    key = await issue_key("console test key")
    async with console(staff) as feed:
        async with keyed_session(key) as client:
            session_id = client.received[0]["session"]["id"]

            # Listed at once, with the facts the list shows.
            listed = (await feed.until(about(session_id, "session")))["session"]
            assert listed["api_key"] == "console test key"
            assert listed["model_type"] == "sft" and listed["dialect"] == "ga"
            assert isinstance(listed["slot"], int) and 0 <= listed["slot"] < 4
            assert listed["state"] == "listening" and listed["server"] == SERVER_NAME
            assert abs(datetime.fromisoformat(listed["started_at"]).timestamp() - time.time()) < TIMEOUT
            assert listed["duration_s"] >= 0 and "client_address" in listed

            # Followed: the detail comes at once, then the turn as it streams.
            await feed.send({"action": "follow", "session_id": session_id})
            first = await feed.until(about(session_id, "detail"))
            assert first["transcript"] == []
            # The demo model samples random text: a short response may hold none, so ask again.
            for _ in range(3):
                await stream(client, read_pcm16(SPEECH) + silence(1000))
                events = await client.recv_until("response.done")
                said = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
                if said:
                    break
            assert said, "the demo model said nothing in three turns: nothing for the console to show"
            response_id = events[-1]["response"]["id"]

            def finished(message: Message) -> bool:
                turns = {entry["id"]: entry for entry in message.get("transcript", [])}
                return about(session_id, "detail")(message) and turns.get(response_id, {}).get("status") == "completed"

            detail = await feed.until(finished)
            turns = {entry["id"]: entry for entry in detail["transcript"]}
            assert turns[response_id] == {
                "id": response_id,
                "role": "assistant",
                "text": said[-1000:],
                "status": "completed",
            }
            user_item = next(
                e["item_id"] for e in reversed(client.received) if e["type"] == "input_audio_buffer.committed"
            )
            assert turns[user_item]["role"] == "user"  # no ASR configured: the turn, without text
            assert list(turns).index(user_item) < list(turns).index(response_id)
            states = {m["session"]["state"] for m in feed.received if m["type"] in ("session", "detail")}
            assert states == {"listening", "responding"}
            assert any(m["session"]["input_level"] > 0 for m in feed.received if m["type"] == "detail")
            assert any(m["session"]["latency_ms"] for m in feed.received if m["type"] == "detail")

            # Ended by staff: the client is told why, then a clean close.
            await feed.send({"action": "end", "session_id": session_id})
            error = (await client.recv_until("error"))[-1]
            assert error["error"]["code"] == "session_ended_by_staff"
            assert "staff" in error["error"]["message"]
            while (output := await client.communicator.receive_output(timeout=TIMEOUT))["type"] != "websocket.close":
                pass  # model output already on its way when the end arrived
            assert output.get("code") == 1000
        gone = await feed.until(about(session_id, "session_gone"))
        assert gone["reason"] == Conversation.ENDED_BY_STAFF

    @database_sync_to_async
    def stored() -> Conversation:
        return Conversation.objects.select_related("ended_by").get(session_id=session_id)

    conversation = await stored()
    assert conversation.end_reason == "ended_by_staff"
    assert conversation.ended_by == staff and conversation.ended_at is not None


# --- the publisher's rate -----------------------------------------------------------------------


class RecordingLayer:
    """A channel layer that keeps what was sent, with when."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, str, Message]] = []

    async def group_add(self, group: str, channel: str) -> None:
        pass

    async def group_discard(self, group: str, channel: str) -> None:
        pass

    async def group_send(self, group: str, message: Message) -> None:
        self.sent.append((time.monotonic(), group, message))

    async def send(self, channel: str, message: Message) -> None:
        self.sent.append((time.monotonic(), channel, message))

    def summaries(self) -> list[float]:
        return [at for at, group, _ in self.sent if group == groups.CONSOLES]


async def test_the_publisher_sends_at_a_bounded_rate_but_state_changes_at_once() -> None:
    layer = RecordingLayer()
    facts = SessionFacts("sess_test", "127.0.0.1:1", None, "sft", "demo", "ga", 0)
    publisher = SessionPublisher(layer, facts)
    await publisher.start("channel.test")
    frame = np.full(1920, 0.1, dtype=np.float32)
    started = time.monotonic()
    while time.monotonic() - started < 1.0:  # one frame every 5 ms: 16 times real time
        publisher.client_audio([frame])
        publisher.model_frame(frame, 0.05)
        await asyncio.sleep(0.005)
    sent = layer.summaries()
    assert 3 <= len(sent) <= 1.0 / PUBLISH_INTERVAL_S + 2, sent
    assert all(b - a >= PUBLISH_INTERVAL_S * 0.9 for a, b in zip(sent[1:], sent[2:], strict=False))

    await asyncio.sleep(0.05)
    changed = time.monotonic()
    publisher.events_sent([{"type": "response.created", "response": {"id": "resp_1"}}], responding=True)
    await asyncio.sleep(0.05)
    last = layer.sent[-2]  # the summary, then the detail for followers
    assert last[0] - changed < 0.05 and last[2]["session"]["state"] == "responding"
    await publisher.close("test over")
    assert layer.sent[-1][2] == {"type": groups.SESSION_GONE, "session_id": "sess_test", "reason": "test over"}
