"""Browsing stored conversations: declarations, with search over what was said.

The conversation page adds a timeline (items, transcriptions with their latency, session config
changes, companion calls: what the companion model was asked and answered, with its token usage,
totalled above the timeline) and, when recording was on, the input and output audio, served from storage to staff.
A Live API conversation's timeline is on its session clock (time since session.start): its turns
and appends at their start, each transcription with its turn, the session as started first and the
final one (if a session.update changed it) last.

Every page stays small whatever was stored: a client may send 15 MiB of text per event. List
pages and inline rows show the first PREVIEW_CHARS characters of a text (cut in the database, so
the rest is never loaded); the conversation page shows its first INLINE_ROWS items and configs
and a timeline of at most TIMELINE_ENTRIES entries, each text cut at TIMELINE_TEXT_CHARS with a
note and a link to the page that shows it whole.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.files.storage import default_storage
from django.db.models import Count, F, QuerySet, Sum, TextField
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Length, Substr
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse

from .models import CompanionCall, Conversation, ConversationItem, SessionConfig, Transcription

PREVIEW_CHARS = 200  # of a text in a list or an inline row
TIMELINE_TEXT_CHARS = 2000  # of a text in the conversation's timeline
TIMELINE_ENTRIES = 200  # timeline entries on the conversation page
INLINE_ROWS = 100  # item and config rows on the conversation page


def preview(text: str | None, limit: int = PREVIEW_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when something was cut."""
    text = text or ""
    return text if len(text) <= limit else text[:limit] + "…"


def with_heads(queryset: QuerySet[Any], *names: str, chars: int = PREVIEW_CHARS) -> QuerySet[Any]:
    """``queryset`` without the text fields ``names``, annotated with their heads (``<name>_head``)
    one character longer than ``chars`` (so that a cut shows) and their lengths (``<name>_chars``)."""
    annotations: dict[str, Any] = {}
    for name in names:
        annotations[f"{name}_head"] = Substr(name, 1, chars + 1)
        annotations[f"{name}_chars"] = Length(name)
    return queryset.defer(*names).annotate(**annotations)


def _head(obj: Any, name: str, limit: int = PREVIEW_CHARS) -> str:
    """The preview of ``obj``'s text field ``name``, from its annotated head when there is one."""
    head = getattr(obj, f"{name}_head", None)
    return preview(getattr(obj, name) if head is None else head, limit)


class TextPreviews:
    """List and inline columns that show the head of a long text."""

    @admin.display(description="text")
    def text_preview(self, obj: Any) -> str:
        return _head(obj, "text")

    @admin.display(description="error")
    def error_preview(self, obj: Any) -> str:
        return _head(obj, "error")


class ConversationItemInline(TextPreviews, admin.TabularInline):
    model = ConversationItem
    fields = (
        "position",
        "role",
        "item_type",
        "status",
        "text_preview",
        "start_ms",
        "end_ms",
        "audio_ms",
        "truncated_at_ms",
        "deleted",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def get_queryset(self, request: HttpRequest) -> QuerySet[ConversationItem]:
        return with_heads(super().get_queryset(request).defer("content"), "text")


class SessionConfigInline(admin.TabularInline):
    model = SessionConfig
    fields = ("sequence", "created_at", "config_preview")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[SessionConfig]:
        queryset = super().get_queryset(request).defer("config")
        return queryset.annotate(config_head=Substr(Cast("config", TextField()), 1, PREVIEW_CHARS + 1))

    @admin.display(description="config")
    def config_preview(self, obj: SessionConfig) -> str:
        return preview(getattr(obj, "config_head", None) or "")


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = (
        "session_id",
        "started_at",
        "ended_at",
        "dialect",
        "model_type",
        "model_name",
        "api_key",
        "client_address",
        "close_reason",
    )
    list_filter = ("dialect", "model_type", "model_name", "api_key", "started_at", "end_reason", "close_reason")
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

    def get_formset_kwargs(self, request: HttpRequest, obj: Any, inline: Any, prefix: str) -> dict[str, Any]:
        """The inlines show the first INLINE_ROWS rows; the timeline says how many there are."""
        kwargs = super().get_formset_kwargs(request, obj, inline, prefix)
        if obj is not None and obj.pk is not None:
            queryset = kwargs["queryset"]
            first = list(queryset.filter(conversation=obj).values_list("pk", flat=True)[:INLINE_ROWS])
            kwargs["queryset"] = queryset.filter(pk__in=first)
        return kwargs

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        conversation = self.get_object(request, object_id)
        extra_context = {**(extra_context or {}), "timeline": timeline(conversation) if conversation else []}
        if conversation is not None:
            extra_context["audio_urls"] = {
                track: reverse("admin:transcripts_conversation_audio", args=[conversation.pk, track])
                for track, field in (("input", conversation.input_audio), ("output", conversation.output_audio))
                if field
            }
            extra_context["counts"] = counts(conversation)
        return super().change_view(request, object_id, form_url, extra_context)


def counts(conversation: Conversation) -> dict[str, Any]:
    """How much the conversation holds, and where to see all of it (its page shows the first rows)."""
    items = conversation.items.count()
    configs = conversation.configs.count()
    transcriptions = Transcription.objects.filter(item__conversation=conversation).count()
    companion = conversation.companion_calls.aggregate(
        calls=Count("pk"),
        prompt_tokens=Sum("prompt_tokens"),
        completion_tokens=Sum("completion_tokens"),
        total_tokens=Sum("total_tokens"),
    )
    query = f"?conversation__id__exact={conversation.pk}"
    entries = items + configs + transcriptions + companion["calls"]
    return {
        "items": items,
        "configs": configs,
        "transcriptions": transcriptions,
        "companion_calls": companion["calls"],
        "companion_tokens": {
            key: companion[key] or 0 for key in ("prompt_tokens", "completion_tokens", "total_tokens")
        },
        "companion_calls_url": reverse("admin:transcripts_companioncall_changelist") + query,
        "cut": items > INLINE_ROWS or configs > INLINE_ROWS or entries > TIMELINE_ENTRIES,
        "shown": INLINE_ROWS,
        "timeline_shown": TIMELINE_ENTRIES,
        "items_url": reverse("admin:transcripts_conversationitem_changelist") + query,
        "configs_url": reverse("admin:transcripts_sessionconfig_changelist") + query,
        "transcriptions_url": reverse("admin:transcripts_transcription_changelist")
        + f"?item__conversation__id__exact={conversation.pk}",
    }


def timeline(conversation: Conversation) -> list[dict[str, Any]]:
    """What happened in the conversation, in time order, for its admin page.

    At most TIMELINE_ENTRIES entries (the first of each kind); each text cut at
    TIMELINE_TEXT_CHARS, with ``more`` (characters left out) and ``url`` (the page with all of it).
    A Realtime conversation's entries are ordered by when they were stored (``at``); a Live one's
    by the session clock (``clock``, ms since session.start, shown instead of the time of day).
    """
    live = conversation.dialect == Conversation.Dialect.LIVE
    entries: list[dict[str, Any]] = []
    items = with_heads(conversation.items.order_by("position").defer("content"), "text", chars=TIMELINE_TEXT_CHARS)
    for item in items[:TIMELINE_ENTRIES]:
        what = _item_what(item, live)
        url = reverse("admin:transcripts_conversationitem_change", args=[item.pk])
        entries.append(
            {
                "at": item.created_at,
                "clock": item.start_ms,
                "kind": "item",
                "what": what,
                **_text(item.text_head, item.text_chars, url),
                "detail": _item_detail(item, live),
            }
        )
    transcriptions = with_heads(
        Transcription.objects.filter(item__conversation=conversation)
        .annotate(item_start_ms=F("item__start_ms"))
        .order_by("created_at", "pk"),
        "text",
        "error",
        chars=TIMELINE_TEXT_CHARS,
    )
    for transcription in transcriptions[:TIMELINE_ENTRIES]:
        url = reverse("admin:transcripts_transcription_change", args=[transcription.pk])
        shown = (
            (transcription.text_head, transcription.text_chars)
            if transcription.text_chars
            else (transcription.error_head, transcription.error_chars)
        )
        entries.append(
            {
                "at": transcription.created_at,
                "clock": transcription.item_start_ms,  # with its turn (or segment), after it
                "kind": "transcription",
                "what": f"transcription {transcription.status} ({transcription.model or 'ASR'})",
                **_text(*shown, url),
                "detail": f"{transcription.latency_ms} ms" if transcription.latency_ms is not None else "",
            }
        )
    configs = (
        conversation.configs.order_by("sequence")
        .defer("config")
        .annotate(
            instructions_head=Substr(KT("config__instructions"), 1, TIMELINE_TEXT_CHARS + 1),
            instructions_chars=Length(KT("config__instructions")),
            turn_detection=KT("config__audio__input__turn_detection__type"),
            live_model=KT("config__model"),
            live_format=KT("config__audio__format__type"),
            live_rate=KT("config__audio__format__rate"),
            live_voice=KT("config__audio__output__voice"),
        )
    )
    for config in configs[:TIMELINE_ENTRIES]:
        url = reverse("admin:transcripts_sessionconfig_change", args=[config.pk])
        if live:
            what = "session started" if config.sequence == 1 else f"session config #{config.sequence} (at the close)"
            detail = f"{config.live_model or '?'}, {config.live_format or '?'} {config.live_rate or ''} Hz"
            detail += f", voice {config.live_voice}" if config.live_voice else ""
        else:
            what = f"session config #{config.sequence}"
            detail = f"turn detection: {config.turn_detection or 'off'}"
        entries.append(
            {
                "at": config.created_at,
                # The session as started is the clock's zero; a later one is the final resource, stored at the close.
                "clock": 0 if config.sequence == 1 else _LAST,
                "kind": "config",
                "what": what,
                **_text(config.instructions_head, config.instructions_chars, url),
                "detail": detail,
            }
        )
    entries.extend(_companion_entries(conversation))
    if live:
        # The session as started first at zero; then stable: items before their transcriptions.
        entries.sort(key=lambda entry: (_LAST if entry["clock"] is None else entry["clock"], entry["kind"] != "config"))
        for entry in entries:
            entry["when"] = _clock(entry["clock"]) if entry["clock"] not in (None, _LAST) else ""
    else:
        entries.sort(key=lambda entry: entry["at"])
    entries = entries[:TIMELINE_ENTRIES]
    if conversation.ended_at:
        reason = conversation.end_reason
        if live and conversation.close_reason:
            reason = f"{conversation.close_reason} ({reason})" if reason else conversation.close_reason
        usage = conversation.usage if isinstance(conversation.usage, dict) else {}
        detail = ", ".join(f"{key}: {value}" for key, value in usage.items()) if live else ""
        entries.append({"at": conversation.ended_at, "kind": "end", "what": "ended", "text": reason, "detail": detail})
    return entries


_LAST = 2**63  # a clock time after every other one


def _clock(ms: int) -> str:
    """A session-clock time as the timeline shows it: +m:ss.mmm since session.start."""
    minutes, ms = divmod(ms, 60_000)
    return f"+{minutes}:{ms // 1000:02d}.{ms % 1000:03d}"


def _item_what(item: ConversationItem, live: bool) -> str:
    if live and item.start_ms is not None:
        if item.item_type == ConversationItem.LIVE_TURN:
            what = f"{item.role} turn"
        elif item.item_type == ConversationItem.LIVE_SEGMENT:
            what = "user speech segment"
        else:
            what = f"{item.item_type} appended" + (f" ({item.role})" if item.role else "")
        return what + (f" ({item.status})" if item.status != "completed" else "")
    what = f"{item.role or item.item_type} item ({item.status})" + (" — deleted" if item.deleted else "")
    if item.truncated_at_ms is not None:
        what += f" — heard until {item.truncated_at_ms} ms"
    return what


def _item_detail(item: ConversationItem, live: bool) -> str:
    if live and item.item_type == ConversationItem.LIVE_TURN and item.start_ms is not None and item.end_ms is not None:
        return f"until {_clock(item.end_ms)} ({item.audio_ms} ms)"
    return f"{item.audio_ms} ms of audio" if item.audio_ms else ""


def _companion_entries(conversation: Conversation) -> list[dict[str, Any]]:
    """Each companion call: what it was asked (the last user message, or its purpose) and what it
    answered (text, tool calls, or its error), with its latency and token usage."""
    half = TIMELINE_TEXT_CHARS // 2
    calls = with_heads(
        conversation.companion_calls.order_by("created_at", "pk").defer("messages", "context"),
        "asked",
        "text",
        "error",
        chars=half,
    )
    entries = []
    for call in calls[:TIMELINE_ENTRIES]:
        asked = preview(call.asked_head, half) if call.asked_chars else f"({call.purpose or 'a request'})"
        if call.status == CompanionCall.Status.FAILED:
            answered = f"{call.error_code or 'failed'}: {preview(call.error_head, half)}"
            more = max(0, call.error_chars - half)
        else:
            parts = [preview(call.text_head, half)] if call.text_chars else []
            calls_text = ", ".join(
                f"{tool.get('name', '?')}({preview(str(tool.get('arguments', '')), 200)})"
                for tool in (call.tool_calls if isinstance(call.tool_calls, list) else [])
                if isinstance(tool, dict)
            )
            if calls_text:
                parts.append(f"tool call{'s' if len(call.tool_calls) > 1 else ''}: {preview(calls_text, half)}")
            answered = " + ".join(parts) or "(nothing)"
            more = max(0, call.text_chars - half)
        more += max(0, call.asked_chars - half)
        detail = [f"{call.latency_ms} ms"] if call.latency_ms is not None else []
        if call.total_tokens is not None:
            detail.append(
                f"{call.total_tokens} tokens ({call.prompt_tokens or 0} prompt, {call.completion_tokens or 0} completion)"
            )
        entries.append(
            {
                "at": call.created_at,
                "clock": call.clock_ms,
                "kind": "companion",
                "what": f"companion {call.purpose or 'call'} ({call.status}, {call.model or '?'})",
                "text": f"asked: {asked} — answered: {answered}",
                "more": more,
                "url": reverse("admin:transcripts_companioncall_change", args=[call.pk]),
                "detail": ", ".join(detail),
            }
        )
    return entries


def _text(head: str | None, chars: int | None, url: str) -> dict[str, Any]:
    """A timeline entry's text: its head, and how many characters are left out (0 when none)."""
    head = head or ""
    more = max(0, (chars or 0) - TIMELINE_TEXT_CHARS)
    return {"text": head[:TIMELINE_TEXT_CHARS], "more": more, "url": url}


class TranscriptionInline(TextPreviews, admin.TabularInline):
    model = Transcription
    fields = ("status", "text_preview", "model", "language", "latency_ms", "error_preview", "created_at")
    readonly_fields = fields
    extra = 0

    def get_queryset(self, request: HttpRequest) -> QuerySet[Transcription]:
        return with_heads(super().get_queryset(request), "text", "error")


@admin.register(ConversationItem)
class ConversationItemAdmin(TextPreviews, admin.ModelAdmin):
    list_display = ("item_id", "conversation", "position", "role", "status", "text_preview", "deleted")
    list_filter = ("role", "item_type", "status", "deleted")
    search_fields = ("text", "item_id", "conversation__session_id", "transcriptions__text")
    list_select_related = ("conversation",)
    inlines = [TranscriptionInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ConversationItem]:
        # Heads for the list; the change page of one item loads its whole text when it shows it.
        return with_heads(super().get_queryset(request).defer("content"), "text")


@admin.register(Transcription)
class TranscriptionAdmin(TextPreviews, admin.ModelAdmin):
    list_display = ("item_link", "status", "model", "language", "latency_ms", "text_preview", "created_at")
    list_filter = ("status", "model", "language")
    search_fields = ("text", "error", "item__item_id")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Transcription]:
        queryset = super().get_queryset(request).select_related("item").defer("item__text", "item__content")
        return with_heads(queryset, "text", "error")

    @admin.display(description="item", ordering="item__item_id")
    def item_link(self, obj: Transcription) -> str:
        return obj.item.item_id


@admin.register(SessionConfig)
class SessionConfigAdmin(admin.ModelAdmin):
    list_display = ("conversation", "sequence", "created_at", "instructions_preview")
    search_fields = ("conversation__session_id",)
    list_select_related = ("conversation",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[SessionConfig]:
        # The list shows the head of the instructions; the change page of one config loads it whole.
        queryset = super().get_queryset(request).defer("config")
        return queryset.annotate(instructions_head=Substr(KT("config__instructions"), 1, PREVIEW_CHARS + 1))

    @admin.display(description="instructions")
    def instructions_preview(self, obj: SessionConfig) -> str:
        return preview(obj.instructions_head)


@admin.register(CompanionCall)
class CompanionCallAdmin(admin.ModelAdmin):
    list_display = (
        "request_id",
        "conversation",
        "purpose",
        "status",
        "model",
        "asked_preview",
        "answer_preview",
        "total_tokens",
        "latency_ms",
        "created_at",
    )
    list_filter = ("status", "purpose", "model", "error_code")
    search_fields = ("request_id", "asked", "text", "conversation__session_id")
    list_select_related = ("conversation",)
    readonly_fields = [f.name for f in CompanionCall._meta.fields]

    def get_queryset(self, request: HttpRequest) -> QuerySet[CompanionCall]:
        # Heads for the list; the change page of one call loads it whole.
        return with_heads(super().get_queryset(request), "asked", "text", "error")

    @admin.display(description="asked")
    def asked_preview(self, obj: CompanionCall) -> str:
        return _head(obj, "asked")

    @admin.display(description="answered")
    def answer_preview(self, obj: CompanionCall) -> str:
        if obj.status == CompanionCall.Status.FAILED:
            return f"{obj.error_code}: {_head(obj, 'error')}"
        names = [tool.get("name", "?") for tool in obj.tool_calls if isinstance(tool, dict)] if obj.tool_calls else []
        text = _head(obj, "text")
        return " + ".join(part for part in (text, ", ".join(names) and f"tool calls: {', '.join(names)}") if part)
