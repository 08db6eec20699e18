"""Browsing stored conversations: declarations, with search over what was said.

The conversation page adds a timeline (items, transcriptions with their latency, session config
changes) and, when recording was on, the input and output audio, served from storage to staff.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse

from .models import Conversation, ConversationItem, SessionConfig, Transcription


class ConversationItemInline(admin.TabularInline):
    model = ConversationItem
    fields = ("position", "role", "item_type", "status", "text", "audio_ms", "truncated_at_ms", "deleted")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


class SessionConfigInline(admin.TabularInline):
    model = SessionConfig
    fields = ("sequence", "created_at", "config")
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("session_id", "started_at", "ended_at", "dialect", "model_type", "model_name", "api_key", "client_address")
    list_filter = ("dialect", "model_type", "model_name", "api_key", "started_at", "end_reason")
    search_fields = ("session_id", "conversation_id", "items__text", "items__transcriptions__text")
    date_hierarchy = "started_at"
    readonly_fields = [f.name for f in Conversation._meta.fields]
    inlines = [ConversationItemInline, SessionConfigInline]
    change_form_template = "admin/transcripts/conversation/change_form.html"

    def get_urls(self) -> list[Any]:
        audio = path(
            "<int:pk>/audio/<str:track>/",
            self.admin_site.admin_view(self.audio_view),
            name="transcripts_conversation_audio",
        )
        return [audio, *super().get_urls()]

    def audio_view(self, request: HttpRequest, pk: int, track: str) -> HttpResponse:
        """A recorded track from storage, whatever backend stores it (daphne serves no media)."""
        conversation = get_object_or_404(Conversation, pk=pk)
        if not self.has_view_permission(request, conversation) or track not in ("input", "output"):
            raise Http404
        field = conversation.input_audio if track == "input" else conversation.output_audio
        if not field:
            raise Http404
        return FileResponse(default_storage.open(field.name), content_type="audio/wav")

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        conversation = self.get_object(request, object_id)
        extra_context = {**(extra_context or {}), "timeline": timeline(conversation) if conversation else []}
        if conversation is not None:
            extra_context["audio_urls"] = {
                track: reverse("admin:transcripts_conversation_audio", args=[conversation.pk, track])
                for track, field in (("input", conversation.input_audio), ("output", conversation.output_audio))
                if field
            }
        return super().change_view(request, object_id, form_url, extra_context)


def timeline(conversation: Conversation) -> list[dict[str, Any]]:
    """What happened in the conversation, in time order, for its admin page."""
    entries: list[dict[str, Any]] = []
    for item in conversation.items.all():
        what = f"{item.role or item.item_type} item ({item.status})" + (" — deleted" if item.deleted else "")
        if item.truncated_at_ms is not None:
            what += f" — heard until {item.truncated_at_ms} ms"
        entries.append({"at": item.created_at, "kind": "item", "what": what, "text": item.text,
                        "detail": f"{item.audio_ms} ms of audio" if item.audio_ms else ""})
    for transcription in Transcription.objects.filter(item__conversation=conversation):
        entries.append({"at": transcription.created_at, "kind": "transcription",
                        "what": f"transcription {transcription.status} ({transcription.model or 'ASR'})",
                        "text": transcription.text or transcription.error,
                        "detail": f"{transcription.latency_ms} ms" if transcription.latency_ms is not None else ""})
    for config in conversation.configs.all():
        audio_in = config.config.get("audio", {}).get("input", {})
        turn = audio_in.get("turn_detection")
        entries.append({"at": config.created_at, "kind": "config", "what": f"session config #{config.sequence}",
                        "text": config.config.get("instructions", ""),
                        "detail": f"turn detection: {turn.get('type') if turn else 'off'}"})
    if conversation.ended_at:
        entries.append({"at": conversation.ended_at, "kind": "end", "what": "ended", "text": conversation.end_reason,
                        "detail": ""})
    return sorted(entries, key=lambda entry: entry["at"])


class TranscriptionInline(admin.TabularInline):
    model = Transcription
    fields = ("status", "text", "model", "language", "latency_ms", "error", "created_at")
    readonly_fields = fields
    extra = 0


@admin.register(ConversationItem)
class ConversationItemAdmin(admin.ModelAdmin):
    list_display = ("item_id", "conversation", "position", "role", "status", "text", "deleted")
    list_filter = ("role", "item_type", "status", "deleted")
    search_fields = ("text", "item_id", "conversation__session_id", "transcriptions__text")
    list_select_related = ("conversation",)
    inlines = [TranscriptionInline]


@admin.register(Transcription)
class TranscriptionAdmin(admin.ModelAdmin):
    list_display = ("item", "status", "model", "language", "latency_ms", "created_at")
    list_filter = ("status", "model", "language")
    search_fields = ("text", "error", "item__item_id")


@admin.register(SessionConfig)
class SessionConfigAdmin(admin.ModelAdmin):
    list_display = ("conversation", "sequence", "created_at")
    search_fields = ("conversation__session_id",)
