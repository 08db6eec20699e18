"""The conversation's items, in order, as the client sees them (rendered for the session's dialect).

Bounded by the session's limits: at most ``max_items`` items, and at most ``max_bytes`` of items
the client created (as JSON). A client item beyond either is refused with an `error`; an item the
server makes (a committed audio turn, a response) always enters, and the oldest item leaves memory
instead (it lives on in the database).
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ProtocolError
from .limits import SessionLimits, json_bytes, setting
from .validation import shown


class Conversation:
    def __init__(self, limits: SessionLimits | None = None) -> None:
        self.limits = limits or SessionLimits()
        self._items: list[dict[str, Any]] = []
        self._client_bytes: dict[str, int] = {}  # item id -> JSON size, for client-created items

    def __contains__(self, item_id: str) -> bool:
        return any(item["id"] == item_id for item in self._items)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def last_id(self) -> str | None:
        return self._items[-1]["id"] if self._items else None

    @property
    def client_bytes(self) -> int:
        """What the client-created items held now take, as JSON."""
        return sum(self._client_bytes.values())

    def position(self, item_id: str) -> int:
        for index, item in enumerate(self._items):
            if item["id"] == item_id:
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
            index = len(self._items)
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
        self._items.insert(index, copy.deepcopy(item))
        if from_client:
            self._client_bytes[item["id"]] = size
        while len(self._items) > self.limits.max_items:  # a server item: the oldest leaves memory
            dropped = self._items.pop(0)
            self._client_bytes.pop(dropped["id"], None)
            index -= 1
        return self._items[index - 1]["id"] if index > 0 else None

    def _check_room(self, size: int) -> None:
        limits = self.limits
        if len(self._items) >= limits.max_items:
            raise ProtocolError(
                "conversation_full",
                f"The conversation already holds {len(self._items)} items; this server's limit is "
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

    def get(self, item_id: str, code: str, action: str) -> dict[str, Any]:
        for item in self._items:
            if item["id"] == item_id:
                return item
        raise ProtocolError(
            code, f"Error {action} item: the item with id '{shown(item_id)}' does not exist.", param="item_id"
        )

    def delete(self, item_id: str) -> None:
        item = self.get(item_id, "item_delete_invalid_item_id", "deleting")
        self._items.remove(item)
        self._client_bytes.pop(item_id, None)

    def previous_id(self, item_id: str) -> str | None:
        position = self.position(item_id)
        return self._items[position - 1]["id"] if position > 0 else None

    def snapshot(self, item_id: str) -> dict[str, Any]:
        """A copy of the item for the client, without the server's private ``_`` bookkeeping keys."""
        item = self.get(item_id, "item_retrieve_invalid_item_id", "retrieving")
        return {k: copy.deepcopy(v) for k, v in item.items() if not k.startswith("_")}
