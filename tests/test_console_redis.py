"""One console over two daphne processes that share one Redis channel layer and one database.

Both servers are real processes (REDIS_URL set, one SQLite file); a Realtime session runs on each,
the console is opened on the first only, and it must list both, see a session that starts later on
the second, and end that one across the process boundary. Redis is the session's (conftest's
redis_url: TEST_REDIS_URL or a throwaway server); the test never skips for lack of one.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import websockets

from voice.testing.live_server import LiveServer

from .conftest import TIMEOUT
from .console_support import CONSOLE_PERMISSIONS, admin_login, create_user

STARTUP_TIMEOUT = 6 * TIMEOUT  # migrate + first load of the model on a busy 2-core CPU
Message = dict[str, Any]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[tuple[LiveServer, LiveServer]]:
    shared = tmp_path_factory.mktemp("console-redis")
    env = {
        # A database index of its own, so a developer's Redis data in db 0 is neither seen nor touched.
        "REDIS_URL": f"{redis_url}/11",
        "DATABASE_URL": f"sqlite:///{shared / 'shared.sqlite3'}",
        "DEMO_CHECKPOINT_DIR": str(shared / "demo-checkpoint"),
        "DJANGO_DEBUG": "1",  # the Realtime endpoint open, as in development
        "REALTIME_MAX_SESSIONS": "2",
    }
    first = LiveServer(shared / "a", env)
    second = LiveServer(shared / "b", env)
    for live in (first, second):
        live.workdir.mkdir()
    try:
        first.start(STARTUP_TIMEOUT)  # one after the other: both migrate the one database
        second.start(STARTUP_TIMEOUT)
        create_user(first, "operator", staff=True, timeout=STARTUP_TIMEOUT, permissions=CONSOLE_PERMISSIONS)
        yield first, second
    except BaseException:
        for live in (first, second):
            print(f"--- daphne on port {live.port} ---\n{live.log()}")
        raise
    finally:
        first.stop()
        second.stop()


@asynccontextmanager
async def realtime_session(live: LiveServer) -> AsyncIterator[tuple[Any, str]]:
    """A plain WebSocket Realtime client; yields it and its session id."""
    async with websockets.connect(f"{live.ws_url}/v1/realtime?model=gpt-realtime", open_timeout=TIMEOUT) as socket:
        created = json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))
        assert created["type"] == "session.created"
        yield socket, created["session"]["id"]


class Console:
    def __init__(self, socket: Any) -> None:
        self.socket = socket
        self.listed: dict[str, Message] = {}
        self.gone: dict[str, Message] = {}

    async def until(self, done: Any, what: str) -> None:
        """Read the console's feed until ``done()`` holds; fail with ``what`` after TIMEOUT."""
        deadline = time.monotonic() + TIMEOUT
        while not done():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{what}: the console listed {sorted(self.listed)}, gone {sorted(self.gone)}"
            message = json.loads(await asyncio.wait_for(self.socket.recv(), remaining))
            if message["type"] == "session":
                self.listed[message["session"]["session_id"]] = message["session"]
            elif message["type"] == "session_gone":
                self.listed.pop(message["session_id"], None)
                self.gone[message["session_id"]] = message


async def test_one_console_shows_and_ends_the_sessions_of_two_processes(servers: tuple[LiveServer, LiveServer]) -> None:
    first, second = servers
    cookie, page = await asyncio.to_thread(admin_login, first, "operator", TIMEOUT)
    assert "/static/console/console.js" in page

    async with realtime_session(first) as (_, on_first), realtime_session(second) as (_, on_second):
        headers = {"Cookie": cookie}
        async with websockets.connect(
            f"{first.ws_url}/console/live", additional_headers=headers, origin=first.http_url, open_timeout=TIMEOUT
        ) as socket:
            console = Console(socket)
            # Sessions that were live before the console opened answer its roll call, from both processes.
            await console.until(lambda: {on_first, on_second} <= set(console.listed), "both sessions listed")
            assert console.listed[on_first]["server"].endswith(f":{first.process.pid}")
            assert console.listed[on_second]["server"].endswith(f":{second.process.pid}")

            # A session that starts later on the other process appears live, and ends from here.
            async with realtime_session(second) as (client, later):
                await console.until(lambda: later in console.listed, "a new session on the second process")
                await socket.send(json.dumps({"action": "end", "session_id": later}))
                error = json.loads(await asyncio.wait_for(client.recv(), TIMEOUT))
                assert error["type"] == "error" and error["error"]["code"] == "session_ended_by_staff"
                await asyncio.wait_for(client.wait_closed(), TIMEOUT)
                assert client.close_code == 1000
            await console.until(lambda: later in console.gone, "the ended session removed")
            assert console.gone[later]["reason"] == "ended_by_staff"
            assert {on_first, on_second} <= set(console.listed)

    # The end was recorded, by whom, in the one shared database: the session's last write, which
    # follows its removal from the consoles, so it is waited for.
    db = Path(first.env["DATABASE_URL"].removeprefix("sqlite:///"))
    deadline = time.monotonic() + TIMEOUT
    while True:
        with sqlite3.connect(db) as connection:
            row = connection.execute(
                "SELECT c.end_reason, c.ended_at, u.username FROM transcripts_conversation c "
                "JOIN auth_user u ON u.id = c.ended_by_id WHERE c.session_id = ?",
                (later,),
            ).fetchone()
        if row is not None or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)  # polling the database, bounded by the deadline above
    assert row is not None, "the staff end was not stored"
    reason, ended_at, username = row
    assert (reason, username) == ("ended_by_staff", "operator") and ended_at
