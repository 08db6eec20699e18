"""One WebRTC call: an aiortc peer connection driving a SessionRuntime, as a WebSocket consumer does.

The call is the runtime's Transport. Server events go out on the `oai-events` data channel exactly
as on the WebSocket, except the audio: `response.output_audio.delta` is played on the outbound RTP
track instead, framed by `output_audio_buffer.started` (the response's first audio),
`output_audio_buffer.stopped` (the response is done and its audio has all been played) and
`output_audio_buffer.cleared` (the client's `output_audio_buffer.clear`, or the user started
speaking over it). Events the runtime sends before the data channel opens (session.created) wait
for it. Client events from the channel go to `runtime.receive_text`; the inbound track becomes
`input_audio_buffer.append` events (audio.py).

Whatever ends the call (the client closes its peer connection or data channel, ICE fails, no RTP
for MEDIA_TIMEOUT_S, the runtime ends the session, the server shuts down) ends both: the runtime's
teardown frees the slot and stores the conversation, and the peer connection is closed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from typing import Any

from aiortc import RTCDataChannel, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..protocol.ids import new_id
from ..runtime.session import SessionRuntime
from ..runtime.transport import CLOSE_NORMAL
from .audio import InboundAudio, OutputTrack
from .ice import offer_loopback_when_alone

offer_loopback_when_alone()

log = logging.getLogger(__name__)

DATA_CHANNEL = "oai-events"  # the label OpenAI's clients open
AUDIO_DELTA = "response.output_audio.delta"
CONNECT_TIMEOUT_S = 20.0  # from the answer to an open data channel
MEDIA_TIMEOUT_S = 10.0  # no RTP this long after the first packet: the peer is gone
MAX_INBOX = 1000  # client events and appends waiting for the runtime; beyond, new ones are dropped
CLOSE_FLUSH_S = 1.0  # how long a closing call waits for the data channel to send what it holds

# The live calls of this process, by call id (they also hold their tasks alive).
calls: dict[str, WebRTCCall] = {}


class WebRTCCall:
    def __init__(self, pc: RTCPeerConnection) -> None:
        self.call_id = new_id("rtc")
        self.pc = pc
        self.runtime: SessionRuntime | None = None
        self.channel: RTCDataChannel | None = None
        self.output = OutputTrack(on_drained=self._drained)
        self.inbound = InboundAudio()
        self.layer: Any = None
        self.channel_name = ""
        self.ended = False
        self.first_media: float | None = None
        self.last_media = 0.0
        self._pending: list[str] = []  # events sent before the data channel opened
        self._inbox: asyncio.Queue[str | bytes] = asyncio.Queue()  # client events and audio, in order
        self._overflowed = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing: asyncio.Task[None] | None = None
        # The response whose audio is being played, and whether it is done (response.done sent).
        self._playing: str | None = None
        self._playing_done = False
        self._cleared: set[str] = set()  # responses whose remaining audio the client cut off
        pc.on("datachannel", self._on_datachannel)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)

    # --- set-up ---------------------------------------------------------------------------------

    def attach(self, runtime: SessionRuntime, layer: Any, channel_name: str) -> None:
        """The admitted session: start the call's own tasks (console messages, timeouts)."""
        self.runtime = runtime
        self.layer = layer
        self.channel_name = channel_name
        calls[self.call_id] = self
        self._spawn(self._feed(), "webrtc-feed")
        if layer is not None and channel_name:
            self._spawn(self._layer_messages(), "webrtc-layer")
        self._spawn(self._watch_peer(), "webrtc-watch")

    async def configure(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """Apply the client secret's (or the call's) configuration as a `session.update` before the
        client's events, as OpenAI does: session.created shows it and no session.updated is sent.
        Returns the error it caused, if any. Called before the answer, so nothing was sent yet."""
        assert self.runtime is not None and self.channel is None
        before = len(self._pending)
        await self.runtime.receive_text(json.dumps({"type": "session.update", "session": config}))
        added = [json.loads(text) for text in self._pending[before:]]
        del self._pending[before:]
        for event in added:
            if event["type"] == "error":
                return dict(event["error"])
        updated = next((event for event in added if event["type"] == "session.updated"), None)
        if updated is not None:
            for index, text in enumerate(self._pending):
                event = json.loads(text)
                if event["type"] == "session.created":
                    event["session"] = updated["session"]
                    self._pending[index] = json.dumps(event)
        return None

    def pending_events(self) -> list[dict[str, Any]]:
        """The events waiting for the data channel (a refusal's error, before any answer)."""
        return [json.loads(text) for text in self._pending]

    def _spawn(self, body: Any, name: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(body, name=f"{name}-{self.call_id}"))

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != DATA_CHANNEL or self.channel is not None:
            log.info("call %s: ignoring data channel %r", self.call_id, channel.label[:64])
            return
        self.channel = channel
        channel.on("message", self._on_message)
        channel.on("close", lambda: self._finish_soon("data_channel_closed"))
        pending, self._pending = self._pending, []
        for text in pending:
            channel.send(text)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._read_audio(track), "webrtc-audio-in")

    def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self._finish_soon(f"peer_{self.pc.connectionState}")

    # --- client to server -----------------------------------------------------------------------

    def _on_message(self, message: str | bytes) -> None:
        if not self.ended:
            self._enqueue(message)

    def _enqueue(self, message: str | bytes) -> None:
        """aiortc delivers messages as fast as they come; the runtime takes them one at a time. A
        client far ahead of it (a flood) loses what exceeds MAX_INBOX, as a rate limit would."""
        if self._inbox.qsize() >= MAX_INBOX:
            if not self._overflowed:
                log.warning("call %s: more than %d client messages waiting; dropping", self.call_id, MAX_INBOX)
            self._overflowed = True
            return
        self._inbox.put_nowait(message)

    async def _feed(self) -> None:
        """Client events and audio appends to the runtime, one at a time, in arrival order (as a
        WebSocket consumer handles its messages)."""
        while not self.ended:
            message = await self._inbox.get()
            runtime = self.runtime
            if runtime is None:
                continue
            if isinstance(message, bytes):
                await runtime.receive_bytes()
                continue
            await runtime.receive_text(message)
            if "output_audio_buffer.clear" in message:
                with contextlib.suppress(ValueError, AttributeError):
                    if json.loads(message).get("type") == "output_audio_buffer.clear":
                        self._clear_output()

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        """Decoded RTP frames (48 kHz) to 100 ms appends at 24 kHz, in arrival order."""
        while not self.ended:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            self.last_media = now
            if self.first_media is None:
                self.first_media = now
            for chunk in self.inbound.add(frame):
                event = {"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}
                self._enqueue(json.dumps(event))

    # --- server to client: the runtime's Transport ----------------------------------------------

    async def send_text(self, text: str) -> None:
        event = json.loads(text)
        kind = event.get("type", "")
        if kind == AUDIO_DELTA:
            response_id = event.get("response_id", "")
            if response_id in self._cleared:
                return
            if self._playing != response_id:
                self._playing, self._playing_done = response_id, False
                self._send(_buffer_event("output_audio_buffer.started", response_id))
            self.output.push(base64.b64decode(event["delta"]))
            return
        self._send(text)
        if kind == "response.done":
            response_id = event["response"]["id"]
            if response_id == self._playing:
                self._playing_done = True
                if not self.output.queued:
                    self._drained()
        elif kind == "input_audio_buffer.speech_started" and self._playing is not None:
            self._clear_output()  # the user talks over the voice: what is queued is dropped

    def _send(self, text: str) -> None:
        if self.ended:
            return
        channel = self.channel
        if channel is None:
            self._pending.append(text)
        elif channel.readyState == "open":
            channel.send(text)

    def _drained(self) -> None:
        """The queued audio has been played: a done response's audio is stopped."""
        if self._playing is not None and self._playing_done:
            self._send(_buffer_event("output_audio_buffer.stopped", self._playing))
            self._playing = None

    def _clear_output(self) -> None:
        self.output.clear()
        if self._playing is not None:
            self._cleared.add(self._playing)
            self._send(_buffer_event("output_audio_buffer.cleared", self._playing))
            self._playing = None

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """The runtime ends the session: let the data channel send what it holds, then hang up."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._hang_up(flush=True))

    def unsent_bytes(self) -> int | None:
        channel = self.channel
        return int(channel.bufferedAmount) if channel is not None else sum(len(t) for t in self._pending)

    def abort(self) -> None:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._hang_up(flush=False))

    # --- ending ---------------------------------------------------------------------------------

    def _finish_soon(self, reason: str) -> None:
        if not self.ended:
            asyncio.get_running_loop().create_task(self.finish(reason))

    async def finish(self, reason: str) -> None:
        """The peer is gone (or never came): end the session, free the slot, close the connection."""
        if self.ended:
            return
        log.info("call %s ended: %s", self.call_id, reason)
        if self.runtime is not None:
            await self.runtime.teardown(f"webrtc:{reason}")
        await self._hang_up(flush=False)

    async def _hang_up(self, *, flush: bool) -> None:
        channel = self.channel
        if flush and channel is not None and not self.ended:
            deadline = time.monotonic() + CLOSE_FLUSH_S
            while channel.bufferedAmount > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)  # the data channel drains its buffer, bounded above
        self.ended = True
        calls.pop(self.call_id, None)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        self.output.stop()
        with contextlib.suppress(Exception):
            await self.pc.close()
        if self.runtime is not None:  # closed by the server: the runtime is already ending
            await self.runtime.teardown("webrtc:closed")

    async def _watch_peer(self) -> None:
        """End a call whose peer never connects, or whose media stopped (a peer that vanished)."""
        started = time.monotonic()
        while not self.ended:
            await asyncio.sleep(1.0)  # a coarse check is enough: the bounds are seconds
            now = time.monotonic()
            if self.channel is None and now - started > CONNECT_TIMEOUT_S:
                await self.finish("not_connected")
            elif self.first_media is not None and now - self.last_media > MEDIA_TIMEOUT_S:
                await self.finish("media_timeout")

    async def _layer_messages(self) -> None:
        """Console and key-revocation messages for this session, as the WebSocket consumer routes them."""
        while not self.ended:
            message = await self.layer.receive(self.channel_name)
            runtime = self.runtime
            if runtime is None:
                continue
            kind = message.get("type")
            try:
                if kind == "console.roll_call":
                    await runtime.console_reply(message["reply_to"], detail=False)
                elif kind == "console.watch":
                    await runtime.console_reply(message["reply_to"], detail=True)
                elif kind == "console.end_session":
                    await runtime.end_by_staff(message.get("user_id"), str(message.get("username", "")))
                elif kind == "session.key_revoked":
                    await runtime.key_revoked()
            except Exception:  # noqa: BLE001 - one bad message must not stop the loop
                log.exception("call %s: channel-layer message %r failed", self.call_id, kind)


def _buffer_event(kind: str, response_id: str) -> str:
    return json.dumps({"event_id": new_id("event"), "type": kind, "response_id": response_id})
