"""API keys for the Realtime endpoint: created and revoked in the admin, stored hashed."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

KEY_PREFIX = "rt-"


def hash_key(key: str) -> str:
    """SHA-256 of the key: keys are 256-bit random, so a fast hash is safe and a lookup is one query."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet):
    def active(self) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    name = models.CharField(max_length=100, help_text="Who or what uses this key, e.g. 'support bot'.")
    prefix = models.CharField(max_length=16, editable=False, help_text="The key's first characters, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def issue(cls, *, name: str, created_by: object | None = None) -> tuple[ApiKey, str]:
        """Create a key; the plain key is returned once and never stored."""
        api_key = cls(name=name, created_by=created_by)
        key = api_key.set_new_key()
        api_key.save()
        return api_key, key

    def set_new_key(self) -> str:
        """Generate this (unsaved) key's secret; keep only its hash and prefix, return it."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        self.prefix, self.key_hash = key[:10], hash_key(key)
        return key

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])


CLIENT_SECRET_PREFIX = "ek_"  # what OpenAI's ephemeral keys start with; @openai/agents-realtime checks it


class ClientSecretQuerySet(models.QuerySet):
    def usable(self) -> ClientSecretQuerySet:
        """Not expired, minted from a key that is still active."""
        return self.filter(expires_at__gt=timezone.now(), api_key__revoked_at__isnull=True)


class ClientSecret(models.Model):
    """An ephemeral key for a browser (`POST /v1/realtime/client_secrets`): it opens WebRTC calls
    (`POST /v1/realtime/calls`) until it expires, as the API key it was minted from, and nothing else.

    Only its hash is stored; the session configuration given at mint time is applied to each call.
    """

    # None only on an open endpoint (REALTIME_OPEN_ENDPOINT), where a call needs no key anyway.
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="client_secrets")
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)
    session = models.JSONField(default=dict, blank=True)

    objects = ClientSecretQuerySet.as_manager()

    class Meta:
        verbose_name = "client secret"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"client secret of {self.api_key_id} until {self.expires_at:%Y-%m-%d %H:%M:%S}"

    @classmethod
    def mint(cls, *, api_key_id: int | None, session: dict, expires_at: object) -> tuple[ClientSecret, str]:
        """Create one; the plain value is returned once and never stored."""
        value = CLIENT_SECRET_PREFIX + secrets.token_urlsafe(32)
        secret = cls.objects.create(
            api_key_id=api_key_id, secret_hash=hash_key(value), expires_at=expires_at, session=session
        )
        return secret, value
