"""The K concurrent clients: official openai-SDK sessions that stream speech in real time.

Each client is what a user of the server would write: ``AsyncOpenAI(...).realtime.connect`` (GA
dialect) against the benchmark's own server. It sends ``session.update`` with the given turn
detection (``None`` by default: ``turn_detection: null``) and waits for ``session.updated``; all K
clients then start together, each shifted by ``i * 80 ms / K`` so that their frames reach the
server at different points of a tick. It streams
speech from ``tests/audio`` (three files, a different file and start offset per client, looping)
as exact 80 ms appends on a fixed schedule (frame n at ``start + n * 80 ms``, so it never drifts),
sends ``response.create`` right behind the first append (``bench.matching`` says why behind it),
and keeps reading until every frame it sent could have been answered or ``drain_s`` has passed.

What a client records -- when each frame left, when each audio delta (and how many samples it
carried) and speech event arrived, every error -- is a :class:`ClientRun`; the matching and the summary work from those alone.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.frames import FRAME_BYTES, FRAME_S, SAMPLE_RATE
from bench.matching import match_deltas

AUDIO_FILES = ("weather_en_24k.wav", "hello_booking_24k.wav", "train_fr_24k.wav")


def load_audio(folder: Path) -> dict[str, bytes]:
    audio = {}
    for name in AUDIO_FILES:
        with wave.open(str(folder / name)) as wav:
            if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, SAMPLE_RATE):
                raise SystemExit(f"{name}: expected 24 kHz mono pcm16")
            audio[name] = wav.readframes(wav.getnframes())
    return audio


def client_frames(pcm: bytes, offset_s: float, frames: int) -> list[str]:
    """``frames`` base64 appends of exactly 3840 bytes, from ``offset_s`` on, looping over the file."""
    start = int(offset_s * SAMPLE_RATE) * 2 % len(pcm)
    needed = frames * FRAME_BYTES
    looped = (pcm[start:] + pcm * (needed // len(pcm) + 2))[:needed]
    return [base64.b64encode(looped[i : i + FRAME_BYTES]).decode() for i in range(0, needed, FRAME_BYTES)]


def base64_samples(data: str) -> int:
    """pcm16 samples in a base64 audio delta, from its length alone (no decoding)."""
    data = data.rstrip()
    padding = len(data) - len(data.rstrip("="))
    return (len(data) * 3 // 4 - padding) // 2


@dataclass
class ClientRun:
    index: int
    audio_file: str
    offset_s: float
    phase_s: float
    frames_planned: int
    send_s: list[float] = field(default_factory=list)  # each append, after the SDK's send returned
    lag_s: list[float] = field(default_factory=list)  # send time minus its scheduled time
    delta_s: list[float] = field(default_factory=list)  # arrival of each response.output_audio.delta
    delta_samples: list[int] = field(default_factory=list)  # audio samples in each of those deltas
    response_create_s: float | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    # (kind, audio_ms, deltas received before it): the next delta is the anchored frame's
    speech_events: list[tuple[str, int, int]] = field(default_factory=list)
    event_counts: dict[str, int] = field(default_factory=dict)
    failure: str | None = None  # connection failed, closed early, timed out
    closed_by_server: bool = False


async def run_client(
    index: int,
    port: int,
    run: ClientRun,
    appends: list[str],
    ready: asyncio.Event,
    go: asyncio.Future[float],
    drain_s: float,
    timeout_s: float,
    turn_detection: dict[str, Any] | None,
) -> None:
    from openai import AsyncOpenAI

    updated = asyncio.Event()
    created = asyncio.Event()

    async def read(conn: Any) -> None:
        async for event in conn:
            now = time.perf_counter()
            kind = event.type
            run.event_counts[kind] = run.event_counts.get(kind, 0) + 1
            if kind == "response.output_audio.delta":
                run.delta_s.append(now)
                run.delta_samples.append(base64_samples(event.delta))
            elif kind == "error":
                error = event.error
                run.errors.append({"t": now, "code": error.code, "type": error.type, "message": error.message})
            elif kind == "input_audio_buffer.speech_started":
                run.speech_events.append(("started", event.audio_start_ms, len(run.delta_s)))
            elif kind == "input_audio_buffer.speech_stopped":
                run.speech_events.append(("stopped", event.audio_end_ms, len(run.delta_s)))
            elif kind == "session.created":
                created.set()
            elif kind == "session.updated":
                updated.set()
        run.closed_by_server = True

    async def session(conn: Any) -> None:
        reader = asyncio.create_task(read(conn), name=f"reader-{index}")
        try:
            await asyncio.wait_for(created.wait(), 30)
            await conn.session.update(
                session={"type": "realtime", "audio": {"input": {"turn_detection": turn_detection}}}
            )
            await asyncio.wait_for(updated.wait(), 30)
            ready.set()
            start = await go + run.phase_s
            await asyncio.sleep(max(0.0, start - time.perf_counter()))
            for n, audio in enumerate(appends):
                due = start + n * FRAME_S
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if reader.done():
                    raise RuntimeError("the server closed the connection while streaming")
                await conn.input_audio_buffer.append(audio=audio)
                sent = time.perf_counter()
                run.send_s.append(sent)
                run.lag_s.append(sent - due)
                if n == 0:
                    # Right behind the first frame, so that this frame (and never a step on
                    # silence) is what the slot's first, output-less step consumes.
                    run.response_create_s = time.perf_counter()
                    await conn.response.create()
            # Drain: until every frame could have been answered (the loosest matching), plus a margin.
            deadline = time.perf_counter() + drain_s
            while time.perf_counter() < deadline and not reader.done():
                latencies, _ = match_deltas(run.send_s, run.delta_s, theta=0.0)
                if all(value is not None for value in latencies[1:]):
                    await asyncio.sleep(min(0.4, max(0.0, deadline - time.perf_counter())))
                    break
                await asyncio.sleep(0.05)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    client = AsyncOpenAI(
        api_key="bench",
        base_url=f"http://127.0.0.1:{port}/v1",
        websocket_base_url=f"ws://127.0.0.1:{port}/v1",
        max_retries=0,
    )
    try:
        async with asyncio.timeout(timeout_s):
            async with client.realtime.connect(model="moshi", max_retries=0) as conn:
                await session(conn)
    except Exception as exc:  # noqa: BLE001 - one failed client is a result, not a crash
        run.failure = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        ready.set()  # never leave the start barrier waiting on a client that failed
        with contextlib.suppress(Exception):
            await client.close()


async def run_k(
    port: int, k: int, seconds: float, drain_s: float, audio: dict[str, bytes], turn_detection: dict[str, Any] | None
) -> list[ClientRun]:
    frames = round(seconds / FRAME_S)
    runs, plans = [], []
    for i in range(k):
        name = AUDIO_FILES[i % len(AUDIO_FILES)]
        duration = len(audio[name]) / 2 / SAMPLE_RATE
        offset = round((i // len(AUDIO_FILES)) * 1.37 % duration, 2)
        runs.append(
            ClientRun(index=i, audio_file=name, offset_s=offset, phase_s=i * FRAME_S / k, frames_planned=frames)
        )
        plans.append(client_frames(audio[name], offset, frames))
    loop = asyncio.get_running_loop()
    go: asyncio.Future[float] = loop.create_future()
    readies = [asyncio.Event() for _ in range(k)]
    timeout_s = 60 + seconds + drain_s + 30
    tasks = [
        asyncio.create_task(run_client(i, port, runs[i], plans[i], readies[i], go, drain_s, timeout_s, turn_detection))
        for i in range(k)
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in readies)), timeout=60)
    except TimeoutError:
        pass  # the clients not ready by now time out by themselves
    go.set_result(time.perf_counter() + 0.3)
    await asyncio.wait(tasks, timeout=timeout_s + 10)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return runs
