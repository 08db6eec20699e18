"""The playground and OpenAI's own browser transport in a real browser, against a real daphne.

Debian's headless Chromium (driven by Selenium, as tests/test_console_browser.py does) gets a fake
microphone fed from the test speech (`--use-fake-device-for-media-stream
--use-file-for-fake-audio-capture=<wav>`: the weather sentence, then silence for server VAD to end
the turn; Chromium loops the file). The server requires keys (an API key written into its
database) and transcribes the user's speech with a local fake ASR service (tests/asr_server.py), so
that the user's transcript appears too.

- /playground/ over Realtime on a WebSocket and over WebRTC, and over the Live API: audio comes
  back (the page's counters), transcripts appear, the event log shows the session's events, the
  conversation is stored; during the WebRTC call a staff member sees it on /console/.
- @openai/agents-realtime's OpenAIRealtimeWebRTC, changed only in its base URL, connects with an
  ephemeral key minted by the test: a small page (tests/browser/agents_page) bundled with esbuild
  from tests/browser's pinned packages (`npm ci` when node_modules is missing or stale; a failing
  npm fails the test), served from another origin by a tiny static server (the server's CORS).

Screenshots on failure: /tmp/playground-<test>.png.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import sqlite3
import subprocess
import threading
import time
import urllib.request
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from voice.testing.live_server import REPO_ROOT, LiveServer, free_port

from .asr_server import ASRServer
from .chromium import chromium
from .conftest import TIMEOUT
from .console_support import CONSOLE_PERMISSIONS, PASSWORD, create_user
from .e2e_support import STARTUP_TIMEOUT, query_db
from .helpers import read_pcm16

BROWSER_DIR = REPO_ROOT / "tests" / "browser"
API_KEY = "rt-playground-browser-key"
SPEECH = "weather_en_24k.wav"
MIC_RATE = 48000  # what Chromium's fake capture device plays best: 48 kHz, 16-bit, mono
WAIT = 4 * TIMEOUT  # a response on a busy 2-core CPU, with a browser beside the model


# --- the server -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def asr() -> Iterator[ASRServer]:
    with ASRServer() as fake:
        yield fake


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, asr: ASRServer, request: pytest.FixtureRequest
) -> Iterator[LiveServer]:
    env = {
        "REALTIME_OPEN_ENDPOINT": "0",  # keys required, as in production
        "REALTIME_MAX_SESSIONS": "2",
        "RESPONSE_MAX_MS": "1600",
        "ASR_BASE_URL": asr.base_url,
        "ASR_API_KEY": "browser-tests",
        "ASR_MODEL": "ok",  # the fake answers "segment N of M samples"
        "LOG_LEVEL": "INFO",
    }
    live = LiveServer(tmp_path_factory.mktemp("playground-browser"), env)
    failed_before = request.session.testsfailed
    try:
        live.start(STARTUP_TIMEOUT)
        create_user(live, "operator", staff=True, timeout=STARTUP_TIMEOUT, permissions=CONSOLE_PERMISSIONS)
        db = sqlite3.connect(live.db_path, timeout=TIMEOUT)
        try:
            db.execute(
                "INSERT INTO voice_apikey (name, prefix, key_hash, created_at) VALUES (?, ?, ?, datetime('now'))",
                ("playground browser tests", API_KEY[:10], hashlib.sha256(API_KEY.encode()).hexdigest()),
            )
            db.commit()
        finally:
            db.close()
        yield live
    finally:
        live.stop()
        if request.session.testsfailed > failed_before:
            print(f"\n===== daphne log ({live.log_path}) =====\n{live.log(30000)}\n===== end of daphne log =====")


@pytest.fixture(autouse=True)
def server_alive(server: LiveServer) -> None:
    assert server.alive(), f"daphne is not running:\n{server.log()}"


# --- the browser ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_microphone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test speech as Chromium's fake microphone plays it: 48 kHz 16-bit mono WAV, half a second
    of quiet, the sentence, then 3 s of quiet (the file loops: server VAD ends each turn)."""
    speech = np.frombuffer(read_pcm16(SPEECH), dtype="<i2").astype(np.float32) / 32768
    speech = soxr.resample(speech, 24000, MIC_RATE)
    samples = np.concatenate([np.zeros(MIC_RATE // 2), speech, np.zeros(3 * MIC_RATE)])
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    path = tmp_path_factory.mktemp("fake-mic") / "speech-48k.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(MIC_RATE)
        wav.writeframes(pcm)
    return path


def browser_with(microphone: Path | None = None) -> WebDriver:
    """Chromium, with a fake microphone playing ``microphone`` when given."""
    if microphone is None:
        return chromium()
    return chromium(
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}",
        # Chromium's default ICE candidates, as people's browsers send them: with the microphone
        # granted they are addresses (without it, mDNS .local names that nothing resolves here;
        # --disable-features=WebRtcHideLocalIpsWithMdns would show the addresses anyway). On a
        # machine whose only network is loopback (`unshare -n`) Chromium gathers none unless
        # it may use loopback, which the server then offers too (voice/webrtc/ice.py).
        "--allow-loopback-in-peer-connection",
    )


@pytest.fixture
def browser(server: LiveServer, fake_microphone: Path, request: pytest.FixtureRequest) -> Iterator[WebDriver]:
    driver = browser_with(fake_microphone)
    failed_before = request.session.testsfailed
    try:
        yield driver
    finally:
        if request.session.testsfailed > failed_before:
            dump(driver, request.node.name)
        driver.quit()


def dump(driver: WebDriver, name: str) -> None:
    """What a failure needs: a screenshot, the browser's console, the page's event log."""
    try:
        driver.save_screenshot(f"/tmp/playground-{name}.png")
        print(f"--- browser console ({name}) ---", *driver.get_log("browser"), sep="\n")
        rows = driver.execute_script(
            "return Array.from(document.querySelectorAll('#event-log li')).slice(-40)"
            ".map(li => li.dataset.direction + ' ' + li.dataset.type + ' x' + li.dataset.repeat)"
        )
        print("--- event log (last rows) ---", *rows, sep="\n")
        print("--- window.results ---", driver.execute_script("return JSON.stringify(window.results || null)"))
    except Exception as exc:  # noqa: BLE001 - only diagnostics
        print(f"(no browser diagnostics: {exc!r})")


def wait_for(driver: WebDriver, what: str, condition: Callable[[WebDriver], Any], timeout: float = WAIT) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, message=what)


def data(driver: WebDriver, element_id: str, name: str) -> str:
    return driver.find_element(By.ID, element_id).get_attribute(f"data-{name}") or ""


def texts(driver: WebDriver, role: str) -> list[str]:
    return [
        el.get_attribute("textContent") or ""
        for el in driver.find_elements(By.CSS_SELECTOR, f'#transcript li[data-role="{role}"] .text')
    ]


def logged(driver: WebDriver, event_type: str, direction: str = "received") -> bool:
    return bool(
        driver.find_elements(By.CSS_SELECTOR, f'#event-log li[data-type="{event_type}"][data-direction="{direction}"]')
    )


def page_error(driver: WebDriver) -> str:
    el = driver.find_element(By.ID, "playground-error")
    return "" if el.get_attribute("hidden") is not None else (el.get_attribute("textContent") or "")


# --- the playground -------------------------------------------------------------------------------


def connect(driver: WebDriver, server: LiveServer, protocol: str) -> str:
    """Open the playground, pick the protocol, type the key, stream the microphone, connect; the
    session's id once it is active."""
    driver.get(f"{server.http_url}/playground/")
    wait_for(driver, "the page's script", lambda d: data(d, "status", "state") == "idle", TIMEOUT)
    Select(driver.find_element(By.ID, "protocol")).select_by_value(protocol)
    driver.find_element(By.ID, "api-key").send_keys(API_KEY)
    if protocol != "live-ws":
        transcription = driver.find_element(By.ID, "input-transcription")
        if not transcription.is_selected():
            transcription.click()
        assert driver.find_element(By.ID, "turn-detection").is_selected()  # server VAD ends the turns
    driver.find_element(By.ID, "stream-continuously").click()
    driver.find_element(By.ID, "connect").click()
    wait_for(
        driver,
        "an active session",
        lambda d: (
            (data(d, "status", "state") == "error" and f"error: {page_error(d)}")
            or (data(d, "status", "state") == "active" and data(d, "status", "session-id"))
        ),
        3 * TIMEOUT,
    )
    assert data(driver, "status", "state") == "active", page_error(driver)
    return data(driver, "status", "session-id")


def wait_for_a_turn(driver: WebDriver) -> None:
    """Audio back, the user's transcript (the fake ASR's words) and an assistant line, a response done."""
    wait_for(
        driver,
        "audio, transcripts and a response.done",
        lambda d: (
            int(data(d, "audio-received", "bytes") or 0) > 0
            and any(t.startswith("segment ") for t in texts(d, "user"))
            and texts(d, "assistant")
            and logged(d, "response.done")
        ),
    )


def disconnect(driver: WebDriver) -> None:
    driver.find_element(By.ID, "disconnect").click()
    wait_for(driver, "the session closed", lambda d: data(d, "status", "state") == "closed", 2 * TIMEOUT)


def stored(server: LiveServer, session_id: str) -> tuple[sqlite3.Row, list[sqlite3.Row]]:
    """The ended conversation of ``session_id`` in the server's database, with its items."""
    deadline = time.monotonic() + 2 * TIMEOUT
    while True:
        rows = query_db(server.db_path, "SELECT * FROM transcripts_conversation WHERE session_id = ?", session_id)
        if rows and rows[0]["ended_at"] is not None:
            break
        assert time.monotonic() < deadline, f"conversation {session_id} not ended in the database"
        time.sleep(0.2)  # polling the database, bounded by the deadline above
    items = query_db(
        server.db_path,
        "SELECT * FROM transcripts_conversationitem WHERE conversation_id = ? ORDER BY position",
        rows[0]["id"],
    )
    return rows[0], items


def check_stored_realtime(server: LiveServer, session_id: str) -> None:
    conversation, items = stored(server, session_id)
    key_names = query_db(server.db_path, "SELECT name FROM voice_apikey WHERE id = ?", conversation["api_key_id"])
    assert [row["name"] for row in key_names] == ["playground browser tests"]
    roles = [item["role"] for item in items]
    assert "user" in roles and "assistant" in roles, [dict(item) for item in items]
    assert any(item["role"] == "user" and item["text"].startswith("segment ") for item in items), [
        dict(item) for item in items
    ]


def test_playground_realtime_over_websocket(server: LiveServer, browser: WebDriver) -> None:
    session_id = connect(browser, server, "realtime-ws")
    assert session_id.startswith("sess_"), session_id
    wait_for_a_turn(browser)
    assert logged(browser, "session.created") and logged(browser, "session.updated")
    assert logged(browser, "session.update", "sent") and logged(browser, "input_audio_buffer.append", "sent")
    assert int(data(browser, "audio-sent", "bytes")) > 0
    assert float(data(browser, "mic-level", "max")) > 0.3, "the fake microphone's speech did not reach the meter"
    assert int(data(browser, "audio-received", "chunks")) > 0
    wait_for(browser, "the received audio heard", lambda d: int(data(d, "audio-received", "audible-ms") or 0) > 0)
    assert not browser.find_elements(By.CSS_SELECTOR, '#event-log li[data-type="error"]'), page_error(browser)
    disconnect(browser)
    check_stored_realtime(server, session_id)


def test_playground_realtime_over_webrtc_seen_on_the_console(server: LiveServer, browser: WebDriver) -> None:
    session_id = connect(browser, server, "realtime-webrtc")
    call_id = data(browser, "status", "call-id")
    assert call_id, "no call id from the answer's Location"

    # A staff member signs in through the admin's login and sees the call on /console/.
    console = browser_with()
    try:
        console.get(f"{server.http_url}/console/")
        console.find_element(By.ID, "id_username").send_keys("operator")
        console.find_element(By.ID, "id_password").send_keys(PASSWORD)
        console.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        wait_for(console, "the console after login", lambda d: d.current_url.endswith("/console/"), TIMEOUT)
        row = wait_for(
            console,
            "the call's row on the console",
            lambda d: d.find_elements(By.CSS_SELECTOR, f'#sessions tr[data-session-id="{session_id}"]'),
            2 * TIMEOUT,
        )[0]
        assert row.is_displayed()
        console.save_screenshot("/tmp/playground-console.png")
    except BaseException:
        console.save_screenshot("/tmp/playground-console-failed.png")
        raise
    finally:
        console.quit()

    wait_for_a_turn(browser)
    assert logged(browser, "session.created") and logged(browser, "webrtc.answer")
    # WebRTC's counters come from the RTP stats: packets came, and they were sound, not silence.
    wait_for(browser, "audible audio on the track", lambda d: int(data(d, "audio-received", "audible-ms") or 0) > 0)
    assert int(data(browser, "audio-received", "chunks")) > 0
    assert int(data(browser, "audio-sent", "bytes")) > 0
    assert not browser.find_elements(By.CSS_SELECTOR, '#event-log li[data-type="error"]'), page_error(browser)
    disconnect(browser)
    check_stored_realtime(server, session_id)


def test_playground_live_over_websocket(server: LiveServer, browser: WebDriver) -> None:
    session_id = connect(browser, server, "live-ws")
    wait_for(
        browser,
        "Live audio and transcript fragments",
        lambda d: (
            int(data(d, "audio-received", "bytes") or 0) > 0
            and any(t.strip() for t in texts(d, "assistant") + texts(d, "user"))
        ),
    )
    assert logged(browser, "session.started") and logged(browser, "session.output_audio.delta")
    assert logged(browser, "session.start", "sent") and logged(browser, "session.input_audio.append", "sent")
    # The user's speech, cut by the VAD, comes back from the ASR service as input fragments.
    wait_for(browser, "the user's transcript", lambda d: any("segment " in t for t in texts(d, "user")))
    disconnect(browser)
    assert logged(browser, "session.closed")
    _, items = stored(server, session_id)
    assert {"user", "assistant"} <= {item["role"] for item in items}, [dict(item) for item in items]


# --- @openai/agents-realtime ----------------------------------------------------------------------


def npm_ci() -> None:
    """tests/browser's pinned packages in node_modules: `npm ci` unless they match the lock already."""
    lock = BROWSER_DIR / "package-lock.json"
    stamp = BROWSER_DIR / "node_modules" / ".installed-lock.json"
    if stamp.is_file() and stamp.read_bytes() == lock.read_bytes():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is missing: `make test` installs Debian's nodejs and npm", pytrace=False)
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=BROWSER_DIR,
        capture_output=True,
        text=True,
        timeout=240,  # under pytest-timeout's 300 s, so that npm's own output says what hung
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"`npm ci` in {BROWSER_DIR} failed ({result.returncode}): the npm registry must be reachable "
            f"once to install @openai/agents-realtime and esbuild.\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}",
            pytrace=False,
        )
    shutil.copyfile(lock, stamp)


@pytest.fixture(scope="module")
def agents_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The test page bundled with esbuild into a temporary folder, served on another port."""
    npm_ci()
    out = tmp_path_factory.mktemp("agents-page")
    shutil.copyfile(BROWSER_DIR / "agents_page" / "index.html", out / "index.html")
    result = subprocess.run(
        [
            str(BROWSER_DIR / "node_modules" / ".bin" / "esbuild"),
            str(BROWSER_DIR / "agents_page" / "main.js"),
            "--bundle",
            "--format=iife",
            "--log-level=warning",
            f"--outfile={out / 'bundle.js'}",
        ],
        cwd=BROWSER_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"esbuild failed:\n{result.stdout}\n{result.stderr}"

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

    static = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), functools.partial(Quiet, directory=str(out)))
    thread = threading.Thread(target=static.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{static.server_address[1]}/index.html"
    finally:
        static.shutdown()
        static.server_close()


def mint(server: LiveServer) -> str:
    request = urllib.request.Request(
        f"{server.http_url}/v1/realtime/client_secrets",
        data=json.dumps({"session": {"type": "realtime", "model": "gpt-realtime"}}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        secret = json.loads(response.read())
    assert secret["value"].startswith("ek_"), secret
    return secret["value"]


def test_openai_agents_realtime_connects_over_webrtc_by_its_base_url(
    server: LiveServer, browser: WebDriver, agents_page: str
) -> None:
    key = mint(server)
    browser.get(f"{agents_page}?server={server.http_url}&key={key}")

    def results(driver: WebDriver) -> dict[str, Any]:
        return driver.execute_script("return window.results || {}") or {}

    def connected(driver: WebDriver) -> Any:
        got = results(driver)
        if got.get("status") == "failed":
            return f"failed: {got.get('errors')}"
        return got.get("connected") and got

    got = wait_for(browser, "the SDK's session connected", connected, 3 * TIMEOUT)
    assert isinstance(got, dict), got
    assert got.get("status") == "connected", got.get("errors")
    assert got["callId"], "the SDK read no call id from Location (CORS must expose it)"
    assert "session.created" in got["events"] and "session.updated" in got["events"], got["events"][:10]

    # The fake microphone's sentence ends in silence: server VAD ends the turn, Moshi answers.
    def answered(driver: WebDriver) -> Any:
        got = results(driver)
        assistant = [item for item in got.get("history", []) if item["role"] == "assistant"]
        return ("response.done" in got.get("events", []) and assistant and got.get("audibleMs", 0) > 0 and got) or (
            got.get("errors") and f"errors: {got['errors']}"
        )

    got = wait_for(browser, "a response heard, in the SDK's history", answered)
    assert isinstance(got, dict), got
    assert not got["errors"], got["errors"]
    assert got["track"] and got["maxRms"] > 0.003
    assert "input_audio_buffer.speech_started" in got["events"], got["events"][:30]
    user = [item for item in got["history"] if item["role"] == "user"]
    assert user, got["history"]
    # WebRTC's playback events, which the SDK turns into audio_start / audio_stopped.
    assert "output_audio_buffer.started" in got["events"], got["events"][:30]
    wait_for(browser, "output_audio_buffer.stopped", lambda d: "output_audio_buffer.stopped" in results(d)["events"])
    browser.execute_script("window.session.close()")
    conversation, items = stored(server, got["sessionId"])
    assert conversation["dialect"] == "ga"
    assert "assistant" in [item["role"] for item in items], [dict(item) for item in items]
