"""Values made storable before they reach the database, in one place.

What a client sends ends up in the store: its requested model, item ids, texts, its whole session
config. PostgreSQL refuses a string longer than its column (SQLite does not check), a NUL
character in text and in jsonb (also inside JSON strings, as \\u0000), and the UTF-8 encoder
refuses lone surrogates (JSON's "\\ud800"). One refused value fails the whole insert, so every
write in transcripts.services goes through ``model_values`` (or ``clean_json``) first:

- str values lose their NUL characters, and lone surrogates become U+FFFD;
- a CharField's value is cut to the field's max_length, read from the model;
  ``distinct_key`` cuts identifiers (item ids) so that two long ids stay two ids;
- integers are clamped to their column's range (PostgreSQL's, which SQLite's contains);
- JSON values are cleaned recursively, keys and strings alike; NaN and Infinity (which Python's
  json accepts and jsonb refuses) become null.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

from django.db import models
from django.db.backends.base.operations import BaseDatabaseOperations

_NUL = "\x00"
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(value: str) -> str:
    """``value`` without NUL characters and with any lone surrogate replaced."""
    if _NUL in value:
        value = value.replace(_NUL, "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = _SURROGATE.sub("\ufffd", value)
    return value


def clean_json(value: Any) -> Any:
    """A JSON value with every string and key cleaned (PostgreSQL's jsonb refuses \\u0000), NaN and
    Infinity made null."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(key)): clean_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # Python's json reads NaN and Infinity; jsonb refuses them
    return value


def cut(value: str, max_length: int) -> str:
    return value if len(value) <= max_length else value[:max_length]


def distinct_key(value: str, max_length: int) -> str:
    """``value`` cut to ``max_length`` in a way that keeps different long values different.

    Short values are unchanged; a long one keeps its head and ends in a hash of the whole, so
    every record naming the same long id (stored, truncated, transcribed) finds the same row.
    """
    value = clean_text(value)
    if len(value) <= max_length:
        return value
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:12]
    return f"{value[: max_length - len(digest) - 1]}~{digest}"


def model_values(model: type[models.Model], values: dict[str, Any], *, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """``values`` (field name -> value) made fit for ``model``'s columns.

    ``keys`` names the CharFields that identify a row (cut with ``distinct_key``).
    """
    cleaned: dict[str, Any] = {}
    for name, value in values.items():
        field = model._meta.get_field(name)
        cleaned[name] = _field_value(field, value, distinct=name in keys)
    return cleaned


def field_value(model: type[models.Model], name: str, value: Any) -> Any:
    """One value made fit for ``model``'s field ``name``."""
    return _field_value(model._meta.get_field(name), value, distinct=False)


def item_key(model: type[models.Model], value: str | None) -> str:
    """An item id as ``model``'s ``item_id`` column stores it."""
    return distinct_key(value or "", model._meta.get_field("item_id").max_length)


def _field_value(field: Any, value: Any, *, distinct: bool) -> Any:
    if value is None:
        # None in a column that takes no NULL: the empty string for text, else the database's refusal
        return "" if not field.null and isinstance(field, models.CharField | models.TextField) else None
    if isinstance(field, models.JSONField):
        return clean_json(value)
    if isinstance(value, str):
        max_length = getattr(field, "max_length", None)
        if isinstance(field, models.CharField) and max_length:
            return distinct_key(value, max_length) if distinct else cut(clean_text(value), max_length)
        return clean_text(value)
    if isinstance(value, int) and not isinstance(value, bool) and isinstance(field, models.IntegerField):
        low, high = BaseDatabaseOperations.integer_field_ranges.get(field.get_internal_type(), (None, None))
        if low is not None and value < low:
            return low
        if high is not None and value > high:
            return high
    return value
