"""Writes to the conversation store, one small function per action (entity, then action).

Called from async code through database_sync_to_async by the session recorder, in batches,
never on the audio path. Each function is one transaction. Every value passes through
transcripts.sanitize first (cut to its column, NUL characters removed), so what a client sends
cannot make a write fail.

Live API sessions (dialect ``live``) send voice.live.records mixed with TranscriptionOutcome; how
they become rows is described at ``_Live``. A CompanionOutcome (either dialect) is a CompanionCall:
what the companion model was asked, bounded (``companion_messages``), and what it answered.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.db.models import Count, Max, Q
from django.utils import timezone

from voice.live import records as live
from voice.protocol import records
from voice.protocol.companion import CompanionOutcome

from .models import CompanionCall, Conversation, ConversationItem, SessionConfig, Transcription
from .sanitize import clean_json, clean_text, field_value, item_key, model_values


def conversation_start(
    *,
    session_id: str,
    conversation_id: str,
    dialect: str,
    model_name: str,
    model_type: str,
    requested_model: str = "",
    client_address: str = "",
    api_key_id: int | None = None,
) -> int:
    """The conversation of a new session; called again (a retry), it returns the same one."""
    fields = model_values(
        Conversation,
        {
            "session_id": session_id,
            "conversation_id": conversation_id,
            "dialect": dialect,
            "model_name": model_name,
            "model_type": model_type,
            "requested_model": requested_model,
            "client_address": client_address,
        },
        keys=("session_id",),
    )
    if api_key_id is not None:
        # A key deleted since the handshake must not keep the whole session from being stored.
        keys = Conversation._meta.get_field("api_key").related_model._default_manager
        if not keys.filter(pk=api_key_id).exists():
            api_key_id = None
    conversation, _ = Conversation.objects.get_or_create(
        session_id=fields.pop("session_id"), defaults={**fields, "api_key_id": api_key_id}
    )
    return conversation.pk


@transaction.atomic
def conversation_records_apply(*, conversation_pk: int, batch: Iterable[records.Record | live.LiveRecord]) -> None:
    """Store what the session produced, in order (Realtime records, or Live records and ASR outcomes)."""
    state: _Live | None = None  # a Live conversation's turns, loaded at its first Live record
    live_dialect: bool | None = None  # whether the conversation is a Live one, asked once if needed
    for record in batch:
        if state is None and isinstance(record, records.TranscriptionOutcome):
            if live_dialect is None:
                live_dialect = _live_conversation(conversation_pk)
            if live_dialect:
                state = _Live(conversation_pk)
        if isinstance(record, _LIVE_RECORDS) or (
            state is not None and isinstance(record, records.TranscriptionOutcome)
        ):
            state = state or _Live(conversation_pk)
            state.apply(record)
        elif isinstance(record, records.ConfigAccepted):
            _config_record(conversation_pk, record)
        elif isinstance(record, records.ItemStored):
            _item_store(conversation_pk, record)
        elif isinstance(record, records.ItemDeleted):
            _items(conversation_pk, record.item_id).update(deleted=True)
        elif isinstance(record, records.TranscriptionOutcome):
            _transcription_record(conversation_pk, record)
        elif isinstance(record, records.ItemTruncated):
            _items(conversation_pk, record.item_id).update(
                **model_values(ConversationItem, {"truncated_at_ms": record.audio_end_ms, "text": record.heard_text})
            )
        elif isinstance(record, CompanionOutcome):
            if state is None and live_dialect is None:
                live_dialect = _live_conversation(conversation_pk)
            clock = state.clock if state is not None else (_live_clock(conversation_pk) if live_dialect else None)
            _companion_record(conversation_pk, record, clock)
    if state is not None:
        state.save()


def conversation_end(*, conversation_pk: int, reason: str, ended_by_id: int | None = None) -> None:
    """Close the conversation once: a later end (e.g. the disconnect after a staff end) changes nothing.

    ``ended_by_id`` is the staff member who ended it from the console, stored with the end time in
    the same update so that "who" and "when" are never half-recorded.
    """
    Conversation.objects.filter(pk=conversation_pk, ended_at__isnull=True).update(
        ended_at=timezone.now(), end_reason=field_value(Conversation, "end_reason", reason), ended_by_id=ended_by_id
    )


def conversation_recordings_attach(*, conversation_pk: int, input_name: str, output_name: str) -> None:
    """Point the conversation at its recorded WAVs (already saved through the storage API)."""
    Conversation.objects.filter(pk=conversation_pk).update(
        **model_values(Conversation, {"input_audio": input_name, "output_audio": output_name})
    )


def item_content_stored(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An item's content parts as stored: their structure, without the text the item already holds.

    A part's non-empty ``text`` / ``transcript`` is replaced by ConversationItem.TEXT_IN_ITEM, so
    a long text is stored once (in ConversationItem.text), not twice.
    """
    stored = []
    for part in clean_json(content) if isinstance(content, list) else []:
        if isinstance(part, dict):
            part = {
                key: ConversationItem.TEXT_IN_ITEM if key in _TEXT_KEYS and isinstance(value, str) and value else value
                for key, value in part.items()
            }
        stored.append(part)
    return stored


_TEXT_KEYS = ("text", "transcript")


def _items(conversation_pk: int, item_id: str) -> Any:
    return ConversationItem.objects.filter(conversation_id=conversation_pk, item_id=item_key(ConversationItem, item_id))


def _config_record(conversation_pk: int, record: records.ConfigAccepted) -> None:
    _config_store(conversation_pk, record.session)


def _config_store(conversation_pk: int, session: dict[str, Any]) -> None:
    last = SessionConfig.objects.filter(conversation_id=conversation_pk).aggregate(n=Max("sequence"))["n"]
    SessionConfig.objects.create(conversation_id=conversation_pk, sequence=(last or 0) + 1, config=clean_json(session))


def _item_store(conversation_pk: int, record: records.ItemStored) -> None:
    existing = _items(conversation_pk, record.item_id).first()
    fields = model_values(
        ConversationItem,
        {
            "item_type": record.item_type,
            "role": record.role,
            "status": record.status,
            "response_id": record.response_id or "",
            "audio_ms": record.audio_ms,
        },
    )
    fields["content"] = item_content_stored(record.content)
    text = field_value(ConversationItem, "text", record.text or "")
    if existing is None:
        ConversationItem.objects.create(
            conversation_id=conversation_pk,
            item_id=item_key(ConversationItem, record.item_id),
            position=field_value(ConversationItem, "position", record.position),
            text=text,
            **fields,
        )
        return
    for name, value in fields.items():
        setattr(existing, name, value)
    if existing.truncated_at_ms is None:
        existing.text = text  # a truncation already stored what was heard; keep it
    existing.save()


def _transcription_record(conversation_pk: int, record: records.TranscriptionOutcome) -> None:
    """The ASR outcome on its user item; a completed one also becomes the item's text."""
    item, _ = ConversationItem.objects.get_or_create(
        conversation_id=conversation_pk,
        item_id=item_key(ConversationItem, record.item_id),
        defaults={"role": "user", "item_type": "message"},
    )
    fields = _transcription_fields(record)
    Transcription.objects.create(item=item, **fields)
    if record.error is None:
        item.text = fields["text"]
        item.save(update_fields=["text", "updated_at"])


# --- companion calls ----------------------------------------------------------------------------

COMPANION_MESSAGES = 20  # messages kept of each call, besides a leading system message
COMPANION_TEXT_CHARS = 4000  # of each text in them, and of each tool call's arguments
COMPANION_TOOL_CALLS = 32  # tool calls kept of one answer
COMPANION_TOOLS = 128  # tool names kept of one call


def companion_messages(messages: list[Any]) -> list[Any]:
    """The messages of a call as stored: a leading system (or developer) message and the last
    COMPANION_MESSAGES others, each string in them cut at COMPANION_TEXT_CHARS (with a note)."""
    messages = [message for message in messages if isinstance(message, dict)] if isinstance(messages, list) else []
    head: list[Any] = []
    if messages and messages[0].get("role") in ("system", "developer"):
        head, messages = messages[:1], messages[1:]
    return clean_json([_cut_strings(message) for message in head + messages[-COMPANION_MESSAGES:]])


def _cut_strings(value: Any) -> Any:
    if isinstance(value, str):
        return _cut_text(value)
    if isinstance(value, dict):
        return {key: _cut_strings(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_cut_strings(item) for item in value]
    return value


def _cut_text(text: str, limit: int = COMPANION_TEXT_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: their texts
        return " ".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _asked(messages: list[Any]) -> str:
    """The last user (or tool) message's text: what the call was about."""
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") in ("user", "tool"):
            text = _message_text(message)
            return _cut_text(f"(tool output) {text}" if message.get("role") == "tool" else text)
    return ""


def _tool_names(tools: list[Any]) -> list[str]:
    names = []
    for tool in tools[:COMPANION_TOOLS] if isinstance(tools, list) else []:
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        names.append(str(name)[:128] if name is not None else "?")
    return names


def _live_clock(conversation_pk: int) -> int:
    return ConversationItem.objects.filter(conversation_id=conversation_pk).aggregate(clock=Max("end_ms"))["clock"] or 0


def _companion_record(conversation_pk: int, record: CompanionOutcome, clock_ms: int | None = None) -> None:
    """The call and its answer (or failure) as a CompanionCall; its usage in columns of their own."""
    request = record.request
    usage = record.usage if isinstance(record.usage, dict) else {}
    failed = record.error is not None or record.error_code is not None
    tool_calls = [
        {"call_id": call.call_id, "name": call.name, "arguments": _cut_text(call.arguments)}
        for call in record.tool_calls[:COMPANION_TOOL_CALLS]
    ]
    CompanionCall.objects.create(
        conversation_id=conversation_pk,
        messages=companion_messages(request.messages),
        **model_values(
            CompanionCall,
            {
                "request_id": request.request_id,
                "purpose": request.purpose,
                "status": CompanionCall.Status.FAILED if failed else CompanionCall.Status.COMPLETED,
                "asked": _asked(request.messages),
                "message_count": len(request.messages) if isinstance(request.messages, list) else 0,
                "tools": _tool_names(request.tools),
                "tool_choice": _plain(request.tool_choice),
                "text": record.text or "",
                "tool_calls": tool_calls,
                "model": record.model or "",
                "prompt_tokens": _tokens(usage.get("prompt_tokens")),
                "completion_tokens": _tokens(usage.get("completion_tokens")),
                "total_tokens": _tokens(usage.get("total_tokens")),
                "latency_ms": max(0, record.latency_ms) if isinstance(record.latency_ms, int) else None,
                "error": record.error or "",
                "error_code": record.error_code or "",
                "context": _plain(request.context) if isinstance(request.context, dict) else {},
                "clock_ms": clock_ms,
            },
        ),
    )


def _plain(value: Any) -> Any:
    """``value`` as plain JSON data (anything else as its text), so that it cannot fail the insert."""
    return json.loads(json.dumps(value, default=str))


def _tokens(value: Any) -> int | None:
    return max(0, value) if isinstance(value, int) and not isinstance(value, bool) else None


# --- Live API sessions --------------------------------------------------------------------------

_LIVE_RECORDS = (live.LiveStarted, live.Fragment, live.Appended, live.LiveClosed)

TURN = ConversationItem.LIVE_TURN
SEGMENT = ConversationItem.LIVE_SEGMENT


def _live_conversation(conversation_pk: int) -> bool:
    return Conversation.objects.filter(pk=conversation_pk, dialect=Conversation.Dialect.LIVE).exists()


class _Live:
    """How a Live session's records become rows, with the state that needs, rebuilt from the database.

    Each ``conversation_records_apply`` call (a batch, or one record when a batch is retried record
    by record) loads what it needs from the conversation's items, so that nothing lives only in
    memory between calls:

    - **Fragments → turns.** Consecutive fragments of one speaker become one item per turn:
      item_id ``turn_<n>``, item_type ``message``, role ``user`` / ``assistant``, text the
      fragments' texts concatenated exactly as sent (their leading spaces kept), ``start_ms`` the
      first fragment's start, ``end_ms`` the latest end, ``audio_ms`` the span between. A fragment
      of the speaker of the last turn (the turn item with the highest position) extends it, in
      whichever batch it comes; a fragment of the other speaker starts turn n + 1. The open (last)
      turn is ``in_progress``, a turn is ``completed`` once the other speaker starts or the
      session closes.
    - **Appends** (``session.{instructions,thinking,commentary}.append``) are items of their own:
      item_id ``append_<n>``, item_type the kind, role ``system`` for instructions (none for
      thinking and commentary), the content as text, ``start_ms = end_ms = at_ms``, and
      ``content`` ``[{"type": "delegation", "delegation_id": ...}]`` when it named one. An append
      does not end the open turn.
    - **LiveStarted**: the resolved session is a SessionConfig (the next sequence: 1 at the start);
      the conversation's dialect becomes ``live``, its model_type the one the session selected and
      requested_model the session's ``model``.
    - **LiveClosed**: the conversation's ``close_reason`` (close_requested, expired,
      connection_lost, ...) and ``usage`` ``{"seconds", "frames"}``; the final resource becomes one
      more SessionConfig if it differs from the last one (a session.update changed it); the open
      turn is completed. ``end_reason`` and ``ended_at`` stay the recorder's (``conversation_end``).
    - **TranscriptionOutcome** (the ASR result of a user segment; its item_id is the segment id
      ``seg_...``): the LiveSession hands it on just before the user fragments made of its text.
      It is stored as a Transcription on an item of its own (item_id the segment id, item_type
      ``input_audio_segment``, role ``user``, no text: the text is in the Transcription and in the
      turn, ``audio_ms`` the audio transcribed, placed at the session clock reached so far). A
      completed outcome with text is *pending* (status ``in_progress``): the next user fragment
      stored moves its Transcription to the user turn that fragment goes into, and the segment
      item is deleted. A failed or blank outcome (no fragments follow), or a pending one that
      another outcome overtook before any user fragment came (two segments transcribed at once)
      or that came after the close, stays on its segment item, marked ``failed`` or
      ``completed``: nothing is ever attached to a turn it may not belong to.

    Text goes through clean_text (NULs removed, lone surrogates replaced); identifiers, item
    types and reasons are cut to their columns, integers clamped to theirs, JSON cleaned.
    """

    def __init__(self, conversation_pk: int) -> None:
        self.pk = conversation_pk
        items = ConversationItem.objects.filter(conversation_id=conversation_pk)
        known = items.aggregate(
            position=Max("position"),
            clock=Max("end_ms"),
            turns=Count("pk", filter=Q(item_type=TURN, item_id__startswith="turn_")),
            appends=Count("pk", filter=Q(item_id__startswith="append_")),
        )
        self.position: int = known["position"] or 0  # the last position used
        self.clock: int = known["clock"] or 0  # the latest session-clock time stored
        self.turns: int = known["turns"]
        self.appends: int = known["appends"]
        self.turn: ConversationItem | None = (
            items.filter(item_type=TURN, item_id__startswith="turn_").order_by("-position").first()
        )
        self.pending: ConversationItem | None = (
            items.filter(item_type=SEGMENT, status="in_progress").order_by("-position").first()
        )
        self.changed = False  # self.turn has changes not saved yet
        self.closed = Conversation.objects.filter(pk=conversation_pk).exclude(close_reason="").exists()

    def apply(self, record: live.LiveRecord | records.TranscriptionOutcome) -> None:
        if isinstance(record, live.Fragment):
            self.fragment(record)
        elif isinstance(record, live.Appended):
            self.appended(record)
        elif isinstance(record, records.TranscriptionOutcome):
            self.transcription(record)
        elif isinstance(record, live.LiveStarted):
            self.started(record)
        elif isinstance(record, live.LiveClosed):
            self.closed_with(record)

    def save(self) -> None:
        """Write the open turn's changes (fragments extend it in memory, saved once per batch)."""
        if self.turn is not None and self.changed:
            self.turn.save(update_fields=["text", "end_ms", "audio_ms", "status", "updated_at"])
        self.changed = False

    def _next_position(self) -> int:
        self.position = field_value(ConversationItem, "position", self.position + 1)
        return self.position

    def _ms(self, value: int) -> int:
        return field_value(ConversationItem, "start_ms", max(0, value))

    def fragment(self, record: live.Fragment) -> None:
        text = clean_text(record.text)
        start = self._ms(record.start_ms)
        end = max(start, self._ms(record.end_ms))
        turn = self.turn
        if turn is not None and turn.role == record.speaker:
            turn.text += text
            turn.end_ms = max(turn.end_ms or 0, end)
            turn.audio_ms = field_value(ConversationItem, "audio_ms", turn.end_ms - (turn.start_ms or 0))
            self.changed = True
        else:
            if turn is not None:
                turn.status = "completed"
                self.changed = True
                self.save()
            self.turns += 1
            turn = self.turn = ConversationItem.objects.create(
                conversation_id=self.pk,
                item_id=f"turn_{self.turns}",
                item_type=TURN,
                role=record.speaker,
                status="in_progress",
                text=text,
                start_ms=start,
                end_ms=end,
                audio_ms=end - start,
                position=self._next_position(),
            )
        self.clock = max(self.clock, end)
        if record.speaker == "user" and self.pending is not None:
            Transcription.objects.filter(item=self.pending).update(item=turn)
            self.pending.delete()
            self.pending = None

    def appended(self, record: live.Appended) -> None:
        at = self._ms(record.at_ms)
        self.appends += 1
        content = (
            [] if record.delegation_id is None else [{"type": "delegation", "delegation_id": record.delegation_id}]
        )
        ConversationItem.objects.create(
            conversation_id=self.pk,
            item_id=f"append_{self.appends}",
            position=self._next_position(),
            start_ms=at,
            end_ms=at,
            text=clean_text(record.content),
            content=clean_json(content),
            **model_values(
                ConversationItem,
                {
                    "item_type": record.kind,
                    "role": "system" if record.kind == "instructions" else "",
                    "status": "completed",
                },
            ),
        )
        self.clock = max(self.clock, at)

    def transcription(self, record: records.TranscriptionOutcome) -> None:
        failed = record.error is not None
        waits = not failed and bool(record.text.strip()) and not self.closed  # its user fragments follow
        item, created = ConversationItem.objects.get_or_create(
            conversation_id=self.pk,
            item_id=item_key(ConversationItem, record.item_id),
            defaults={
                "role": "user",
                "item_type": SEGMENT,
                "position": self._next_position(),
                "start_ms": self.clock,
                "end_ms": self.clock,
                "audio_ms": field_value(ConversationItem, "audio_ms", round(max(record.audio_seconds, 0.0) * 1000)),
            },
        )
        if not created and item.item_type != SEGMENT:
            waits = False  # an id already taken (never a segment's): the outcome stays where it is
        Transcription.objects.create(item=item, **_transcription_fields(record))
        if item.item_type == SEGMENT:
            if waits and self.pending is not None and self.pending.pk != item.pk:
                self.pending.status = "completed"  # overtaken: its fragments cannot be told apart now
                self.pending.save(update_fields=["status", "updated_at"])
            item.status = "in_progress" if waits else ("failed" if failed else "completed")
            item.save(update_fields=["status", "updated_at"])
            if waits:
                self.pending = item
            elif self.pending is not None and self.pending.pk == item.pk:
                self.pending = None

    def started(self, record: live.LiveStarted) -> None:
        _config_store(self.pk, record.session)
        model = record.session.get("model")
        fields: dict[str, Any] = {"dialect": Conversation.Dialect.LIVE, "model_type": record.model_type}
        if isinstance(model, str):
            fields["requested_model"] = model
        Conversation.objects.filter(pk=self.pk).update(**model_values(Conversation, fields))

    def closed_with(self, record: live.LiveClosed) -> None:
        usage = {"seconds": record.seconds, "frames": record.frames}
        Conversation.objects.filter(pk=self.pk).update(
            **model_values(Conversation, {"close_reason": record.reason, "usage": usage})
        )
        last = SessionConfig.objects.filter(conversation_id=self.pk).order_by("-sequence").first()
        if last is None or last.config != clean_json(record.session):
            _config_store(self.pk, record.session)
        if self.turn is not None and self.turn.status != "completed":
            self.turn.status = "completed"
            self.changed = True
        if self.pending is not None:
            self.pending.status = "completed"
            self.pending.save(update_fields=["status", "updated_at"])
            self.pending = None
        self.closed = True


def _transcription_fields(record: records.TranscriptionOutcome) -> dict[str, Any]:
    failed = record.error is not None
    return model_values(
        Transcription,
        {
            "text": record.text or "",
            "model": record.model or "",
            "language": record.language or "",
            "latency_ms": record.latency_ms,
            "status": Transcription.Status.FAILED if failed else Transcription.Status.COMPLETED,
            "error": "" if not failed else f"{record.error_code}: {record.error}",
        },
    )
