"""The conversation's items, in order, each with the server's bookkeeping kept beside it.

Why a module of its own: the session decides when items come and go; this is where they live and
what is known about each. Every item is an `Entry`: the item exactly as the client sees it
(rendered for the session's dialect, never carrying a server key) plus what the server keeps about
it: the JSON size of a client-created item (its budget), and for a model's item the audio sent, the
text pieces by frame, and after `conversation.item.truncate` what the listener heard.

Bounded by the session's limits: at most ``max_items`` items, and at most ``max_bytes`` of items
the client created (as JSON). A client item beyond either is refused with an `error`; an item the
server makes (a committed audio turn, a response) always enters, and the oldest item leaves memory
instead (it lives on in the database).
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import limits, records
from .audio import FRAME_MS
from .errors import ProtocolError
from .ids import new_id
from .limits import SessionLimits, json_bytes, setting
from .validation import shown, string_too_long

# Ids a client gives its items are stored in a column of this size (transcripts.models).
MAX_ITEM_ID_LENGTH = 64


class Spoken(Protocol):
    """What a model's item has said: its audio's length and its text pieces, each with its frame."""

    @property
    def audio_ms(self) -> int: ...

    @property
    def pieces(self) -> list[tuple[int, str]]: ...


def heard_text(pieces: Sequence[tuple[int, str]], audio_end_ms: int) -> str:
    """What the listener heard when playback stopped at ``audio_end_ms``: the pieces begun before it."""
    return "".join(text for frame, text in pieces if frame * FRAME_MS < audio_end_ms)


def user_audio_item(item_id: str) -> dict[str, Any]:
    """The item of a committed user turn, announced before its transcript is known."""
    return {
        "id": item_id,
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_audio", "transcript": None}],
        "object": "realtime.item",
    }


def client_item(item: dict[str, Any], declared: Collection[str], session_limits: SessionLimits) -> dict[str, Any]:
    """The item of `conversation.item.create` as it enters: an id if it has none, and `object` and
    `status` filled in as OpenAI does, where the item's type (``declared`` fields) has them."""
    item = dict(item)
    if not item.get("id"):
        item["id"] = new_id("item")
    if len(item["id"]) > MAX_ITEM_ID_LENGTH:
        raise string_too_long(("item", "id"), item["id"], MAX_ITEM_ID_LENGTH)
    if "object" in declared:  # MCP items have neither
        item.setdefault("object", "realtime.item")
    if "status" in declared:
        item.setdefault("status", "completed")
    limits.check_item_text(item, session_limits)
    return item


@dataclass
class Entry:
    """One item of the conversation and what the server knows about it."""

    item: dict[str, Any]  # as the client sees it: only protocol fields
    client_bytes: int = 0  # JSON size of a client-created item, counted against max_conversation_bytes
    audio_ms: int = 0  # the model's audio sent for this item
    pieces: list[tuple[int, str]] = field(default_factory=list)  # (frame index, text) as streamed
    heard: str | None = None  # after a truncation: the text heard up to its audio_end_ms
    # A user audio item's words as the server's ASR heard them, also when the client did not ask
    # for transcription (the companion reads them; the item the client sees keeps `null`).
    transcript: str | None = None

    @property
    def id(self) -> str:
        return str(self.item["id"])

    def truncate(self, content_index: int, audio_end_ms: int, live: Spoken | None = None) -> str:
        """Cut the item's audio at ``audio_end_ms``; its transcript becomes what was heard (returned).

        ``live`` is the open response still saying this item: its audio and pieces so far count.
        """
        if self.item.get("role") != "assistant":
            raise ProtocolError("invalid_value", "Only assistant message items can be truncated.", param="item_id")
        if content_index != 0:
            raise ProtocolError(
                "invalid_value", "Invalid value for 'content_index': this item has one part.", param="content_index"
            )
        spoken: Spoken = live if live is not None else self
        if audio_end_ms < 0 or audio_end_ms > spoken.audio_ms:
            raise ProtocolError(
                "invalid_value",
                f"Audio content of {spoken.audio_ms}ms is shorter than {audio_end_ms}ms.",
                param="audio_end_ms",
            )
        self.heard = heard_text(spoken.pieces, audio_end_ms)
        for part in self.item.get("content", []):
            if "transcript" in part:
                part["transcript"] = self.heard
        return self.heard


class Conversation:
    def __init__(self, limits: SessionLimits | None = None) -> None:
        self.limits = limits or SessionLimits()
        self._entries: list[Entry] = []
        self._stored = 0  # items handed out to be stored: the position of the next record

    def __contains__(self, item_id: str) -> bool:
        return any(entry.id == item_id for entry in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def last_id(self) -> str | None:
        return self._entries[-1].id if self._entries else None

    @property
    def client_bytes(self) -> int:
        """What the client-created items held now take, as JSON."""
        return sum(entry.client_bytes for entry in self._entries)

    def position(self, item_id: str) -> int:
        for index, entry in enumerate(self._entries):
            if entry.id == item_id:
                return index
        raise KeyError(item_id)

    def insert(
        self, item: dict[str, Any], previous_item_id: str | None = None, *, from_client: bool = False
    ) -> str | None:
        """Add an item after ``previous_item_id`` (None: at the end, "root": first); return its predecessor.

        The conversation keeps its own copy: the caller's dict also goes out in events, and later
        changes to the stored item (completion, truncation) must not rewrite events already handed out.
        """
        if item["id"] in self:
            raise ProtocolError("invalid_value", f"Item with id '{shown(item['id'])}' already exists.", param="item.id")
        if previous_item_id is None:
            index = len(self._entries)
        elif previous_item_id == "root":
            index = 0
        else:
            try:
                index = self.position(previous_item_id) + 1
            except KeyError:
                raise ProtocolError(
                    "invalid_value",
                    f"Error adding item: the previous item with id '{shown(previous_item_id)}' does not exist.",
                    param="previous_item_id",
                ) from None
        size = json_bytes(item) if from_client else 0
        if from_client:
            self._check_room(size)
        self._entries.insert(index, Entry(copy.deepcopy(item), client_bytes=size))
        while len(self._entries) > self.limits.max_items:  # a server item: the oldest leaves memory
            self._entries.pop(0)
            index -= 1
        return self._entries[index - 1].id if index > 0 else None

    def _check_room(self, size: int) -> None:
        limits = self.limits
        if len(self._entries) >= limits.max_items:
            raise ProtocolError(
                "conversation_full",
                f"The conversation already holds {len(self._entries)} items; this server's limit is "
                f"{limits.max_items} items ({setting('max_items')}). Delete items to add more.",
                param="item",
            )
        held = self.client_bytes
        if held + size > limits.max_conversation_bytes:
            raise ProtocolError(
                "conversation_too_large",
                f"The item is {size} bytes as JSON and the conversation's client-created items already take "
                f"{held}, over this server's limit of {limits.max_conversation_bytes} bytes "
                f"({setting('max_conversation_bytes')}). Delete items to add more.",
                param="item",
            )

    def entry(self, item_id: str, code: str, action: str) -> Entry:
        """The item's entry; a ProtocolError with ``code`` (while ``action`` it) when there is none."""
        for entry in self._entries:
            if entry.id == item_id:
                return entry
        raise ProtocolError(
            code, f"Error {action} item: the item with id '{shown(item_id)}' does not exist.", param="item_id"
        )

    def delete(self, item_id: str) -> None:
        self._entries.remove(self.entry(item_id, "item_delete_invalid_item_id", "deleting"))

    def previous_id(self, item_id: str) -> str | None:
        position = self.position(item_id)
        return self._entries[position - 1].id if position > 0 else None

    def snapshot(self, item_id: str) -> dict[str, Any]:
        """A copy of the item for the client."""
        return copy.deepcopy(self.entry(item_id, "item_retrieve_invalid_item_id", "retrieving").item)

    def transcribed(self, item_id: str, transcript: str, *, visible: bool = True) -> None:
        """The ASR text of a user audio item, if the item is still here (the client may have deleted it);
        ``visible``: the client asked for it, so the item it sees says it too."""
        for entry in self._entries:
            if entry.id == item_id:
                entry.transcript = transcript
                if not visible:
                    continue
                for part in entry.item.get("content", []):
                    if part.get("type") == "input_audio":
                        part["transcript"] = transcript

    def items(self) -> list[dict[str, Any]]:
        """The items as they stand (not copies: read only)."""
        return [entry.item for entry in self._entries]

    def history(self) -> list[tuple[dict[str, Any], str | None]]:
        """Each item with the server's transcript of it, oldest first (read only)."""
        return [(entry.item, entry.transcript) for entry in self._entries]

    def replace(self, item: dict[str, Any]) -> str | None:
        """An item the server made in its final state (a copy); return its predecessor."""
        entry = self.entry(item["id"], "invalid_value", "finishing")
        entry.item = copy.deepcopy(item)
        return self.previous_id(entry.id)

    def finish(self, item: dict[str, Any], spoken: Spoken, heard: str | None) -> str | None:
        """A model's item in its final state (a copy: later truncations must not rewrite events already
        sent), with what it said; return its predecessor."""
        entry = self.entry(item["id"], "invalid_value", "finishing")
        entry.item = copy.deepcopy(item)
        entry.audio_ms = spoken.audio_ms
        entry.pieces = list(spoken.pieces)
        entry.heard = heard
        return self.previous_id(entry.id)

    def record(
        self, item: dict[str, Any], *, audio_ms: int = 0, response_id: str | None = None, heard: str | None = None
    ) -> records.ItemStored:
        """The item to store as it stands now; ``heard`` is its text after a truncation."""
        self._stored += 1
        content = [dict(part) for part in item.get("content", [])]
        # Stored exactly as streamed (leading spaces included): the record is what was said.
        texts = [str(part.get("text") or part.get("transcript") or "") for part in content]
        text = " ".join(t for t in texts if t) or str(item.get("output") or item.get("arguments") or "")
        return records.ItemStored(
            item_id=item["id"],
            item_type=item.get("type", "message"),
            role=item.get("role", ""),
            status=item.get("status", "completed"),
            text=heard if heard is not None else text,
            position=self._stored,
            response_id=response_id,
            audio_ms=audio_ms,
            content=content,
        )
