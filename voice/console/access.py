"""Who may use the staff console's socket, and for what.

- The origin: the console authenticates by the staff member's session cookie, which a browser sends
  along from any page that opens the socket, so the page must be the console itself. The Origin of
  the handshake must be exactly (scheme, host and port) the server's own origin, i.e. the scheme and
  Host of the handshake itself, or one of CONSOLE_ALLOWED_ORIGINS when that is set. A handshake with
  no Origin is refused: browsers always send one.
- The permissions: following a session shows what was said (`transcripts.view_conversation`);
  ending one needs `transcripts.end_session`. Both are read from the database for every action, so
  a permission revoked, or an account deactivated, while a console is open takes effect at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model

from ..auth import header_values
from ..conf import get_config

# The console socket's path, as voice/routing.py routes it (there without the leading slash).
_CONSOLE_PATH = re.compile(r"^/console/live/?$")

FOLLOW_PERMISSION = "transcripts.view_conversation"
END_PERMISSION = "transcripts.end_session"

_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_console_path(path: str) -> bool:
    return _CONSOLE_PATH.match(path) is not None


def normalized_origin(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) origin, with the default port filled in; None if malformed."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    return scheme, parts.hostname.lower().rstrip("."), port or _DEFAULT_PORTS[scheme]


def is_secure(scope: Mapping[str, Any]) -> bool:
    """Whether the handshake came over TLS, as Django's request.is_secure() decides for HTTP.

    With SECURE_PROXY_SSL_HEADER set (DJANGO_BEHIND_TLS_PROXY=1), the proxy's header decides;
    otherwise the scope's scheme (wss). daphne leaves the scheme out of a WebSocket scope, so a
    daphne terminating TLS itself needs CONSOLE_ALLOWED_ORIGINS.
    """
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy_header:
        meta_name, secure_value = proxy_header
        name = meta_name.removeprefix("HTTP_").lower().replace("_", "-").encode("latin1")
        values = header_values(scope, name)
        if values:
            return values[0].split(",", 1)[0].strip() == secure_value
    return scope.get("scheme", "ws") in ("wss", "https")


def own_origin(scope: Mapping[str, Any]) -> tuple[str, str, int] | None:
    """The server's origin as this handshake addressed it: its scheme, then its Host header."""
    hosts = header_values(scope, b"host")
    if len(hosts) != 1:
        return None
    return normalized_origin(f"{'https' if is_secure(scope) else 'http'}://{hosts[0]}")


def console_origin_allowed(scope: Mapping[str, Any]) -> bool:
    origins = header_values(scope, b"origin")
    if len(origins) != 1:
        return False  # none (not a browser), or ambiguous
    presented = normalized_origin(origins[0])
    if presented is None:
        return False
    configured = get_config()["CONSOLE_ALLOWED_ORIGINS"]
    if configured:
        return presented in {normalized_origin(origin) for origin in configured}
    return presented == own_origin(scope)


@database_sync_to_async
def staff_may(user_pk: Any, permission: str) -> bool:
    """Read the user afresh (no cached permissions): still an active staff member with ``permission``?"""
    user = get_user_model().objects.filter(pk=user_pk).first()
    return user is not None and user.is_active and user.is_staff and user.has_perm(permission)
