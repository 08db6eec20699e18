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
