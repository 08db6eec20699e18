"""API keys in the admin: a key is shown once, when it is created; revoking keeps its history.

The new key is shown on the page that answers the "add" form itself, never through
django.contrib.messages: its cookie storage would carry the key in a signed, not encrypted, cookie.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse

from .models import ApiKey

CREATED_TEMPLATE = "admin/voice/apikey/created.html"


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
        # A new key: generated here, stored hashed, shown to its creator this once (response_add).
        obj.plain_key = obj.set_new_key()
        obj.created_by = request.user
        obj.save()

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        """The page after "Save": the new key, once, with a warning, whichever save button was used."""
        key = getattr(obj, "plain_key", None)
        if key is None:  # not created through save_model above
            return super().response_add(request, obj, post_url_continue)
        opts = self.opts
        context = {
            **self.admin_site.each_context(request),
            "opts": opts,
            "title": f"New API key “{obj.name}”",
            "api_key": obj,
            "key": key,
            "changelist_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
            "add_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_add"),
        }
        response = TemplateResponse(request, CREATED_TEMPLATE, context)
        response["Cache-Control"] = "no-store"  # the key must not outlive this page in any cache
        return response

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for api_key in queryset:
            api_key.revoke()
        self.message_user(request, f"Revoked {queryset.count()} key(s).")
