"""The playground page (/playground/): it renders with the ids the browser tests drive, its static files
are the project's own (served with DEBUG off, and collected by collectstatic), nothing in it points to
another host, the demo checkpoint's noise is said plainly, staff and anonymous visitors see what is
theirs, and the way the page passes its key (the subprotocol, with `realtime` offered beside it) is
accepted by both WebSocket endpoints."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client as DjangoClient

from voice import playground
from voice.engine.demo_checkpoint import DEMO_NAME
from voice.models import ApiKey, ClientSecret
from voice.webrtc import secrets

from .conftest import TIMEOUT

STATIC_FILES = ("voice/playground.js", "voice/playground.css")
# The contract with the browser tests (issue 15, point 3): every one of these is on the page.
IDS = (
    "protocol",
    "api-key",
    "connect",
    "disconnect",
    "push-to-talk",
    "stream-continuously",
    "status",
    "transcript",
    "event-log",
    "mic-level",
    "output-level",
    "audio-received",
    "audio-sent",
    "demo-notice",
    "instructions",
    "turn-detection",
    "input-transcription",
    "live-model",
    "remote-audio",
)
PROTOCOLS = {"realtime-webrtc", "realtime-ws", "live-ws"}
# Any absolute http(s) URL; the page and its scripts name paths on their own host only.
ABSOLUTE_URL = re.compile(rb"https?://", re.IGNORECASE)


class Elements(HTMLParser):
    """Every element's attributes by id, and the <option> values of each <select>."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str | None]] = {}
        self.options: dict[str, list[str]] = {}
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if attributes.get("id"):
            assert attributes["id"] not in self.by_id, f"duplicate id {attributes['id']}"
            self.by_id[str(attributes["id"])] = {"tag": tag, **attributes}
        if tag == "select":
            self._select = attributes.get("id")
            self.options[str(self._select)] = []
        elif tag == "option" and self._select:
            self.options[self._select].append(str(attributes.get("value")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


class FakeManager:
    """What the page reads of the model manager: whether it is ready, and each model type's name."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.ready = True

    def model_names(self) -> dict[str, str]:
        return dict(self.names)


@pytest.fixture
def demo_loaded(monkeypatch):
    monkeypatch.setattr(playground, "get_manager", lambda: FakeManager({"sft": DEMO_NAME}))


@pytest.fixture
def real_model_loaded(monkeypatch):
    monkeypatch.setattr(playground, "get_manager", lambda: FakeManager({"sft": "kyutai/moshiko-pytorch-bf16"}))


@pytest.fixture
def keys_required(settings):
    settings.VOICE = {**settings.VOICE, "OPEN_ENDPOINT": "0"}


def parse(html: str) -> Elements:
    elements = Elements()
    elements.feed(html)
    return elements


def served(client, url: str) -> bytes:
    response = client.get(url)
    assert response.status_code == 200, url
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.mark.django_db
def test_the_page_renders_with_the_ids_the_browser_tests_use(client, demo_loaded, settings) -> None:
    assert not settings.DEBUG  # as deployed: static files through whitenoise, not runserver
    page = client.get("/playground/")
    assert page.status_code == 200
    elements = parse(page.content.decode())
    missing = [name for name in IDS if name not in elements.by_id]
    assert not missing, f"missing ids: {missing}"
    assert set(elements.options["protocol"]) == PROTOCOLS
    assert elements.by_id["mic-level"]["tag"] == elements.by_id["output-level"]["tag"] == "meter"
    assert elements.by_id["audio-received"]["data-bytes"] == "0" and elements.by_id["audio-received"]["data-ms"] == "0"
    assert elements.by_id["status"]["data-state"] == "idle"
    assert elements.by_id["transcript"]["tag"] == elements.by_id["event-log"]["tag"] == "ol"
    assert elements.by_id["stream-continuously"]["type"] == "checkbox"
    assert elements.by_id["api-key"]["type"] == "password"  # a key typed in is not shown on screen
    assert {"gpt-live-1", "gpt-live-1.1", DEMO_NAME} <= set(elements.options["live-model"])
    body = elements.by_id["playground"]
    assert body["data-realtime-path"] == "/v1/realtime" and body["data-live-path"] == "/v1/live/sessions"
    assert body["data-calls-path"] == "/v1/realtime/calls"


@pytest.mark.django_db
def test_the_page_and_its_static_files_are_local_with_debug_off(client, demo_loaded) -> None:
    html = client.get("/playground/").content
    for path in STATIC_FILES:
        assert f"/static/{path}".encode() in html
        assert not ABSOLUTE_URL.search(served(client, f"/static/{path}")), path  # no CDN, no other host
    assert not ABSOLUTE_URL.search(html)
    assert not re.search(rb"""(src|href)=["']//""", html)  # nor a scheme-relative one


def test_collectstatic_gathers_the_playground_files(tmp_path: Path, settings) -> None:
    """For a deployment that serves collected files from another server (DJANGO_STATIC_ROOT)."""
    settings.STATIC_ROOT = str(tmp_path)
    call_command("collectstatic", interactive=False, verbosity=0)
    for path in STATIC_FILES:
        collected = tmp_path / path
        assert collected.is_file() and not ABSOLUTE_URL.search(collected.read_bytes())


@pytest.mark.django_db
def test_the_demo_checkpoint_is_said_to_be_noise(client, demo_loaded) -> None:
    html = client.get("/playground/").content.decode()
    notice = parse(html).by_id["demo-notice"]
    assert "hidden" not in notice and notice["data-demo"] == "1"
    text = re.search(r'<p id="demo-notice".*?</p>', html, re.DOTALL)
    assert text and "noise" in text.group(0) and "random weights" in text.group(0) and DEMO_NAME in text.group(0)


@pytest.mark.django_db
def test_a_real_checkpoint_gets_no_noise_notice(client, real_model_loaded) -> None:
    html = client.get("/playground/").content.decode()
    notice = parse(html).by_id["demo-notice"]
    assert "hidden" in notice and notice["data-demo"] == "0"  # the script shows it if a session says demo
    assert parse(html).by_id["playground"]["data-demo"] == "0"
    assert "kyutai/moshiko-pytorch-bf16" in html


@pytest.mark.django_db
def test_without_a_model_the_page_says_so(client, monkeypatch) -> None:
    monkeypatch.setattr(playground, "get_manager", lambda: None)
    html = client.get("/playground/").content.decode()
    assert "No model is loaded" in html and 'data-demo="0"' in html


@pytest.mark.django_db
def test_anonymous_visitors_get_the_page_with_a_key_field_and_no_staff_links(
    client, demo_loaded, keys_required
) -> None:
    page = client.get("/playground/")
    assert page.status_code == 200  # anyone holding a key may use it; the endpoints check the key
    html = page.content.decode()
    elements = parse(html)
    assert (
        elements.by_id["playground"]["data-staff"] == "0" and elements.by_id["playground"]["data-open-endpoint"] == "0"
    )
    assert "/console/" not in html and "/admin/voice/apikey/add/" not in html
    assert "Paste the API key you were given" in html
    assert "mint-key" not in elements.by_id and "csrfmiddlewaretoken" not in html


@pytest.mark.django_db
def test_staff_get_links_to_the_console_and_to_making_a_key(client, demo_loaded, keys_required) -> None:
    ApiKey.issue(name="someone's key")
    staff = User.objects.create_user("operator", password="pw-for-tests", is_staff=True)
    client.force_login(staff)
    html = client.get("/playground/").content.decode()
    elements = parse(html)
    assert elements.by_id["playground"]["data-staff"] == "1"
    assert 'href="/console/"' in html and 'href="/admin/voice/apikey/add/"' in html and "operator" in html
    assert not re.search(r"(rt-|ek_)[A-Za-z0-9_-]{20,}", html)  # no key is ever written into the page
    assert elements.by_id["mint-key"]["data-mint-url"] == "/playground/secret"


@pytest.mark.django_db
def test_signed_in_non_staff_are_treated_as_anonymous(client, demo_loaded, keys_required) -> None:
    client.force_login(User.objects.create_user("visitor", password="pw-for-tests"))
    html = client.get("/playground/").content.decode()
    assert parse(html).by_id["playground"]["data-staff"] == "0" and "/console/" not in html


@pytest.mark.django_db
def test_an_open_endpoint_says_no_key_is_needed(client, demo_loaded) -> None:
    html = client.get("/playground/").content.decode()  # the tests' endpoint is open (TEST_VOICE)
    assert parse(html).by_id["playground"]["data-open-endpoint"] == "1" and "no key is needed" in html


@pytest.mark.django_db
def test_the_landing_page_links_to_the_playground(client, demo_loaded) -> None:
    html = client.get("/").content.decode()
    assert 'href="/playground/"' in html


# --- a short-lived key for staff -------------------------------------------------------------------


def mint(client, **extra):
    return client.post("/playground/secret", **extra)


@pytest.mark.django_db
def test_staff_mint_a_short_lived_webrtc_key_with_their_session(client, keys_required) -> None:
    staff = User.objects.create_user("operator", password="pw-for-tests", is_staff=True)
    client.force_login(staff)
    response = mint(client)
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    body = response.json()
    assert body["value"].startswith("ek_") and body["api_key"] == "playground: operator"
    lifetime = body["expires_at"] - ClientSecret.objects.get().created_at.timestamp()
    assert secrets.DEFAULT_SECONDS - 2 <= lifetime <= secrets.DEFAULT_SECONDS + 1
    # It stands for the staff member's own playground key, whose value was never shown to anyone.
    parent = ApiKey.objects.get(name="playground: operator")
    assert parent.created_by == staff
    resolved = async_to_sync(secrets.resolve)(body["value"])
    assert resolved is not None and resolved.api_key == {"id": parent.pk, "name": "playground: operator"}
    # A second one reuses that key; revoking it in the admin ends both.
    second = mint(client).json()["value"]
    assert ApiKey.objects.filter(name__startswith="playground: ").count() == 1
    parent.revoke()
    assert async_to_sync(secrets.resolve)(second) is None and async_to_sync(secrets.resolve)(body["value"]) is None
    assert mint(client).json()["api_key"] == "playground: operator"  # a fresh key after the revocation
    assert ApiKey.objects.active().filter(name="playground: operator").count() == 1


@pytest.mark.django_db
def test_only_staff_may_mint_and_only_by_a_csrf_checked_post(client) -> None:
    assert mint(client).status_code == 302  # anonymous: to the login page
    client.force_login(User.objects.create_user("visitor", password="pw-for-tests"))
    assert mint(client).status_code == 403
    staff = User.objects.create_user("operator", password="pw-for-tests", is_staff=True)
    client.force_login(staff)
    assert client.get("/playground/secret").status_code == 405
    strict = DjangoClient(enforce_csrf_checks=True)
    strict.force_login(staff)
    assert mint(strict).status_code == 403  # another site's form cannot mint one with the cookie
    page = strict.get("/playground/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    assert mint(strict, headers={"X-CSRFToken": token}).status_code == 200  # as playground.js sends it
    assert ClientSecret.objects.count() == 1


# --- the page's way of passing its key, on both WebSocket endpoints ------------------------------------


@database_sync_to_async
def issue_key() -> str:
    return ApiKey.issue(name="playground")[1]


async def browser_socket(path: str, key: str) -> WebsocketCommunicator:
    """As playground.js opens it: `realtime` and the key as subprotocols, from the server's own origin."""
    from realtime_project.asgi import application

    return WebsocketCommunicator(
        application,
        path,
        headers=[(b"host", b"localhost:8000"), (b"origin", b"http://localhost:8000")],
        subprotocols=["realtime", f"openai-insecure-api-key.{key}"],
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("model_manager", "keys_required")
async def test_the_pages_subprotocols_open_both_websocket_endpoints() -> None:
    key = await issue_key()

    realtime = await browser_socket("/v1/realtime?model=gpt-realtime", key)
    connected, subprotocol = await realtime.connect(timeout=TIMEOUT)
    assert connected and subprotocol == "realtime"  # a browser fails a handshake that chose none
    assert json.loads(await realtime.receive_from(timeout=TIMEOUT))["type"] == "session.created"
    await realtime.disconnect()

    live = await browser_socket("/v1/live/sessions", key)
    connected, subprotocol = await live.connect(timeout=TIMEOUT)
    assert connected and subprotocol == "realtime"
    start = {
        "type": "session.start",
        "session": {"model": "gpt-live-1", "audio": {"format": {"type": "audio/pcm", "rate": 24000}}},
    }
    await live.send_to(text_data=json.dumps(start))
    assert json.loads(await live.receive_from(timeout=TIMEOUT))["type"] == "session.started"
    await live.send_to(text_data=json.dumps({"type": "session.close"}))
    closing = [json.loads(await live.receive_from(timeout=TIMEOUT))["type"]]
    while closing[-1] != "session.closed":  # audio deltas may come first
        closing.append(json.loads(await live.receive_from(timeout=TIMEOUT))["type"])
    await live.disconnect()

    wrong = await browser_socket("/v1/live/sessions", "rt-wrong")
    assert (await wrong.connect(timeout=TIMEOUT))[0]
    assert json.loads(await wrong.receive_from(timeout=TIMEOUT))["error"]["code"] == "invalid_api_key"
    await wrong.disconnect()
