"""What is kept of each session: the conversation, its items, transcriptions, configs and companion calls.

A Realtime session (dialects ``ga`` and ``beta``) stores the protocol's own items. A Live API
session (dialect ``live``) has no items of its own: its transcript fragments are joined into turns
(one item per run of one speaker's fragments) and its text appends are items of their own, each
placed on the session clock (``start_ms`` / ``end_ms``, milliseconds since ``session.start``).
See transcripts.services for how Live records become rows.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Conversation(models.Model):
    """One Realtime or Live session from connect to disconnect."""

    # The end_reason of a session a staff member ended from the console; ended_by says who.
    ENDED_BY_STAFF = "ended_by_staff"

    class Dialect(models.TextChoices):
        GA = "ga", "GA"
        BETA = "beta", "beta (realtime=v1)"
        LIVE = "live", "Live API"

    session_id = models.CharField(max_length=64, unique=True)
    conversation_id = models.CharField(max_length=64, db_index=True)
    dialect = models.CharField(max_length=8, choices=Dialect.choices)
    model_name = models.CharField(max_length=255, help_text="The Moshi checkpoint that answered.")
    model_type = models.CharField(max_length=16, default="sft")
    requested_model = models.CharField(max_length=255, blank=True, help_text="The model the client asked for.")
    client_address = models.CharField(max_length=64, blank=True)
    api_key = models.ForeignKey(
        "voice.ApiKey",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="conversations",
        help_text="The key that opened the session (none on an open endpoint).",
    )
    input_audio = models.FileField(upload_to="recordings/", blank=True, help_text="The client's audio (recording on).")
    output_audio = models.FileField(upload_to="recordings/", blank=True, help_text="What the server sent back.")
    started_at = models.DateTimeField(auto_now_add=True, db_index=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=64, blank=True)
    close_reason = models.CharField(
        max_length=32,
        blank=True,
        verbose_name="Live close reason",
        help_text="Why the Live session closed, as its session.closed said (close_requested, expired, "
        "connection_lost, ...); end_reason is why the connection ended.",
    )
    usage = models.JSONField(
        default=dict,
        blank=True,
        help_text="What the session used, stored at its close (Live: seconds and model frames).",
    )
    ended_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The staff member who ended the session from the console (end reason ended_by_staff).",
    )

    class Meta:
        ordering = ["-started_at"]
        permissions = [("end_session", "Can end a live session from the console")]

    def __str__(self) -> str:
        return f"{self.session_id} ({self.started_at:%Y-%m-%d %H:%M})"


class ConversationItem(models.Model):
    """A user or assistant turn (or any other item), with the text that was said or heard.

    Live items also have their place on the session clock: a turn from its first fragment's start
    to its last fragment's end, an append at the moment it was accepted.
    """

    # What a content part's text or transcript is stored as: the text itself is kept once, in `text`.
    TEXT_IN_ITEM = "(in item text)"
    # Live items' types (an append's item_type is its kind: instructions, thinking or commentary).
    LIVE_TURN = "message"  # one speaker's consecutive transcript fragments; item_id turn_<n>
    LIVE_SEGMENT = "input_audio_segment"  # a user segment's transcription not (yet) on a turn; item_id seg_...

    class Role(models.TextChoices):
        USER = "user", "user"
        ASSISTANT = "assistant", "assistant"
        SYSTEM = "system", "system"
        NONE = "", "(none)"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="items")
    item_id = models.CharField(max_length=64)
    item_type = models.CharField(max_length=32, default="message")
    role = models.CharField(max_length=16, choices=Role.choices, blank=True)
    status = models.CharField(max_length=16, default="completed")
    text = models.TextField(blank=True, help_text="Transcript or text; for truncated audio, what was heard.")
    position = models.PositiveIntegerField(default=0)
    response_id = models.CharField(max_length=64, blank=True)
    audio_ms = models.PositiveIntegerField(default=0)
    truncated_at_ms = models.PositiveIntegerField(null=True, blank=True)
    start_ms = models.PositiveIntegerField(
        null=True, blank=True, help_text="Live: where the item starts on the session clock (ms since session.start)."
    )
    end_ms = models.PositiveIntegerField(
        null=True, blank=True, help_text="Live: where the item ends on the session clock."
    )
    deleted = models.BooleanField(default=False, help_text="Deleted from the live conversation by the client.")
    content = models.JSONField(
        default=list,
        blank=True,
        help_text=f"The content parts; each part's text or transcript is stored once, as the item's text ({TEXT_IN_ITEM!r} here).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["conversation", "position"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "item_id"], name="unique_item_per_conversation"),
        ]

    def __str__(self) -> str:
        return f"{self.role or self.item_type}: {_text_head(self)[:60]}"


class Transcription(models.Model):
    """One input-audio transcription attempt for a user item (its ASR result or failure)."""

    class Status(models.TextChoices):
        COMPLETED = "completed", "completed"
        FAILED = "failed", "failed"

    item = models.ForeignKey(ConversationItem, on_delete=models.CASCADE, related_name="transcriptions")
    text = models.TextField(blank=True)
    model = models.CharField(max_length=128, blank=True)
    language = models.CharField(max_length=16, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.status}: {_text_head(self)[:60]}"


class SessionConfig(models.Model):
    """Every accepted session configuration (the one at connect, then each session.update)."""

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="configs")
    sequence = models.PositiveIntegerField()
    config = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["conversation", "sequence"]

    def __str__(self) -> str:
        return f"config #{self.sequence} of {self.conversation_id}"


class CompanionCall(models.Model):
    """One call to the companion model: what it was asked (bounded) and what it answered, or its failure.

    ``messages`` keeps the system message and the last COMPANION_MESSAGES of the others, each text
    cut at COMPANION_TEXT_CHARS (``message_count`` says how many were sent); ``asked`` is the last
    user (or tool) message's text, for lists and the timeline.
    """

    class Status(models.TextChoices):
        COMPLETED = "completed", "completed"
        FAILED = "failed", "failed"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="companion_calls")
    request_id = models.CharField(max_length=64)
    purpose = models.CharField(max_length=32, blank=True, help_text="What it answered: turn, response.create, ...")
    status = models.CharField(max_length=16, choices=Status.choices)
    asked = models.TextField(blank=True, help_text="The last user (or tool) message it was sent.")
    messages = models.JSONField(default=list, blank=True, help_text="The chat messages it was sent (bounded).")
    message_count = models.PositiveIntegerField(default=0, help_text="How many messages were sent.")
    tools = models.JSONField(default=list, blank=True, help_text="The names of the tools it was offered.")
    tool_choice = models.JSONField(null=True, blank=True)
    text = models.TextField(blank=True, help_text="The text it answered.")
    tool_calls = models.JSONField(
        default=list, blank=True, help_text="The tool calls it answered: call_id, name, arguments."
    )
    model = models.CharField(max_length=128, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    total_tokens = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    context = models.JSONField(
        default=dict, blank=True, help_text="The protocol's own bookkeeping (a response id, ...)."
    )
    clock_ms = models.PositiveIntegerField(
        null=True, blank=True, help_text="Live: the session clock reached when the answer was stored."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["conversation", "created_at", "pk"]

    def __str__(self) -> str:
        return f"{self.purpose or 'companion'} {self.status}: {_text_head(self)[:60]}"


def _text_head(obj: models.Model) -> str:
    """The start of ``obj.text``: the admin's lists load only its head (``text_head``), not all of it."""
    head = obj.__dict__.get("text_head")
    return head if head is not None else obj.text
