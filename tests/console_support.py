"""Helpers for the console tests that run real daphne processes: users in their database, a signed-in
cookie got through the admin's own login form."""

from __future__ import annotations

import http.cookiejar
import re
import subprocess
import sys
import urllib.parse
import urllib.request

from voice.testing.live_server import REPO_ROOT, LiveServer

PASSWORD = "console-test-password"


# What a staff member needs to follow sessions and end them on the console.
CONSOLE_PERMISSIONS = ("view_conversation", "end_session")


def create_user(
    live: LiveServer, username: str, *, staff: bool, timeout: float, permissions: tuple[str, ...] = ()
) -> None:
    """A user in the live server's database (a separate process: the test's own database is another),
    with the named permissions of the transcripts app (e.g. CONSOLE_PERMISSIONS)."""
    code = (
        "from django.contrib.auth.models import Permission, User; "
        f"user = User.objects.create_user({username!r}, password={PASSWORD!r}, is_staff={staff!r}); "
        "user.user_permissions.add(*Permission.objects.filter("
        f"content_type__app_label='transcripts', codename__in={list(permissions)!r}))"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=REPO_ROOT,
        env=live.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"creating {username} failed:\n{result.stdout}\n{result.stderr}"


def admin_login(live: LiveServer, username: str, timeout: float) -> tuple[str, str]:
    """Sign in through /admin/login/ as a browser would (CSRF token and all).

    Returns the cookie header a WebSocket client sends, and the page /console/ answered with.
    """
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    login_url = f"{live.http_url}/admin/login/?next=/console/"
    with opener.open(login_url, timeout=timeout) as page:
        html = page.read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert token, "no CSRF token on the admin login page"
    form = urllib.parse.urlencode(
        {"csrfmiddlewaretoken": token.group(1), "username": username, "password": PASSWORD, "next": "/console/"}
    ).encode()
    request = urllib.request.Request(login_url, data=form, headers={"Referer": login_url})
    with opener.open(request, timeout=timeout) as landed:  # redirected to /console/ when signed in
        body = landed.read().decode()
        assert landed.url.endswith("/console/"), f"login as {username} did not land on /console/: {landed.url}"
    cookie = "; ".join(f"{c.name}={c.value}" for c in jar)
    assert "sessionid=" in cookie, "no session cookie after login"
    return cookie, body
