"""The conversation's items, in order, as the client sees them (rendered for the session's dialect)."""

from __future__ import annotations

import copy
from typing import Any

from .errors import ProtocolError

# Items kept in memory for retrieve/truncate/delete; older ones live on in the database only.
MAX_ITEMS = 1000


class Conversation:
    def __init__(self) -> None:
        self._items: list[dict[str, Any]] = []

    def __contains__(self, item_id: str) -> bool:
        return any(item["id"] == item_id for item in self._items)

    @property
    def last_id(self) -> str | None:
        return self._items[-1]["id"] if self._items else None

    def position(self, item_id: str) -> int:
        for index, item in enumerate(self._items):
            if item["id"] == item_id:
                return index
        raise KeyError(item_id)

    def insert(self, item: dict[str, Any], previous_item_id: str | None = None) -> str | None:
        """Add an item after ``previous_item_id`` (None: at the end, "root": first); return its predecessor.

        The conversation keeps its own copy: the caller's dict also goes out in events, and later
        changes to the stored item (completion, truncation) must not rewrite events already handed out.
        """
        if item["id"] in self:
            raise ProtocolError(
                "invalid_value", f"Item with id '{item['id']}' already exists.", param="item.id"
            )
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
                    f"Error adding item: the previous item with id '{previous_item_id}' does not exist.",
                    param="previous_item_id",
                ) from None
        self._items.insert(index, copy.deepcopy(item))
        if len(self._items) > MAX_ITEMS:
            del self._items[0]
            index -= 1
        return self._items[index - 1]["id"] if index > 0 else None

    def get(self, item_id: str, code: str, action: str) -> dict[str, Any]:
        for item in self._items:
            if item["id"] == item_id:
                return item
        raise ProtocolError(
            code, f"Error {action} item: the item with id '{item_id}' does not exist.", param="item_id"
        )

    def delete(self, item_id: str) -> None:
        item = self.get(item_id, "item_delete_invalid_item_id", "deleting")
        self._items.remove(item)

    def previous_id(self, item_id: str) -> str | None:
        position = self.position(item_id)
        return self._items[position - 1]["id"] if position > 0 else None

    def snapshot(self, item_id: str) -> dict[str, Any]:
        """A copy of the item for the client, without the server's private ``_`` bookkeeping keys."""
        item = self.get(item_id, "item_retrieve_invalid_item_id", "retrieving")
        return {k: copy.deepcopy(v) for k, v in item.items() if not k.startswith("_")}
