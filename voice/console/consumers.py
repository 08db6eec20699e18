"""ConsoleConsumer: the staff console's WebSocket at /console/live.

It joins the consoles' group, asks every live session (in every process) for its summary, and
forwards what sessions publish to the browser. The browser can follow one session (its transcript
and levels) and end one. Staff only, from the console's own origin: anything else is refused before
the handshake completes. Following and ending each need their permission, checked for every action
(voice/console/access.py).
"""

from __future__ import annotations

import logging
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from ..auth import header_values
from . import groups
from .access import END_PERMISSION, FOLLOW_PERMISSION, console_origin_allowed, staff_may

log = logging.getLogger(__name__)

# What each action needs, and what a staff member without it is told.
_NEEDS = {
    "follow": (FOLLOW_PERMISSION, "Following a session needs the “Can view conversation” permission."),
    "end": (END_PERMISSION, "Ending a session needs the “Can end a live session from the console” permission."),
}

# Session messages to pass on to the browser, and the name the browser knows each by.
_FORWARDED = {
    groups.SESSION_SUMMARY: "session",
    groups.SESSION_DETAIL: "detail",
    groups.SESSION_GONE: "session_gone",
}


class ConsoleConsumer(AsyncJsonWebsocketConsumer):
    following: str | None = None
    joined: bool = False

    async def connect(self) -> None:
        """Staff only, from the console's own origin; then join the consoles and hold a roll call."""
        if not console_origin_allowed(self.scope):
            log.warning(
                "console socket refused: origin %s for host %s",
                header_values(self.scope, b"origin") or "(none)",
                header_values(self.scope, b"host") or "(none)",
            )
            await self.close()  # before accept: the handshake is answered with HTTP 403
            return
        user = self.scope.get("user")
        if user is None or not (user.is_active and user.is_staff):
            await self.close()
            return
        await self.channel_layer.group_add(groups.CONSOLES, self.channel_name)
        self.joined = True
        await self.accept()
        await self.send_json({"type": "hello", "user": user.get_username()})
        await self.channel_layer.group_send(
            groups.LIVE_SESSIONS, {"type": groups.ROLL_CALL, "reply_to": self.channel_name}
        )

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """A staff action: follow a session, stop following, or end one."""
        action = content.get("action") if isinstance(content, dict) else None
        session_id = content.get("session_id") if isinstance(content, dict) else None
        if action == "unfollow":
            await self._unfollow()
            return
        if action not in {"follow", "end"} or not groups.valid_session_id(session_id):
            await self.send_json({"type": "error", "message": "Expected {action: follow|unfollow|end, session_id}."})
            return
        permission, refusal = _NEEDS[action]
        user = self.scope["user"]
        if not await staff_may(user.pk, permission):
            if action == "follow":
                await self._unfollow()  # whatever it followed before, it may not any more
            log.info("console action %s by %s refused: no %s", action, user.get_username(), permission)
            await self.send_json(
                {
                    "type": "error",
                    "code": "permission_denied",
                    "action": action,
                    "session_id": session_id,
                    "message": refusal,
                }
            )
            return
        if action == "follow":
            await self._unfollow()
            self.following = session_id
            await self.channel_layer.group_add(groups.watchers_group(session_id), self.channel_name)
            await self.channel_layer.group_send(
                groups.session_group(session_id), {"type": groups.WATCH, "reply_to": self.channel_name}
            )
            return
        log.info("staff member %s ends session %s from the console", user.get_username(), session_id)
        await self.channel_layer.group_send(
            groups.session_group(session_id),
            {"type": groups.END_SESSION, "user_id": user.pk, "username": user.get_username()},
        )

    async def disconnect(self, code: int) -> None:
        """Leave every group this console joined."""
        await self._unfollow()
        if self.joined:
            await self.channel_layer.group_discard(groups.CONSOLES, self.channel_name)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Pass session messages straight to the browser.

        Channels runs close_old_connections on the one thread shared with every Realtime session's
        database work before each handler; these messages arrive several times a second per live
        session and touch no database, so they skip that thread hop.
        """
        name = _FORWARDED.get(message["type"])
        if name is None:
            await super().dispatch(message)
            return
        if name == "detail" and message["session"]["session_id"] != self.following:
            return  # a late update of a session this console no longer follows
        await self.send_json({**{k: v for k, v in message.items() if k != "type"}, "type": name})

    async def _unfollow(self) -> None:
        if self.following is not None:
            await self.channel_layer.group_discard(groups.watchers_group(self.following), self.channel_name)
            self.following = None
