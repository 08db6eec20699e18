"""Writes to the conversation store, one small function per action (entity, then action).

Called from async code through database_sync_to_async by the session recorder, in batches,
never on the audio path. Each function is one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from voice.protocol import records

from .models import Conversation, ConversationItem, SessionConfig, Transcription


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
    conversation = Conversation.objects.create(
        session_id=session_id,
        conversation_id=conversation_id,
        dialect=dialect,
        model_name=model_name,
        model_type=model_type,
        requested_model=requested_model,
        client_address=client_address,
        api_key_id=api_key_id,
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
            ConversationItem.objects.filter(conversation_id=conversation_pk, item_id=record.item_id).update(deleted=True)
        elif isinstance(record, records.TranscriptionOutcome):
            _transcription_record(conversation_pk, record)
        elif isinstance(record, records.ItemTruncated):
            ConversationItem.objects.filter(conversation_id=conversation_pk, item_id=record.item_id).update(
                truncated_at_ms=record.audio_end_ms, text=record.heard_text
            )


def conversation_end(*, conversation_pk: int, reason: str, ended_by_id: int | None = None) -> None:
    """Close the conversation once: a later end (e.g. the disconnect after a staff end) changes nothing.

    ``ended_by_id`` is the staff member who ended it from the console, stored with the end time in
    the same update so that "who" and "when" are never half-recorded.
    """
    Conversation.objects.filter(pk=conversation_pk, ended_at__isnull=True).update(
        ended_at=timezone.now(), end_reason=reason, ended_by_id=ended_by_id
    )


def conversation_recordings_attach(*, conversation_pk: int, input_name: str, output_name: str) -> None:
    """Point the conversation at its recorded WAVs (already saved through the storage API)."""
    Conversation.objects.filter(pk=conversation_pk).update(input_audio=input_name, output_audio=output_name)


def _config_record(conversation_pk: int, record: records.ConfigAccepted) -> None:
    last = SessionConfig.objects.filter(conversation_id=conversation_pk).aggregate(n=Max("sequence"))["n"]
    SessionConfig.objects.create(conversation_id=conversation_pk, sequence=(last or 0) + 1, config=record.session)


def _item_store(conversation_pk: int, record: records.ItemStored) -> None:
    existing = ConversationItem.objects.filter(conversation_id=conversation_pk, item_id=record.item_id).first()
    fields = {
        "item_type": record.item_type,
        "role": record.role,
        "status": record.status,
        "response_id": record.response_id or "",
        "audio_ms": record.audio_ms,
        "content": record.content,
    }
    if existing is None:
        ConversationItem.objects.create(
            conversation_id=conversation_pk, item_id=record.item_id, position=record.position, text=record.text, **fields
        )
        return
    for name, value in fields.items():
        setattr(existing, name, value)
    if existing.truncated_at_ms is None:
        existing.text = record.text  # a truncation already stored what was heard; keep it
    existing.save()


def _transcription_record(conversation_pk: int, record: records.TranscriptionOutcome) -> None:
    """The ASR outcome on its user item; a completed one also becomes the item's text."""
    item, _ = ConversationItem.objects.get_or_create(
        conversation_id=conversation_pk, item_id=record.item_id, defaults={"role": "user", "item_type": "message"}
    )
    failed = record.error is not None
    Transcription.objects.create(
        item=item,
        text=record.text,
        model=record.model,
        language=record.language or "",
        latency_ms=record.latency_ms,
        status=Transcription.Status.FAILED if failed else Transcription.Status.COMPLETED,
        error="" if not failed else f"{record.error_code}: {record.error}",
    )
    if not failed:
        item.text = record.text
        item.save(update_fields=["text", "updated_at"])
