"""The runtime on the wire, against a real daphne: SIGTERM, and a client that stops reading.

Both points depend on daphne itself (its shutdown cancels every application; it buffers output
that a client does not read), so they are checked over TCP as a client would see them.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import websockets

from voice.protocol import Dialect
from voice.testing.live_server import LiveServer

from .conftest import TIMEOUT
from .e2e_support import live_server_fixture
from .strict import strict

METRICS_TOKEN = "runtime-test-metrics"
BIG_TEXT_BYTES = 512 * 1024
BASE_ENV = {
    "DJANGO_SECRET_KEY": "runtime-live-tests",
    "REALTIME_OPEN_ENDPOINT": "1",
    "REALTIME_METRICS_TOKEN": METRICS_TOKEN,
    "REALTIME_MAX_UNSENT_BYTES": str(2 * 1024 * 1024),
    "REALTIME_MAX_ITEM_TEXT_BYTES": str(BIG_TEXT_BYTES * 2),
    "REALTIME_SHUTDOWN_GRACE_S": "5",
}


server = live_server_fixture("runtime", BASE_ENV)


def metrics(server: LiveServer) -> str:
    request = urllib.request.Request(f"{server.http_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def conversations(db_path: Path) -> list[tuple[str, str | None, int]]:
    with sqlite3.connect(db_path) as db:
        return db.execute(
            "SELECT c.end_reason, c.ended_at, (SELECT COUNT(*) FROM transcripts_conversationitem i"
            " WHERE i.conversation_id = c.id) FROM transcripts_conversation c ORDER BY c.id"
        ).fetchall()


async def recv(ws: Any) -> dict[str, Any]:
    event = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    strict(event, Dialect.GA)
    return event


async def test_a_client_that_stops_reading_is_dropped_and_gives_its_slot_back(server: LiveServer) -> None:
    """Small retrieves of a big item, never read: the server must not buffer without bound."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no kernel autotuning to hide in
    sock.connect(("127.0.0.1", server.port))
    async with websockets.connect(f"{server.ws_url}/v1/realtime", sock=sock, max_queue=1, max_size=None) as ws:
        assert (await recv(ws))["type"] == "session.created"
        item = {
            "id": "big",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "x" * BIG_TEXT_BYTES}],
        }
        await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        assert (await recv(ws))["type"] == "conversation.item.added"
        # From here on the client reads nothing: each retrieve answers with half a megabyte.
        sent = 0
        with pytest.raises(websockets.ConnectionClosed):
            for _ in range(400):
                await ws.send(json.dumps({"type": "conversation.item.retrieve", "item_id": "big"}))
                sent += 1
                await asyncio.sleep(0.01)
            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
            for _ in range(10_000):  # drain what the kernel held until the reset shows
                await asyncio.wait_for(ws.recv(), TIMEOUT)
    # Well under the 200 MB the retrieves asked for: the connection went at 2 MB unsent.
    assert sent < 400
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while True:
        text = await asyncio.to_thread(metrics, server)
        ended = metric(text, 'realtime_sessions_ended_total{reason="client_not_reading"}')
        if ended == 1.0 and metric(text, 'realtime_slots{model_type="sft",state="in_use"}') == 0.0:
            break
        assert asyncio.get_running_loop().time() < deadline, text
        await asyncio.sleep(0.1)  # polling the server's metrics, bounded by the deadline above
    assert metric(text, "realtime_sessions_live") == 0.0
    assert conversations(server.db_path)[-1][0] == "client_not_reading"


async def test_sigterm_tells_live_sessions_stores_them_and_closes_going_away(tmp_path: Path) -> None:
    live = LiveServer(tmp_path, BASE_ENV)
    live.start(timeout=TIMEOUT * 6)
    try:
        async with websockets.connect(f"{live.ws_url}/v1/realtime") as ws:
            assert (await recv(ws))["type"] == "session.created"
            item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Remember me."}]}
            await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
            assert (await recv(ws))["type"] == "conversation.item.added"
            assert (await recv(ws))["type"] == "conversation.item.done"
            assert live.process is not None
            started = asyncio.get_running_loop().time()
            live.process.send_signal(signal.SIGTERM)
            error = await recv(ws)
            assert error["type"] == "error" and error["error"]["code"] == "server_shutting_down"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        returncode = await asyncio.to_thread(live.process.wait, TIMEOUT)
        # Within the grace period (5 s) plus daphne's own start of shutdown, not the 15 s SIGKILL.
        assert asyncio.get_running_loop().time() - started < 5 + TIMEOUT / 2, live.log()
        assert returncode == 0, live.log()
    finally:
        live.stop()
    [(reason, ended_at, items)] = conversations(live.db_path)
    assert (reason, ended_at is not None, items) == ("server_shutdown", True, 1)
