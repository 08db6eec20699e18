"""The Live API's HTTP resources: each a JSON error body (501 for what is not served), never HTML."""

from __future__ import annotations

import pytest
from django.test import Client


@pytest.fixture
def client() -> Client:
    return Client()


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]


def test_webrtc_session_creation_is_not_served(client: Client) -> None:
    response = client.post(
        "/v1/live/sessions", {"transport": {"type": "webrtc", "sdp": "v=0"}}, content_type="application/json"
    )
    assert_error(response, 501, "unsupported_transport")
    assert response.json()["error"]["param"] == "transport"


@pytest.mark.parametrize("action", ["fork", "accept", "reject", "refer", "hangup"])
def test_session_actions_are_not_served(client: Client, action: str) -> None:
    assert_error(
        client.post(f"/v1/live/sessions/sess_x/{action}", {}, content_type="application/json"),
        501,
        "unsupported_operation",
    )


def test_recordings_are_not_stored(client: Client) -> None:
    assert_error(client.get("/v1/live/sessions/sess_x/content"), 501, "unsupported_operation")


def test_wrong_method_and_unknown_resource(client: Client) -> None:
    assert_error(client.get("/v1/live/sessions"), 405, "method_not_allowed")
    assert_error(client.get("/v1/live/sessions/sess_x/hangup"), 405, "method_not_allowed")
    assert_error(client.post("/v1/live/sessions/sess_x/unknown"), 404, "not_found")
