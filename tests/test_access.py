"""Access control for the Realtime endpoint: API keys (Bearer or browser subprotocol) and origins."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User

from transcripts.models import Conversation
from voice.models import ApiKey
from voice.protocol import Dialect

from .conftest import TIMEOUT
from .strict import strict

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("model_manager")]


@pytest.fixture(autouse=True)
def keys_required(settings):
    settings.VOICE = {**settings.VOICE, "OPEN_ENDPOINT": "0"}


async def open_socket(headers=(), subprotocols=None, path="/v1/realtime") -> WebsocketCommunicator:
    from realtime_project.asgi import application

    communicator = WebsocketCommunicator(application, path, headers=list(headers), subprotocols=subprotocols)
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


@database_sync_to_async
def admin_add_key(client) -> tuple[str, ApiKey]:
    user = User.objects.create_user("keeper", password="pw", is_staff=True, is_superuser=True)
    client.force_login(user)
    page = client.post("/admin/voice/apikey/add/", {"name": "dashboard"}, follow=True)
    message = next(str(m) for m in page.context["messages"] if "API key" in str(m))
    return message.split(" is ", 1)[1].split(" ", 1)[0], ApiKey.objects.get(name="dashboard")


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
