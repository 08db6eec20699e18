"""Browsing stored conversations: declarations, with search over what was said."""

from django.contrib import admin

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
