"""Every channel-layer group name and message type of the staff console, in one module.

Realtime sessions and consoles may live in different daphne processes and meet only through these
names on the shared channel layer (channels-redis when REDIS_URL is set), so a name spelled two
ways would be a silent partition. Channels maps a message type such as "console.end_session" onto
the handler method `console_end_session`.
"""

from __future__ import annotations

import re

# Every open console: summaries and removals of every live session, from every process.
CONSOLES = "console"
# Every live Realtime session: a console that opens asks here who is live (a roll call).
LIVE_SESSIONS = "console.sessions"

# console -> every session: send your summary to `reply_to` (the asking console's channel).
ROLL_CALL = "console.roll_call"
# console -> one session: send your detail to `reply_to` now (it has joined the watchers group).
WATCH = "console.watch"
# console -> one session: a staff member (`user_id`, `username`) ended it.
END_SESSION = "console.end_session"
# session -> consoles: one session's summary (list fields, levels, latency, state).
SESSION_SUMMARY = "console.session_summary"
# session -> the consoles that follow it: the summary plus its recent transcript.
SESSION_DETAIL = "console.session_detail"
# session -> consoles: the session ended; drop it from the list.
SESSION_GONE = "console.session_gone"

# Group names must be ASCII letters, digits, hyphens, underscores or periods, under 100 characters;
# a session id from the browser is checked against this before it becomes part of one.
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def valid_session_id(value: object) -> bool:
    """True for something shaped like a session id (sess_...), safe to put in a group name."""
    return isinstance(value, str) and _SESSION_ID.match(value) is not None


def session_group(session_id: str) -> str:
    """One live session, whatever process holds it: end and watch requests reach it here."""
    return f"console.session.{session_id}"


def watchers_group(session_id: str) -> str:
    """The consoles following one session: its transcript goes only to them, not to every console."""
    return f"console.watch.{session_id}"
