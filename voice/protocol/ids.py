"""Identifiers shaped like OpenAI's: a prefix, then 21 base62 characters."""

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """Return e.g. ``event_4bX...``; clients treat ids as opaque, the prefix helps log readers."""
    return prefix + "_" + "".join(secrets.choice(_ALPHABET) for _ in range(21))
