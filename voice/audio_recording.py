"""Recording a session's input and output audio to WAV files, when VOICE["RECORD_AUDIO"] is on.

Two tracks on one clock: the client's audio as it was processed, frame by frame, and what the
server sent back for each of those frames (silence outside responses), so the two line up when
played side by side. Samples gather in memory for a few seconds and are appended to temporary
files off the event loop; at the end both files become WAVs saved through Django's storage API.
Memory per session stays bounded by the flush size, whatever the call's length.
"""

from __future__ import annotations

import asyncio
import tempfile
import wave
from pathlib import Path

import numpy as np
from django.core.files import File
from django.core.files.storage import default_storage

SAMPLE_RATE = 24000
FLUSH_SAMPLES = SAMPLE_RATE * 5


class SessionAudioRecorder:
    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self._dir = Path(tempfile.mkdtemp(prefix="realtime-rec-"))
        self._pending: dict[str, list[np.ndarray]] = {"input": [], "output": []}
        self._pending_samples = 0
        self._flush: asyncio.Task[None] | None = None

    def add_frame(self, client_audio: np.ndarray, sent_audio: np.ndarray | None) -> None:
        """One processed frame: the client's samples and what was sent back for them (or silence)."""
        self._pending["input"].append(client_audio)
        self._pending["output"].append(sent_audio if sent_audio is not None else np.zeros_like(client_audio))
        self._pending_samples += client_audio.size
        if self._pending_samples >= FLUSH_SAMPLES and (self._flush is None or self._flush.done()):
            self._flush = asyncio.create_task(asyncio.to_thread(self._write_pending, self._take_pending()))

    async def finish(self) -> dict[str, str]:
        """Write what is left, turn both tracks into WAVs in storage; returns their storage names."""
        if self._flush is not None:
            await self._flush
        await asyncio.to_thread(self._write_pending, self._take_pending())
        return await asyncio.to_thread(self._save)

    def _take_pending(self) -> dict[str, np.ndarray]:
        taken = {
            track: np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
            for track, chunks in self._pending.items()
        }
        self._pending = {"input": [], "output": []}
        self._pending_samples = 0
        return taken

    def _write_pending(self, tracks: dict[str, np.ndarray]) -> None:
        for track, samples in tracks.items():
            with open(self._dir / f"{track}.pcm", "ab") as raw:
                raw.write((np.clip(samples, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes())

    def _save(self) -> dict[str, str]:
        names = {}
        for track in ("input", "output"):
            raw = self._dir / f"{track}.pcm"
            wav_path = self._dir / f"{track}.wav"
            with wave.open(str(wav_path), "wb") as wav:
                wav.setnchannels(1)
                wav.setsampwidth(2)
                wav.setframerate(SAMPLE_RATE)
                if raw.exists():
                    with open(raw, "rb") as pcm:
                        while chunk := pcm.read(1 << 20):  # a megabyte at a time: calls can be long
                            wav.writeframes(chunk)
            with open(wav_path, "rb") as handle:
                names[track] = default_storage.save(f"recordings/{self.session_id}-{track}.wav", File(handle))
        for leftover in self._dir.iterdir():
            leftover.unlink()
        self._dir.rmdir()
        return names
