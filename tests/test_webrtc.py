"""WebRTC for the Realtime protocol (voice/webrtc, docs/webrtc.md), against a real daphne.

The client is aiortc in the test process, connecting as @openai/agents-realtime's
OpenAIRealtimeWebRTC does: a client secret minted with a real key, the offer posted as
`application/sdp` with `Authorization: Bearer ek_...`, the `oai-events` data channel, the microphone
as an Opus track. Every event on the channel is validated strictly against the openai SDK's models.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import hashlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
import websockets
from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from openai.types.realtime.client_secret_create_response import ClientSecretCreateResponse

from voice.protocol import Dialect
from voice.testing.live_server import LiveServer
from voice.webrtc.ice import offer_loopback_when_alone

from .conftest import TIMEOUT
from .console_support import CONSOLE_PERMISSIONS, admin_login, create_user
from .e2e_support import STARTUP_TIMEOUT, ended_conversation, live_server_fixture, query_db, stored_items
from .e2e_support import server_alive as server_alive  # autouse: each test first checks that daphne runs
from .helpers import read_pcm16
from .strict import strict

offer_loopback_when_alone()  # the client's side too: under `unshare -n` loopback is the only network

SERVER_ENV = {
    "REALTIME_OPEN_ENDPOINT": "0",  # keys required, as in production
    "REALTIME_MAX_SESSIONS": "1",  # a second call is refused until the first one's slot is free
    "RESPONSE_MAX_MS": "1600",
    "LOG_LEVEL": "INFO",
}
API_KEY = "rt-webrtc-tests-key"
SPEECH = "weather_en_24k.wav"

server = live_server_fixture("webrtc-server", SERVER_ENV)


@pytest.fixture(scope="module")
def api_key(server: LiveServer) -> str:
    """A real API key, written into the server's database as the admin would store it (hashed)."""
    db = sqlite3.connect(server.db_path, timeout=TIMEOUT)
    try:
        db.execute(
            "INSERT INTO voice_apikey (name, prefix, key_hash, created_at) VALUES (?, ?, ?, datetime('now'))",
            ("webrtc tests", API_KEY[:10], hashlib.sha256(API_KEY.encode()).hexdigest()),
        )
        db.commit()
    finally:
        db.close()
    return API_KEY


# --- the client ---------------------------------------------------------------------------------


@dataclass
class Response:
    status_code: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def post(url: str, data: Any, headers: dict[str, str]) -> Response:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
        async with http.post(url, data=data, headers=headers) as got:
            return Response(got.status, dict(got.headers), await got.text())


class SpeechTrack(MediaStreamTrack):
    """A microphone: the given 24 kHz pcm16, then silence, 20 ms a frame in real time."""

    kind = "audio"

    def __init__(self, pcm: bytes = b"") -> None:
        super().__init__()
        self.pcm = pcm
        self.pts = 0
        self.start: float | None = None

    @property
    def done(self) -> bool:
        return self.pts * 2 >= len(self.pcm)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.start is None:
            self.start = time.monotonic()
        wait = self.start + self.pts / 24000 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)  # real-time pacing, as a microphone
        chunk = self.pcm[self.pts * 2 : self.pts * 2 + 960].ljust(960, b"\0")
        frame = av.AudioFrame(format="s16", layout="mono", samples=480)
        frame.planes[0].update(chunk)
        frame.sample_rate = 24000
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, 24000)
        self.pts += 480
        return frame


class Call:
    """One client call: the peer connection, the events of `oai-events`, the audio it hears."""

    def __init__(self, server: LiveServer, pcm: bytes = b"") -> None:
        self.server = server
        self.pc = RTCPeerConnection()
        self.channel: RTCDataChannel = self.pc.createDataChannel("oai-events")
        self.mic = SpeechTrack(pcm)
        self.pc.addTrack(self.mic)
        self.events: list[dict[str, Any]] = []
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.opened = asyncio.Event()
        self.heard_frames = 0
        self.loud_frames = 0
        self.reader: asyncio.Task[None] | None = None
        self.call_id = ""
        self.channel.on("open", self.opened.set)
        self.channel.on("message", self._message)
        self.pc.on("track", self._track)

    def _message(self, message: str | bytes) -> None:
        event = json.loads(message)
        strict(event, Dialect.GA)
        self.events.append(event)
        self.queue.put_nowait(event)

    def _track(self, track: MediaStreamTrack) -> None:
        self.reader = asyncio.ensure_future(self._hear(track))

    async def _hear(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.heard_frames += 1
                if np.abs(frame.to_ndarray().astype(np.int32)).max() > 64:
                    self.loud_frames += 1

    async def offer(self, key: str) -> Response:
        """Post the offer as OpenAIRealtimeWebRTC does; on 201, take the answer."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        response = await post(
            f"{self.server.http_url}/v1/realtime/calls",
            data=self.pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {key}"},
        )
        if response.status_code == 201:
            self.call_id = response.headers["Location"].split("/")[-1]
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
        else:
            await self.close()  # refused: nothing to keep
        return response

    def send(self, event: dict[str, Any]) -> None:
        self.channel.send(json.dumps(event))

    async def next_event(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            types = [event["type"] for event in self.events[-12:]]
            raise AssertionError(f"no event within {timeout:.0f}s; last: {types}\n{self.server.log(6000)}") from None

    async def until(self, event_type: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = await self.next_event(max(deadline - time.monotonic(), 0.01))
            if event["type"] == event_type:
                return event

    async def close(self) -> None:
        await self.pc.close()
        if self.reader is not None:
            self.reader.cancel()


@contextlib.asynccontextmanager
async def connected(server: LiveServer, key: str, pcm: bytes = b"") -> AsyncIterator[Call]:
    call = Call(server, pcm)
    try:
        response = await call.offer(key)
        assert response.status_code == 201, response.text
        await asyncio.wait_for(call.opened.wait(), TIMEOUT)
        yield call
    finally:
        await call.close()


async def mint(server: LiveServer, key: str, body: dict[str, Any] | None = None) -> Response:
    return await post(
        f"{server.http_url}/v1/realtime/client_secrets",
        data=json.dumps(body if body is not None else {}),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )


async def live_sessions(server: LiveServer) -> int:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
        async with http.get(f"{server.http_url}/metrics") as got:
            text = await got.text()
    for line in text.splitlines():
        if line.startswith("realtime_sessions_live "):
            return int(float(line.split()[1]))
    raise AssertionError("no realtime_sessions_live gauge in /metrics")


async def wait_for_free_slot(server: LiveServer) -> None:
    deadline = time.monotonic() + TIMEOUT
    while await live_sessions(server) > 0:
        assert time.monotonic() < deadline, f"the slot was not freed:\n{server.log(6000)}"
        await asyncio.sleep(0.2)  # polling the gauge, bounded by the deadline above


# --- the tests ----------------------------------------------------------------------------------


async def test_a_browser_call_with_a_client_secret_talks_and_is_stored(server: LiveServer, api_key: str) -> None:
    minted = await mint(
        server,
        api_key,
        {
            "session": {"type": "realtime", "instructions": "WebRTC test: answer briefly."},
            "expires_after": {"anchor": "created_at", "seconds": 600},
        },
    )
    assert minted.status_code == 200, minted.text
    secret = ClientSecretCreateResponse.model_validate(minted.json())
    assert secret.value.startswith("ek_") and secret.expires_at > time.time() + 500
    assert minted.json()["session"]["instructions"] == "WebRTC test: answer briefly."

    speech = read_pcm16(SPEECH)
    async with connected(server, secret.value, speech) as call:
        assert call.call_id.startswith("rtc_")
        created = await call.next_event()
        assert created["type"] == "session.created", created
        assert created["session"]["instructions"] == "WebRTC test: answer briefly."  # the secret's config
        session_id = created["session"]["id"]
        call.send(
            {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}}
        )
        updated = await call.until("session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        deadline = time.monotonic() + len(speech) / 48000 + TIMEOUT
        while not call.mic.done:  # the speech goes out as Opus, in real time
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # the last packets arrive
        call.send({"type": "input_audio_buffer.commit"})
        committed = await call.until("input_audio_buffer.committed")
        call.send({"type": "response.create"})
        started = await call.until("output_audio_buffer.started", 2 * TIMEOUT)
        done = await call.until("response.done", 2 * TIMEOUT)
        stopped = await call.until("output_audio_buffer.stopped", TIMEOUT)
        assert started["response_id"] == done["response"]["id"] == stopped["response_id"]
        types = [event["type"] for event in call.events]
        assert "response.output_audio.delta" not in types  # the audio goes on the track
        assert types.index("response.output_audio.done") < types.index("output_audio_buffer.stopped")
        assert call.loud_frames > 10, (call.heard_frames, call.loud_frames)  # the voice was heard
        response_items = [item["id"] for item in done["response"]["output"]]

    conversation = await ended_conversation(server, session_id)
    items = stored_items(server, conversation["id"])
    assert committed["item_id"] in items and set(response_items) <= set(items)
    keys = query_db(server.db_path, "SELECT name FROM voice_apikey WHERE id = ?", conversation["api_key_id"])
    assert keys[0]["name"] == "webrtc tests"
    await wait_for_free_slot(server)


async def test_the_multipart_form_with_a_real_key_applies_its_session(server: LiveServer, api_key: str) -> None:
    """As the openai SDKs' realtime.calls.create posts it: sdp and session as form parts."""
    call = Call(server)
    try:
        await call.pc.setLocalDescription(await call.pc.createOffer())
        session = {"type": "realtime", "instructions": "multipart"}
        form = aiohttp.FormData()
        form.add_field("sdp", call.pc.localDescription.sdp, content_type="application/sdp")
        form.add_field("session", json.dumps(session), content_type="application/json")
        response = await post(
            f"{server.http_url}/v1/realtime/calls", data=form, headers={"Authorization": f"Bearer {api_key}"}
        )
        assert response.status_code == 201, response.text
        assert response.headers["Content-Type"] == "application/sdp"
        call.call_id = response.headers["Location"].split("/")[-1]
        await call.pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
        created = await call.next_event()
        assert created["type"] == "session.created" and created["session"]["instructions"] == "multipart"
        # The SDK's interrupt(): response.cancel, then output_audio_buffer.clear cuts off the voice.
        await asyncio.wait_for(call.opened.wait(), TIMEOUT)
        call.send({"type": "response.create"})
        started = await call.until("output_audio_buffer.started", 2 * TIMEOUT)
        call.send({"type": "response.cancel"})
        call.send({"type": "output_audio_buffer.clear"})
        cleared = await call.until("output_audio_buffer.cleared")
        assert cleared["response_id"] == started["response_id"]
        # The server side hangs up (realtime.calls.hangup): the call ends, the slot is freed.
        response = await post(
            f"{server.http_url}/v1/realtime/calls/{call.call_id}/hangup", data=b"", headers=auth(api_key)
        )
        assert response.status_code == 200, response.text
        conversation = await ended_conversation(server, created["session"]["id"])
        assert conversation["end_reason"] == "hangup"
    finally:
        await call.close()
    await wait_for_free_slot(server)


async def test_a_page_on_an_allowed_origin_may_post_and_read_the_call_id(server: LiveServer) -> None:
    """CORS: the preflight of a browser page served from an allowed host, and a foreign one."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        async with http.options(
            f"{server.http_url}/v1/realtime/calls", headers={"Origin": "http://localhost:5173", **preflight}
        ) as allowed:
            assert allowed.status == 204
            assert allowed.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
            assert "Location" in allowed.headers["Access-Control-Expose-Headers"]
            assert "Authorization" in allowed.headers["Access-Control-Allow-Headers"]
        async with http.options(
            f"{server.http_url}/v1/realtime/calls", headers={"Origin": "https://evil.example", **preflight}
        ) as foreign:
            assert foreign.status == 403 and "Access-Control-Allow-Origin" not in foreign.headers


async def test_keys_are_refused_where_they_do_not_belong(server: LiveServer, api_key: str) -> None:
    minted = (await mint(server, api_key)).json()
    ephemeral = minted["value"]
    # An ephemeral key opens calls only: not the WebSocket, not /client_secrets.
    async with websockets.connect(
        f"{server.ws_url}/v1/realtime", additional_headers={"Authorization": f"Bearer {ephemeral}"}
    ) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert first["type"] == "error" and first["error"]["code"] == "invalid_api_key", first
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 3000
    refused = await mint(server, ephemeral)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    # Unknown and expired ephemeral keys, and no key, are refused before any answer.
    for key in ("ek_unknown", "", "rt-not-a-key"):
        response = await Call(server).offer(key)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "invalid_api_key"
    db = sqlite3.connect(server.db_path, timeout=TIMEOUT)
    try:
        db.execute(
            "UPDATE voice_clientsecret SET expires_at = '2000-01-01 00:00:00' WHERE secret_hash = ?",
            (hashlib.sha256(ephemeral.encode()).hexdigest(),),
        )
        db.commit()
    finally:
        db.close()
    expired = await Call(server).offer(ephemeral)
    assert expired.status_code == 401, expired.text
    # Bad bodies: OpenAI's error shape, 400.
    bad = await mint(server, api_key, {"expires_after": {"anchor": "created_at", "seconds": 5}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "expires_after.seconds"
    not_sdp = await post(
        f"{server.http_url}/v1/realtime/calls",
        data="hello",
        headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {api_key}"},
    )
    assert not_sdp.status_code == 400 and not_sdp.json()["error"]["code"] == "invalid_sdp"


async def test_a_peer_that_vanishes_frees_its_slot(server: LiveServer, api_key: str) -> None:
    secret = (await mint(server, api_key)).json()["value"]
    call = Call(server)
    response = await call.offer(secret)
    assert response.status_code == 201, response.text
    await asyncio.wait_for(call.opened.wait(), TIMEOUT)
    assert (await call.next_event())["type"] == "session.created"
    # The one slot is taken: a second call is refused before any answer.
    busy = await Call(server).offer(secret)
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "server_busy", busy.text
    await call.close()  # the browser tab goes away
    await wait_for_free_slot(server)
    async with connected(server, secret) as again:
        assert (await again.next_event())["type"] == "session.created"


async def test_a_sender_that_goes_silent_is_ended_by_the_media_timeout(server: LiveServer, api_key: str) -> None:
    """A peer that vanished without closing: its RTP stops (here: the mic track is stopped while the
    data channel stays up); after MEDIA_TIMEOUT_S the session ends and the slot is free."""
    async with connected(server, api_key) as call:
        created = await call.next_event()
        await asyncio.sleep(1.0)  # some RTP arrives first
        call.mic.stop()
        conversation = await ended_conversation_within(server, created["session"]["id"], 15 + TIMEOUT)
        assert conversation["end_reason"] == "webrtc:media_timeout"
    await wait_for_free_slot(server)


async def test_the_staff_console_lists_and_ends_a_call(server: LiveServer, api_key: str) -> None:
    create_user(server, "operator", staff=True, timeout=STARTUP_TIMEOUT, permissions=CONSOLE_PERMISSIONS)
    cookie, _page = await asyncio.to_thread(admin_login, server, "operator", TIMEOUT)
    async with connected(server, api_key) as call:
        session_id = (await call.next_event())["session"]["id"]
        async with websockets.connect(
            f"{server.ws_url}/console/live",
            additional_headers={"Cookie": cookie},
            origin=server.http_url,
            open_timeout=TIMEOUT,
        ) as console:
            deadline = time.monotonic() + TIMEOUT
            while True:  # the call answers the console's roll call through its channel-layer name
                message = json.loads(await asyncio.wait_for(console.recv(), TIMEOUT))
                if message["type"] == "session" and message["session"]["session_id"] == session_id:
                    break
                assert time.monotonic() < deadline, "the call was not listed on the console"
            await console.send(json.dumps({"action": "end", "session_id": session_id}))
            error = await call.until("error")
            assert error["error"]["code"] == "session_ended_by_staff"
        conversation = await ended_conversation(server, session_id)
        assert conversation["end_reason"] == "ended_by_staff"
    await wait_for_free_slot(server)


async def test_a_server_shutdown_ends_a_live_call_and_stores_it(server: LiveServer, api_key: str) -> None:
    """Last in this module: it stops the server."""
    async with connected(server, api_key) as call:
        created = await call.next_event()
        await asyncio.get_running_loop().run_in_executor(None, server.stop)
        error = await call.until("error")
        assert error["error"]["code"] == "server_shutting_down"
    rows = query_db(
        server.db_path, "SELECT * FROM transcripts_conversation WHERE session_id = ?", created["session"]["id"]
    )
    assert rows[0]["ended_at"] is not None and rows[0]["end_reason"] == "server_shutdown", dict(rows[0])


async def ended_conversation_within(server: LiveServer, session_id: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        rows = query_db(server.db_path, "SELECT * FROM transcripts_conversation WHERE session_id = ?", session_id)
        if rows and rows[0]["ended_at"] is not None:
            return rows[0]
        assert time.monotonic() < deadline, f"not ended: {rows and dict(rows[0])}\n{server.log(4000)}"
        await asyncio.sleep(0.2)  # polling the database, bounded by the deadline above
