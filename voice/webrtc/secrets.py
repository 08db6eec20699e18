"""Ephemeral client secrets: minted from an API key for a browser, accepted by `/calls` only.

The value (`ek_` + 256 random bits) is shown once; only its SHA-256 is stored, with the API key it
stands for, its expiry and the session configuration given at mint time. It is checked nowhere
else: the WebSocket, the admin and `/client_secrets` itself look up API keys only, so an
ephemeral key is refused there like any unknown key. A revoked API key's secrets stop working.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from django.utils import timezone

from ..models import CLIENT_SECRET_PREFIX, ApiKey, ClientSecret, hash_key

# OpenAI's bounds for expires_after.seconds, and its default.
MIN_SECONDS = 10
MAX_SECONDS = 7200
DEFAULT_SECONDS = 600


@dataclass(frozen=True)
class Resolved:
    api_key: dict[str, Any] | None  # {"id", "name"} as voice.auth.authenticate gives it; None: open endpoint
    session: dict[str, Any]  # the configuration given at mint time


def is_client_secret(value: str | None) -> bool:
    return bool(value) and str(value).startswith(CLIENT_SECRET_PREFIX)


@database_sync_to_async
def mint(api_key_id: int | None, session: dict[str, Any], seconds: int) -> tuple[str, int]:
    """A new secret's value and expiry (Unix seconds); expired secrets are deleted on the way."""
    now = timezone.now()
    ClientSecret.objects.filter(expires_at__lt=now - dt.timedelta(days=1)).delete()
    expires_at = (now + dt.timedelta(seconds=seconds)).replace(microsecond=0)
    _secret, value = ClientSecret.mint(api_key_id=api_key_id, session=session, expires_at=expires_at)
    return value, int(expires_at.timestamp())


@database_sync_to_async
def resolve(value: str | None) -> Resolved | None:
    """The API key and configuration a usable secret stands for; None for unknown, expired or revoked."""
    if not is_client_secret(value):
        return None
    secret = ClientSecret.objects.usable().select_related("api_key").filter(secret_hash=hash_key(str(value))).first()
    if secret is None:
        return None
    if secret.api_key is None:
        return Resolved(api_key=None, session=dict(secret.session))
    ApiKey.objects.filter(pk=secret.api_key_id).update(last_used_at=timezone.now())
    return Resolved(api_key={"id": secret.api_key.pk, "name": secret.api_key.name}, session=dict(secret.session))
