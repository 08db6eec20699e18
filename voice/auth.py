"""Who may open a Realtime session: API keys from the handshake, and browser origins.

Keys come as `Authorization: Bearer <key>` (SDKs, servers) or as the browser subprotocol
`openai-insecure-api-key.<key>`. REALTIME_OPEN_ENDPOINT lets anyone in, for local development;
it defaults to DEBUG.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from channels.db import database_sync_to_async
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.utils import timezone

from .conf import get_config
from .models import ApiKey, hash_key

SUBPROTOCOL_KEY_PREFIX = "openai-insecure-api-key."


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
    SDKs and servers send none, and are let through to the API key check."""

    def valid_origin(self, parsed_origin: Any) -> bool:
        if parsed_origin is None:
            return True
        return self.validate_origin(parsed_origin)


def origin_checked(application: Any) -> RealtimeOriginValidator:
    allowed = [h for h in settings.ALLOWED_HOSTS] + list(get_config()["ALLOWED_ORIGINS"])
    return RealtimeOriginValidator(application, allowed)
