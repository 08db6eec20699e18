"""The console in a real browser: Debian's headless Chromium driven by Selenium against a real daphne.

A staff member signs in through the admin's login page and opens /console/; a caller talks to the
server with the official openai SDK, streaming speech and then silence in real time; the session
appears, the staff member follows it and watches the assistant's transcript arrive, then ends it:
the caller's SDK gets the error event and its connection ends quietly, and the row goes. A
non-staff user never gets past the login page, and a staff member without the console's
permissions sees the list with no End button. Screenshots: /tmp/console.png (following the call)
and /tmp/console-ended.png (after the end).

Chromium and chromedriver come from Debian (`make test` installs them when missing); Selenium is
pointed at both, so Selenium Manager never runs and nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import base64
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from voice.testing.live_server import LiveServer

from .chromium import chromium
from .conftest import TIMEOUT
from .console_support import CONSOLE_PERMISSIONS, PASSWORD, create_user
from .helpers import read_pcm16

SCREENSHOT = Path("/tmp/console.png")
STARTUP_TIMEOUT = 6 * TIMEOUT  # migrate + first load of the model on a busy 2-core CPU
SPEECH = "weather_en_24k.wav"
CHUNK_BYTES = 4800  # 100 ms of 24 kHz pcm16
SERVER_ENV = {"RESPONSE_MAX_MS": "1600", "REALTIME_MAX_SESSIONS": "2"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("console-browser"), SERVER_ENV)
    try:
        live.start(STARTUP_TIMEOUT)
        create_user(live, "operator", staff=True, timeout=STARTUP_TIMEOUT, permissions=CONSOLE_PERMISSIONS)
        create_user(live, "visitor", staff=False, timeout=STARTUP_TIMEOUT)
        create_user(live, "newcomer", staff=True, timeout=STARTUP_TIMEOUT)  # staff, no console permissions
        yield live
    except BaseException:
        print(f"--- daphne log ---\n{live.log()}")
        raise
    finally:
        live.stop()


@pytest.fixture
def browser(server: LiveServer) -> Iterator[WebDriver]:
    driver = chromium()
    try:
        yield driver
    except BaseException:
        print("--- browser console ---", *driver.get_log("browser"), sep="\n")
        print(f"--- daphne log ---\n{server.log(6000)}")
        raise
    finally:
        driver.quit()


def sign_in(driver: WebDriver, live: LiveServer, username: str) -> None:
    """Through the admin's login form, exactly as a person would."""
    driver.get(f"{live.http_url}/console/")
    assert "/admin/login/" in driver.current_url  # anonymous: sent to the login page
    driver.find_element(By.ID, "id_username").send_keys(username)
    driver.find_element(By.ID, "id_password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()


def wait_for(driver: WebDriver, what: str, condition: Any, timeout: float = 3 * TIMEOUT) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message=what)


class Caller(threading.Thread):
    """An openai SDK client streaming speech, then silence, in real time, like a microphone.

    It runs its own event loop in a thread while Selenium, which is synchronous, drives the browser.
    It stops when the server ends the session (the SDK's `async for` ends quietly on a 1000 close).
    """

    def __init__(self, live: LiveServer, max_seconds: float) -> None:
        super().__init__(name="sdk-caller", daemon=True)
        self.live = live
        self.max_seconds = max_seconds
        self.events: list[dict[str, Any]] = []
        self.session_id: str | None = None
        self.connected = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._call())
        except BaseException as exc:  # noqa: BLE001 - handed to the test, which fails with it
            self.failure = exc

    async def _call(self) -> None:
        client = AsyncOpenAI(
            api_key="unused", base_url=f"{self.live.http_url}/v1", websocket_base_url=f"{self.live.ws_url}/v1"
        )
        async with client, client.realtime.connect(model="gpt-realtime") as conn:
            microphone = asyncio.create_task(self._microphone(conn))
            try:
                async with asyncio.timeout(self.max_seconds):
                    async for event in conn:
                        self.events.append(event.to_dict())
                        if event.type == "session.created":
                            self.session_id = event.session.id
                            self.connected.set()
            finally:
                microphone.cancel()

    async def _microphone(self, conn: Any) -> None:
        # The question, then 3 s of quiet, over and over: the demo model samples random text, and a
        # short response may hold none, so the caller keeps asking until the session ends.
        pcm = read_pcm16(SPEECH) + bytes(CHUNK_BYTES * 30)
        try:
            while True:
                for i in range(0, len(pcm), CHUNK_BYTES):
                    await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + CHUNK_BYTES]).decode())
                    await asyncio.sleep(0.1)
        except Exception:  # noqa: BLE001 - the connection closed under the microphone: the call is over
            return


def row_selector(session_id: str) -> str:
    return f'#sessions tr[data-session-id="{session_id}"]'


def test_staff_watch_a_live_call_and_end_it_in_the_browser(server: LiveServer, browser: WebDriver) -> None:
    sign_in(browser, server, "operator")
    wait_for(browser, "the console page after login", lambda d: d.current_url.endswith("/console/"))
    wait_for(browser, "the console's live connection", lambda d: d.find_element(By.ID, "connection").text == "live")
    assert browser.find_element(By.ID, "empty").is_displayed()

    caller = Caller(server, max_seconds=12 * TIMEOUT)
    caller.start()
    assert caller.connected.wait(TIMEOUT), f"the SDK did not connect: {caller.failure!r}"
    session_id = caller.session_id
    assert session_id

    # The session appears in the list, with no page reload.
    row = wait_for(browser, "the session's row", lambda d: d.find_elements(By.CSS_SELECTOR, row_selector(session_id)))[
        0
    ]
    cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
    assert cells[0] == session_id and cells[4] == "(open endpoint)" and cells[5] == "sft"
    assert cells[6] in {"0", "1"} and cells[7] in {"listening", "responding"}
    assert cells[3].startswith("127.0.0.1:")

    # Followed: the assistant's transcript streams in, with levels and the frame latency.
    row.click()
    wait_for(browser, "the detail panel", lambda d: d.find_element(By.ID, "detail").is_displayed())
    assert browser.find_element(By.ID, "detail-id").text == session_id

    def assistant_text(driver: WebDriver) -> str | bool:
        turns = driver.find_elements(By.CSS_SELECTOR, "#transcript li.assistant .text:not(.placeholder)")
        text = turns[-1].text if turns else ""
        return text or False

    shown = wait_for(browser, "the assistant's transcript", assistant_text)
    wait_for(browser, "a frame latency", lambda d: d.find_element(By.ID, "latency").text.endswith(" ms"))
    for meter in ("input-db", "output-db"):  # the mic carries digital silence by now
        assert re.fullmatch(r"silent|-?\d+\.\d dBFS", browser.find_element(By.ID, meter).text), meter
    assert browser.find_elements(By.CSS_SELECTOR, "#transcript li.user")  # the user's turn (no ASR: no text)
    browser.save_screenshot(str(SCREENSHOT))

    # Ended by the staff member: the caller is told, its SDK loop ends quietly, the row goes.
    browser.find_element(By.ID, "end-session").click()
    caller.join(3 * TIMEOUT)
    assert not caller.is_alive(), "the caller's session did not end"
    assert caller.failure is None, f"the SDK raised instead of ending quietly: {caller.failure!r}"
    assert caller.events[-1]["type"] == "error", [e["type"] for e in caller.events[-8:]]
    assert caller.events[-1]["error"]["code"] == "session_ended_by_staff"
    said = "".join(e["delta"] for e in caller.events if e["type"] == "response.output_audio_transcript.delta")
    assert shown.strip() in said.replace("\n", " ") or shown.strip() in said, (shown, said)
    wait_for(browser, "the row removed", lambda d: not d.find_elements(By.CSS_SELECTOR, row_selector(session_id)))
    assert "ended_by_staff" in browser.find_element(By.ID, "detail-ended").text
    assert browser.find_element(By.ID, "empty").is_displayed()
    browser.save_screenshot(str(SCREENSHOT.with_name("console-ended.png")))


def test_a_non_staff_user_never_reaches_the_console(server: LiveServer, browser: WebDriver) -> None:
    sign_in(browser, server, "visitor")
    # The admin's form takes staff accounts only: the visitor stays on the login page, told why.
    wait_for(browser, "the login error", lambda d: d.find_elements(By.CSS_SELECTOR, ".errornote"))
    browser.get(f"{server.http_url}/console/")
    assert "/admin/login/" in browser.current_url
    assert not browser.find_elements(By.ID, "sessions")


def test_staff_without_the_permissions_see_the_list_without_follow_or_end(
    server: LiveServer, browser: WebDriver
) -> None:
    sign_in(browser, server, "newcomer")
    wait_for(browser, "the console page after login", lambda d: d.current_url.endswith("/console/"))
    wait_for(browser, "the console's live connection", lambda d: d.find_element(By.ID, "connection").text == "live")
    assert not browser.find_elements(By.ID, "end-session")
    assert "permission" in browser.find_element(By.CSS_SELECTOR, ".notice").text
