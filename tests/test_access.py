"""Access control for the WebSocket endpoints: the Host header, API keys (Bearer or browser subprotocol),
origins, and the admin page that shows a new key once."""

from __future__ import annotations

import json
import re

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client as HttpClient

from transcripts.models import Conversation
from voice.models import ApiKey
from voice.protocol import Dialect

from .conftest import TIMEOUT
from .strict import strict

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("model_manager")]


@pytest.fixture(autouse=True)
def keys_required(settings):
    settings.VOICE = {**settings.VOICE, "OPEN_ENDPOINT": "0"}


async def open_socket(headers=(), subprotocols=None, path="/v1/realtime", host=b"testserver") -> WebsocketCommunicator:
    """A handshake through the whole ASGI stack; Host ``testserver`` (one of the tests' ALLOWED_HOSTS)."""
    from realtime_project.asgi import application

    headers = ([(b"host", host)] if host is not None else []) + list(headers)
    communicator = WebsocketCommunicator(application, path, headers=headers, subprotocols=subprotocols)
    return communicator


async def assert_refused(communicator: WebsocketCommunicator) -> None:
    assert (await communicator.connect(timeout=TIMEOUT))[0]
    event = json.loads(await communicator.receive_from(timeout=TIMEOUT))
    strict(event, Dialect.GA)
    assert event["error"]["code"] == "invalid_api_key"
    assert event["error"]["message"] == "Incorrect or missing API key."  # the same for every failure
    closing = await communicator.receive_output(timeout=TIMEOUT)
    assert closing["type"] == "websocket.close" and closing["code"] == 3000
    await communicator.disconnect()


@database_sync_to_async
def issue_key(name: str = "tests", revoked: bool = False) -> str:
    api_key, key = ApiKey.issue(name=name)
    if revoked:
        api_key.revoke()
    return key


@database_sync_to_async
def conversation_count() -> int:
    return Conversation.objects.count()


async def test_no_key_is_refused_before_any_session_exists() -> None:
    await assert_refused(await open_socket())
    assert await conversation_count() == 0


@pytest.mark.parametrize("header", [b"Bearer rt-wrong", b"Bearer ", b"Basic abc"])
async def test_a_wrong_key_is_refused(header: bytes) -> None:
    await issue_key()
    await assert_refused(await open_socket(headers=[(b"authorization", header)]))


async def test_a_revoked_key_is_refused() -> None:
    key = await issue_key(revoked=True)
    await assert_refused(await open_socket(headers=[(b"authorization", f"Bearer {key}".encode())]))


async def test_a_bearer_key_opens_a_session_recorded_with_its_key() -> None:
    key = await issue_key(name="support bot")
    communicator = await open_socket(headers=[(b"authorization", f"Bearer {key}".encode())])
    assert (await communicator.connect(timeout=TIMEOUT))[0]
    created = json.loads(await communicator.receive_from(timeout=TIMEOUT))
    assert created["type"] == "session.created"
    await communicator.disconnect()

    @database_sync_to_async
    def key_name() -> str:
        return Conversation.objects.get(session_id=created["session"]["id"]).api_key.name

    assert await key_name() == "support bot"


async def test_a_browser_passes_its_key_as_a_subprotocol() -> None:
    key = await issue_key()
    communicator = await open_socket(
        headers=[(b"origin", b"http://localhost:8000")], subprotocols=["realtime", f"openai-insecure-api-key.{key}"]
    )
    connected, subprotocol = await communicator.connect(timeout=TIMEOUT)
    assert connected and subprotocol == "realtime"
    assert json.loads(await communicator.receive_from(timeout=TIMEOUT))["type"] == "session.created"
    await communicator.disconnect()


async def test_a_foreign_browser_origin_is_refused() -> None:
    key = await issue_key()
    communicator = await open_socket(
        headers=[(b"origin", b"https://evil.example"), (b"authorization", f"Bearer {key}".encode())]
    )
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert not connected


def shown_key(html: str) -> str:
    match = re.search(r'id="new-api-key"[^>]*value="([^"]+)"', html)
    assert match, "no key on the page after creating one"
    return match.group(1)


@database_sync_to_async
def admin_add_key(client) -> tuple[str, ApiKey]:
    user = User.objects.create_user("keeper", password="pw", is_staff=True, is_superuser=True)
    client.force_login(user)
    page = client.post("/admin/voice/apikey/add/", {"name": "dashboard"})
    assert page.status_code == 200  # the key's own page, not a redirect
    return shown_key(page.content.decode()), ApiKey.objects.get(name="dashboard")


async def test_a_key_created_in_the_admin_is_shown_once_and_stored_hashed(client) -> None:
    key, stored = await admin_add_key(client)
    assert key.startswith("rt-") and key not in (stored.key_hash, stored.prefix) and stored.prefix == key[:10]
    communicator = await open_socket(headers=[(b"authorization", f"Bearer {key}".encode())])
    assert (await communicator.connect(timeout=TIMEOUT))[0]
    assert json.loads(await communicator.receive_from(timeout=TIMEOUT))["type"] == "session.created"
    await communicator.disconnect()

    @database_sync_to_async
    def page_again() -> bytes:
        return client.get(f"/admin/voice/apikey/{stored.pk}/change/").content

    assert key.encode() not in await page_again()


def test_the_endpoint_is_open_only_in_debug_by_default(settings) -> None:
    from voice.auth import open_endpoint

    settings.VOICE = {**settings.VOICE, "OPEN_ENDPOINT": "auto"}
    settings.DEBUG = False
    assert not open_endpoint()
    settings.DEBUG = True
    assert open_endpoint()


# --- the new key's page -------------------------------------------------------------------------


@pytest.mark.parametrize("button", ["_save", "_continue", "_addanother"])
def test_a_new_key_is_shown_on_its_page_and_never_put_in_a_cookie(client, button: str) -> None:
    """Messages would keep it in a signed, not encrypted, cookie; the page shows it instead, once."""
    user = User.objects.create_user("keeper", password="pw", is_staff=True, is_superuser=True)
    client.force_login(user)
    page = client.post("/admin/voice/apikey/add/", {"name": "dashboard", button: "1"})
    assert page.status_code == 200
    assert [t.name for t in page.templates][0] == "admin/voice/apikey/created.html"
    html = page.content.decode()
    key = shown_key(html)
    stored = ApiKey.objects.get(name="dashboard")
    assert key.startswith("rt-") and stored.prefix == key[:10] and stored.created_by == user
    assert "will not be shown again" in html and 'href="/admin/voice/apikey/"' in html
    assert "no-store" in page["Cache-Control"]
    # Nothing about the key in any cookie this response sets, nor in a message for a later page.
    set_cookies = page.cookies.output()
    assert key not in set_cookies and key[3:] not in set_cookies
    assert not list(page.wsgi_request._messages)
    later = client.get("/admin/voice/apikey/")
    assert key not in later.content.decode() and key not in later.cookies.output()
    assert key not in str(client.cookies)


# --- the Host header ----------------------------------------------------------------------------


@pytest.mark.parametrize("host", [b"evil.example", b"evil.example:8000", b"testserver.evil.example", None])
async def test_a_realtime_handshake_with_a_foreign_or_no_host_is_refused(host: bytes | None) -> None:
    key = await issue_key()
    communicator = await open_socket(headers=[(b"authorization", f"Bearer {key}".encode())], host=host)
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert not connected  # closed before accept: daphne answers the upgrade with HTTP 403
    assert await conversation_count() == 0


@pytest.mark.parametrize("host", [b"testserver", b"127.0.0.1:8000", b"localhost", b"[::1]:8000"])
async def test_a_realtime_handshake_naming_an_allowed_host_is_accepted(host: bytes) -> None:
    key = await issue_key()
    communicator = await open_socket(headers=[(b"authorization", f"Bearer {key}".encode())], host=host)
    assert (await communicator.connect(timeout=TIMEOUT))[0]
    assert json.loads(await communicator.receive_from(timeout=TIMEOUT))["type"] == "session.created"
    await communicator.disconnect()


async def test_two_host_headers_are_refused() -> None:
    key = await issue_key()
    headers = [(b"host", b"evil.example"), (b"authorization", f"Bearer {key}".encode())]
    communicator = await open_socket(headers=headers, host=b"testserver")
    assert not (await communicator.connect(timeout=TIMEOUT))[0]


async def test_a_console_handshake_with_a_foreign_host_is_refused_even_from_its_own_origin(settings) -> None:
    """A staff cookie and an Origin that matches the (foreign) Host are not enough."""
    settings.ALLOWED_HOSTS = ["voice.example.com"]

    @database_sync_to_async
    def staff_cookie() -> str:
        user = User.objects.create_user("operator", password="pw", is_staff=True, is_superuser=True)
        client = HttpClient()
        client.force_login(user)
        return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"

    cookie = (await staff_cookie()).encode()
    for host, expected in ((b"evil.example", False), (b"voice.example.com", True)):
        headers = [(b"cookie", cookie), (b"origin", b"http://" + host)]
        communicator = await open_socket(headers=headers, path="/console/live", host=host)
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        assert connected is expected, host
        await communicator.disconnect()


def test_the_host_check_follows_django_for_an_empty_allowed_hosts_under_debug(settings) -> None:
    from voice.auth import host_allowed

    def scope(host: bytes) -> dict:
        return {"type": "websocket", "headers": [(b"host", host)]}

    settings.ALLOWED_HOSTS = []
    settings.DEBUG = True
    assert host_allowed(scope(b"localhost:8000")) and host_allowed(scope(b"127.0.0.1"))
    assert not host_allowed(scope(b"evil.example"))
    settings.DEBUG = False
    assert not host_allowed(scope(b"localhost:8000"))
    settings.ALLOWED_HOSTS = [".example.com"]
    assert host_allowed(scope(b"voice.example.com")) and host_allowed(scope(b"example.com:443"))
    assert not host_allowed(scope(b"example.com.evil")) and not host_allowed(scope(b"bad host"))
