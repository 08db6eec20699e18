"""The consumer on the demo checkpoint, driven in-process through WebsocketCommunicator."""

from __future__ import annotations

import pytest

from voice.protocol import Dialect

from .helpers import append_events, connected, read_pcm16

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("model_manager")]


@pytest.mark.parametrize("dialect", [Dialect.GA, Dialect.BETA])
async def test_speech_in_gives_a_full_response_out(dialect: Dialect) -> None:
    async with connected(dialect) as client:
        for event in append_events(read_pcm16("weather_en_24k.wav")):
            await client.send(event)
        events = await client.recv_until("response.done")
        types = [e["type"] for e in events]
        audio_delta = "response.output_audio.delta" if dialect is Dialect.GA else "response.audio.delta"
        first_delta = types.index(audio_delta)
        for opener in ("response.created", "response.output_item.added", "response.content_part.added"):
            assert types.index(opener) < first_delta
        assert events[-1]["response"]["status"] in {"completed", "incomplete"}
