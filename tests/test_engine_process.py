"""The engine process: its wire format, its service seen through remote slots, and a child engine
that dies under a real daphne (its sessions are told and closed, it comes back)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from voice.engine import wire
from voice.engine.forcing import MAX_TEXTS
from voice.engine.manager import ManagerConfig, ModelManager
from voice.engine.remote import ENGINE_GONE, EngineUnavailable, RemoteManager, RemoteSlot
from voice.engine.service import SPEECH_QUEUE_FULL, EngineService
from voice.engine.slots import EngineFailure, FrameOutput
from voice.testing.live_server import LiveServer

from .conftest import TIMEOUT
from .e2e_support import ended_conversation, ga_socket, live_server_fixture, open_socket
from .e2e_support import server_alive as server_alive  # autouse: each test first checks that daphne runs

INBOX = 8


def frame(seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(1920)).astype(np.float32)


# --- the wire format -----------------------------------------------------------------------------


def split(data: bytes) -> tuple[bytes, bytes]:
    kind, length = wire.parse_header(data[: wire.HEADER.size])
    payload = data[wire.HEADER.size :]
    assert len(payload) == length
    return kind, payload


def test_an_output_crosses_the_wire_unchanged() -> None:
    pcm, heard = frame(1), frame(2)
    sent = FrameOutput("  café", pcm, [0.25, 0.5, 0.75], True, 0.012, heard, 123.5, forced=True, forced_left=7)
    kind, payload = split(wire.encode_output(sent, done=41))
    assert kind == wire.OUTPUT
    received, done = wire.decode_output(payload)
    assert (received.text, received.speech, received.client_audio, done) == (
        "  café",
        [0.25, 0.5, 0.75],
        True,
        41,
    )
    assert (received.latency_s, received.ready_at, received.forced, received.forced_left) == (0.012, 123.5, True, 7)
    np.testing.assert_array_equal(received.pcm, pcm)
    np.testing.assert_array_equal(received.heard, heard)
    silence = FrameOutput(None, pcm, [], False, 0.0, heard)  # silence the server fed: no input to record
    assert wire.decode_output(split(wire.encode_output(silence, 0))[1])[0].heard is None
    silent = wire.decode_output(split(wire.encode_output(FrameOutput(None, None, [], False, 0.0), 0))[1])[0]
    assert (silent.text, silent.pcm, silent.heard, silent.speech, silent.client_audio) == (None, None, None, [], False)
    empty = wire.decode_output(split(wire.encode_output(FrameOutput("", None, [], False, 0.0), 0))[1])[0]
    assert empty.text == ""  # a forced piece may be empty: not the same as no text


def test_a_failure_says_how_many_frames_are_done() -> None:
    kind, payload = split(wire.failure_message(12, "model step failed: boom"))
    assert kind == wire.FAILURE and wire.parse_failure(payload) == (12, "model step failed: boom")
    with pytest.raises(wire.WireError):
        wire.parse_failure(b"\x01")


def test_frames_flags_and_json_cross_the_wire() -> None:
    samples = frame(3)
    kind, payload = split(wire.frame_message(samples))
    assert kind == wire.FRAME
    parsed = wire.parse_frame(payload)
    np.testing.assert_array_equal(parsed, samples)
    parsed[0] = 1.0  # writable, as torch.from_numpy needs
    assert wire.parse_flag(split(wire.flag_message(wire.KEEP_RUNNING, True))[1]) is True
    assert wire.parse_json(split(wire.json_message(wire.OPEN, {"model_type": "sft"}))[1]) == {"model_type": "sft"}


@pytest.mark.parametrize(
    "broken",
    [
        lambda: wire.parse_header(wire.HEADER.pack(0, ord("F"))),
        lambda: wire.parse_header(wire.HEADER.pack(wire.MAX_MESSAGE_BYTES + 1, ord("F"))),
        lambda: wire.parse_frame(b"\x00" * 100),
        lambda: wire.parse_flag(b"\x02"),
        lambda: wire.parse_json(b"[1]"),
        lambda: wire.parse_json(b"\xff"),
        lambda: wire.decode_output(b"\x01"),
        lambda: wire.decode_output(wire.encode_output(FrameOutput("a", None, [], False, 0.0), 0)[5:] + b"x"),
    ],
)
def test_a_broken_message_is_a_wire_error(broken) -> None:
    with pytest.raises(wire.WireError):
        broken()


# --- the service, through remote slots ------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_engine(
    checkpoint: Path, max_sessions: int = 2
) -> AsyncIterator[tuple[ModelManager, RemoteManager, asyncio.Event]]:
    """An EngineService on this loop over its own ModelManager, and a RemoteManager to reach it."""
    manager = ModelManager(ManagerConfig(models={}, demo_dir=checkpoint, max_sessions=max_sessions, tick_ms=0.0))
    await asyncio.to_thread(manager.load)
    socket_path = Path(tempfile.mkdtemp(prefix="engine-test-")) / "engine.sock"
    stop = asyncio.Event()
    serving = asyncio.create_task(EngineService(manager, socket_path).serve(stop))
    try:
        while not socket_path.exists():
            await asyncio.sleep(0.01)
        yield manager, RemoteManager(socket_path, inbox_frames=INBOX), stop
    finally:
        stop.set()
        await serving
        manager.stop()
        shutil.rmtree(socket_path.parent, ignore_errors=True)


async def outputs(slot: RemoteSlot, count: int) -> list[FrameOutput]:
    received = []
    while len(received) < count:
        item = await asyncio.wait_for(slot.outbox.get(), TIMEOUT)
        assert isinstance(item, FrameOutput), item
        received.append(item)
    return received


async def in_use(remote: RemoteManager, expected: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while (await asyncio.to_thread(remote.status, 0))["models"]["sft"]["in_use"] != expected:
        assert time.monotonic() < deadline, f"in_use never became {expected}"
        await asyncio.sleep(0.02)


async def test_a_remote_session_steps_in_the_engine_and_gives_its_slot_back(demo_checkpoint: Path) -> None:
    async with running_engine(demo_checkpoint) as (_, remote, _):
        status = await asyncio.to_thread(remote.status, 0)
        assert status["ready"] and status["models"]["sft"]["slots"] == 2 and status["models"]["sft"]["in_use"] == 0
        assert remote.ready and remote.model_names() == {"sft": "moshi-demo-random-weights"}
        slot = await remote.open_slot("sft", detect_speech=True)
        assert slot is not None
        await in_use(remote, 1)
        sent = [frame(seed) for seed in range(5)]
        assert all(slot.push(samples) for samples in sent)
        received = await outputs(slot, 5)
        assert all(item.client_audio for item in received)
        assert sum(item.pcm is not None for item in received) >= 4  # a restarted slot's first output may be empty
        # The VAD scored the audio: 2 or 3 windows of 32 ms per 80 ms frame, once its resampler is primed.
        assert all(len(item.speech) <= 3 for item in received) and sum(len(item.speech) for item in received) >= 8
        for heard, samples in zip((item.heard for item in received), sent, strict=True):
            np.testing.assert_array_equal(heard, samples)  # what the model heard, for recordings
        assert slot.queued_frames == 0
        slot.set_detect_speech(False)
        slot.push(frame(9))
        (last,) = await outputs(slot, 1)
        assert last.speech == []  # turn detection off: no VAD for this session
        slot.release()
        await in_use(remote, 0)


async def test_an_open_response_keeps_a_remote_slot_talking_without_input(demo_checkpoint: Path) -> None:
    async with running_engine(demo_checkpoint) as (_, remote, _):
        slot = await remote.open_slot("sft")
        assert slot is not None
        slot.set_keep_running(True)
        received = await outputs(slot, 3)
        assert not any(item.client_audio for item in received)
        slot.release()


async def test_a_remote_slot_says_a_given_text_verbatim(demo_checkpoint: Path) -> None:
    text = "Sure, I can help you with that. What time would suit you best?"
    async with running_engine(demo_checkpoint) as (_, remote, _):
        slot = await remote.open_slot("sft")
        assert slot is not None
        assert slot.speak(text)
        slot.set_keep_running(True)
        said = []
        for _ in range(600):
            item = await asyncio.wait_for(slot.outbox.get(), TIMEOUT)
            assert isinstance(item, FrameOutput)
            if item.forced:
                said.append(item.text)
            if said and item.forced_left == 0:
                break
        assert "".join(said) == text
        slot.hush()  # nothing left: harmless
        slot.release()


async def test_a_remote_slot_hears_when_too_many_texts_wait(demo_checkpoint: Path) -> None:
    async with running_engine(demo_checkpoint) as (_, remote, _):
        slot = await remote.open_slot("sft")
        assert slot is not None
        for n in range(MAX_TEXTS + 4):
            slot.speak(f"Text number {n}.")
        item = await asyncio.wait_for(slot.outbox.get(), TIMEOUT)
        while isinstance(item, FrameOutput):
            item = await asyncio.wait_for(slot.outbox.get(), TIMEOUT)
        assert isinstance(item, EngineFailure) and not item.fatal and item.message == SPEECH_QUEUE_FULL
        slot.release()


async def test_every_slot_taken_is_a_refusal_until_one_comes_back(demo_checkpoint: Path) -> None:
    async with running_engine(demo_checkpoint, max_sessions=2) as (_, remote, _):
        first, second = await remote.open_slot("sft"), await remote.open_slot("sft")
        assert first is not None and second is not None and first.index != second.index
        assert await remote.open_slot("sft") is None
        first.release()
        await in_use(remote, 1)
        third = await remote.open_slot("sft")
        assert third is not None
        with pytest.raises(EngineUnavailable):
            await remote.open_slot("pretrain")  # not loaded
        second.release()
        third.release()


async def test_a_worker_sends_at_most_its_inbox_ahead_of_the_engine(demo_checkpoint: Path) -> None:
    async with running_engine(demo_checkpoint) as (_, remote, _):
        slot = await remote.open_slot("sft")
        assert slot is not None
        accepted = [slot.push(frame(seed)) for seed in range(INBOX + 5)]  # no await: no output can arrive
        assert accepted == [True] * INBOX + [False] * 5
        await outputs(slot, INBOX)
        assert slot.queued_frames == 0 and slot.push(frame(0))
        slot.release()


async def test_a_worker_that_vanishes_or_talks_garbage_frees_its_slot(demo_checkpoint: Path) -> None:
    async with running_engine(demo_checkpoint) as (_, remote, _):
        for garbage in (b"", b"\xff\xff\xff\xff\x00", wire.message(wire.FRAME, b"\x00" * 7)):
            reader, writer = await asyncio.open_unix_connection(str(remote.socket_path))
            writer.write(wire.json_message(wire.OPEN, {"model_type": "sft"}))
            kind, payload = await wire.read_message(reader)
            assert kind == wire.OPENED and json.loads(payload)["ok"]
            await in_use(remote, 1)
            writer.write(garbage)
            if not garbage:
                writer.close()  # a worker that died
            await in_use(remote, 0)
            writer.close()


async def test_a_dead_engine_is_a_fatal_failure_for_its_sessions_and_not_ready(demo_checkpoint: Path) -> None:
    async with running_engine(demo_checkpoint) as (_, remote, stop):
        slot = await remote.open_slot("sft")
        assert slot is not None
        stop.set()  # the engine goes away with a session open
        item = await asyncio.wait_for(slot.outbox.get(), TIMEOUT)
        while isinstance(item, FrameOutput):
            item = await asyncio.wait_for(slot.outbox.get(), TIMEOUT)
        assert isinstance(item, EngineFailure) and item.fatal and item.message == ENGINE_GONE
        await asyncio.sleep(0.05)
        assert await asyncio.to_thread(remote.status, 0) is None and not remote.ready
        with pytest.raises(EngineUnavailable):
            await remote.open_slot("sft")
        slot.release()


# --- a child engine under a real daphne -----------------------------------------------------------

server = live_server_fixture("engine-child", {"RESPONSE_MAX_MS": "800"})


def engine_pid(server: LiveServer) -> int:
    """The `manage.py run_engine` child of the server process."""
    assert server.process is not None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) == server.process.pid and b"run_engine" in (entry / "cmdline").read_bytes():
                return int(entry.name)
    raise AssertionError(f"no engine process under daphne {server.process.pid}")


def health(server: LiveServer, path: str = "/healthz") -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{server.http_url}{path}", timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_daphne_serves_through_a_child_engine_and_readyz_shows_its_slots(server: LiveServer) -> None:
    status, body = health(server, "/readyz")
    assert status == 200 and body["slots"]["sft"]["total"] == body["slots"]["sft"]["free"]
    async with ga_socket(server) as socket:
        await socket.send({"type": "response.create"})
        await socket.recv_until("response.output_audio.delta")
        status, body = health(server, "/readyz")
        assert body["slots"]["sft"]["free"] == body["slots"]["sft"]["total"] - 1


async def test_a_child_engine_that_dies_ends_its_sessions_cleanly_and_comes_back(server: LiveServer) -> None:
    first = engine_pid(server)
    socket = await open_socket(server)
    created = await socket.expect("session.created")
    await socket.send({"type": "response.create"})
    await socket.recv_until("response.output_audio.delta")
    os.kill(first, signal.SIGKILL)
    error = (await socket.recv_until("error"))[-1]["error"]
    assert error["code"] == "model_error" and error["type"] == "server_error"
    with pytest.raises(Exception):  # noqa: B017, PT011 - the server closes: websockets raises ConnectionClosed
        await socket.recv()
    assert socket.ws.close_code == 4011
    conversation = await ended_conversation(server, created["session"]["id"])
    assert conversation["end_reason"] == "engine_lost"
    deadline = time.monotonic() + 4 * TIMEOUT
    while health(server)[0] != 200:  # restarted: loading the model again takes a few seconds
        assert time.monotonic() < deadline, server.log(6000)
        await asyncio.sleep(0.2)
    assert engine_pid(server) != first
    async with ga_socket(server, wait_for_slot=True) as again:
        await again.send({"type": "response.create"})
        await again.recv_until("response.output_audio.delta")
