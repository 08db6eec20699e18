"""Who may open a WebSocket: the Host header, browser origins, and API keys from the handshake.

Every WebSocket handshake must name one of ALLOWED_HOSTS in its Host header, as every HTTP request
must (host_checked). Browsers' origins are checked next: the Realtime endpoint's list here
(origin_checked), the staff console's own stricter one in voice/console/access.py. Keys come as
`Authorization: Bearer <key>` (SDKs, servers) or as the browser subprotocol
`openai-insecure-api-key.<key>`. REALTIME_OPEN_ENDPOINT lets anyone in, for local development;
it defaults to DEBUG.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from channels.db import database_sync_to_async
from channels.security.websocket import OriginValidator, WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils import timezone

from .conf import get_config
from .models import ApiKey, hash_key

SUBPROTOCOL_KEY_PREFIX = "openai-insecure-api-key."

# Django logs a refused Host here for HTTP requests; WebSocket refusals go to the same logger.
host_log = logging.getLogger("django.security.DisallowedHost")


def presented_key(headers: Mapping[str, str], subprotocols: list[str]) -> str | None:
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    for protocol in subprotocols:
        if protocol.startswith(SUBPROTOCOL_KEY_PREFIX):
            return protocol[len(SUBPROTOCOL_KEY_PREFIX) :] or None
    return None


def open_endpoint() -> bool:
    value = get_config()["OPEN_ENDPOINT"]
    return settings.DEBUG if value in (None, "", "auto") else str(value).lower() in {"1", "true", "yes", "on"}


@database_sync_to_async
def authenticate(key: str | None) -> dict[str, Any] | None:
    """The active key's id and name, or None. One indexed query; no detail about why not."""
    if not key:
        return None
    api_key = ApiKey.objects.active().filter(key_hash=hash_key(key)).only("pk", "name").first()
    if api_key is None:
        return None
    ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=timezone.now())
    return {"id": api_key.pk, "name": api_key.name}


class RealtimeOriginValidator(OriginValidator):
    """Browsers send an Origin, which must be one of ALLOWED_HOSTS (or REALTIME_ALLOWED_ORIGINS);
    SDKs and servers send none, and are let through to the API key check.

    The staff console's socket is left to its own check (voice/console/access.py): exactly the
    server's own origin or CONSOLE_ALLOWED_ORIGINS, and never no Origin at all.
    """

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        from .console.access import is_console_path

        if is_console_path(scope.get("path", "")):
            return await self.application(scope, receive, send)
        return await super().__call__(scope, receive, send)

    def valid_origin(self, parsed_origin: Any) -> bool:
        if parsed_origin is None:
            return True
        return self.validate_origin(parsed_origin)


def origin_checked(application: Any) -> RealtimeOriginValidator:
    allowed = [h for h in settings.ALLOWED_HOSTS] + list(get_config()["ALLOWED_ORIGINS"])
    return RealtimeOriginValidator(application, allowed)


def header_values(scope: Mapping[str, Any], name: bytes) -> list[str]:
    """Every value of one (lower-case) header in an ASGI scope, decoded as latin-1."""
    return [value.decode("latin1") for key, value in scope.get("headers", []) if key == name]


def allowed_hosts() -> list[str]:
    """ALLOWED_HOSTS as Django's HttpRequest.get_host() applies it (with its DEBUG fallback)."""
    if settings.DEBUG and not settings.ALLOWED_HOSTS:
        return [".localhost", "127.0.0.1", "[::1]"]
    return list(settings.ALLOWED_HOSTS)


def host_allowed(scope: Mapping[str, Any]) -> bool:
    """True when the handshake names exactly one Host, and it is one of ALLOWED_HOSTS.

    A handshake with no Host is refused: HTTP/1.1 requires one, and daphne's WebSocket layer
    already refuses such a request before the application sees it.
    """
    hosts = header_values(scope, b"host")
    if len(hosts) != 1:
        return False
    domain, _port = split_domain_port(hosts[0])
    return bool(domain) and validate_host(domain, allowed_hosts())


class HostValidator:
    """ASGI middleware: a WebSocket handshake whose Host is not allowed is closed before it is
    accepted, which daphne answers with HTTP 403 (Django answers 400 for HTTP; a handshake has
    no such answer)."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not host_allowed(scope):
            hosts = header_values(scope, b"host")
            host_log.warning(
                "Invalid HTTP_HOST header in a WebSocket handshake to %s: %r. Add it to ALLOWED_HOSTS "
                "(DJANGO_ALLOWED_HOSTS) if it is yours.",
                scope.get("path", ""),
                hosts[0] if len(hosts) == 1 else hosts,
            )
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)


def host_checked(application: Any) -> HostValidator:
    return HostValidator(application)
