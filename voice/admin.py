"""API keys in the admin: a key is shown once, when it is created; revoking keeps its history."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import ApiKey


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "created_at", "created_by", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "prefix")
    fields = ("name",)
    actions = ["revoke"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:  # only the name can change; the key itself never does
            obj.save(update_fields=["name"])
            return
        # A new key: generated here, stored hashed, shown to its creator this once.
        key = obj.set_new_key()
        obj.created_by = request.user
        obj.save()
        messages.warning(
            request,
            f"The new API key for “{obj.name}” is {key} — copy it now: it is stored hashed and will not be shown again.",
        )

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for api_key in queryset:
            api_key.revoke()
        self.message_user(request, f"Revoked {queryset.count()} key(s).")
