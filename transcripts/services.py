"""Writes to the conversation store, one small function per action (entity, then action).

Called from async code through database_sync_to_async by the session recorder, in batches,
never on the audio path. Each function is one transaction. Every value passes through
transcripts.sanitize first (cut to its column, NUL characters removed), so what a client sends
cannot make a write fail.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from voice.protocol import records

from .models import Conversation, ConversationItem, SessionConfig, Transcription
from .sanitize import clean_json, field_value, item_key, model_values


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
def conversation_records_apply(*, conversation_pk: int, batch: Iterable[records.Record]) -> None:
    """Store what the session produced, in order."""
    for record in batch:
        if isinstance(record, records.ConfigAccepted):
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
    last = SessionConfig.objects.filter(conversation_id=conversation_pk).aggregate(n=Max("sequence"))["n"]
    SessionConfig.objects.create(
        conversation_id=conversation_pk, sequence=(last or 0) + 1, config=clean_json(record.session)
    )


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
    failed = record.error is not None
    fields = model_values(
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
    Transcription.objects.create(item=item, **fields)
    if not failed:
        item.text = fields["text"]
        item.save(update_fields=["text", "updated_at"])
