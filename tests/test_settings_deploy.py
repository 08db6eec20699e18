"""Closed by default: the settings a process gets from its environment, checked in fresh processes.

Each test runs manage.py in a subprocess with an environment built here from nothing (PATH and
HOME only), so neither the developer's shell nor the test run's own settings leak in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120

# The production environment the README documents, with example values (the key is 50+ random
# characters, as Django's check wants; a real deployment generates its own).
PRODUCTION_ENV = {
    "DJANGO_SECRET_KEY": "x7Qm2vR9tL4pW8nZ3kF6hJ1sD5gB0cY7uE2aT9rM4wN8qP3vK6zX1",
    "DJANGO_ALLOWED_HOSTS": "voice.example.com",
    "DJANGO_BEHIND_TLS_PROXY": "1",
    "DJANGO_SECURE_SSL_REDIRECT": "1",
    "DJANGO_SECURE_HSTS_SECONDS": "31536000",
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "DJANGO_SECURE_HSTS_PRELOAD": "1",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://voice.example.com",
    "REALTIME_METRICS_TOKEN": "a-long-random-scrape-token",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
}

# What the settings say about themselves, as JSON on the last line of stdout.
REPORT = """
import json
from django.conf import settings
from voice.auth import open_endpoint
print(json.dumps({
    "debug": settings.DEBUG,
    "dev_key": settings.SECRET_KEY == "dev-only-insecure-key-change-me",
    "open_endpoint": open_endpoint(),
    "secure_cookies": [settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE],
    "proxy_header": settings.SECURE_PROXY_SSL_HEADER,
    "csrf_trusted_origins": settings.CSRF_TRUSTED_ORIGINS,
    "hsts": [settings.SECURE_HSTS_SECONDS, settings.SECURE_HSTS_INCLUDE_SUBDOMAINS, settings.SECURE_HSTS_PRELOAD],
    "ssl_redirect": settings.SECURE_SSL_REDIRECT,
}))
"""


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env={**base, "DJANGO_SETTINGS_MODULE": "realtime_project.settings", "VOICE_LOAD_MODEL": "0", **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def report(env: dict[str, str]) -> dict:
    result = manage("shell", "-c", REPORT, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_documented_production_environment_passes_the_deployment_check() -> None:
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout + result.stderr
    settings = report(PRODUCTION_ENV)
    assert settings["debug"] is False and settings["open_endpoint"] is False
    assert settings["proxy_header"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert settings["csrf_trusted_origins"] == ["https://voice.example.com"]


def test_the_deployment_check_is_not_clean_by_accident() -> None:
    """The same check fails on what the documented environment adds: it does look at it."""
    lacking = {k: v for k, v in PRODUCTION_ENV.items() if not k.startswith("DJANGO_SECURE_")}
    result = manage("check", "--deploy", "--fail-level", "WARNING", env={**lacking, "REALTIME_OPEN_ENDPOINT": "1"})
    assert result.returncode != 0
    for check_id in ("security.W004", "security.W008", "voice.W002"):
        assert check_id in result.stderr + result.stdout, check_id


def test_an_empty_environment_refuses_to_start_without_a_secret_key() -> None:
    result = manage("check", env={})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "DJANGO_SECRET_KEY is not set" in result.stderr and "DJANGO_DEBUG=1" in result.stderr


def test_daphnes_import_of_the_application_refuses_too() -> None:
    """What `daphne realtime_project.asgi:application` does first: the same refusal, before serving."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    result = subprocess.run(
        [sys.executable, "-c", "import realtime_project.asgi"],
        cwd=REPO,
        env={**base, "VOICE_LOAD_MODEL": "0"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert result.returncode != 0 and "DJANGO_SECRET_KEY is not set" in result.stderr


def test_an_environment_with_only_a_key_is_closed() -> None:
    settings = report({"DJANGO_SECRET_KEY": PRODUCTION_ENV["DJANGO_SECRET_KEY"]})
    assert settings["debug"] is False and settings["dev_key"] is False
    assert settings["open_endpoint"] is False  # REALTIME_OPEN_ENDPOINT=auto follows DEBUG
    assert settings["secure_cookies"] == [True, True]
    assert settings["proxy_header"] is None and settings["csrf_trusted_origins"] == []
    assert settings["hsts"] == [0, False, False] and settings["ssl_redirect"] is False


@pytest.mark.parametrize("value", ["0", "", "no", "false"])
def test_debug_is_off_unless_asked_for(value: str) -> None:
    settings = report({"DJANGO_DEBUG": value, "DJANGO_SECRET_KEY": "k" * 60})
    assert settings["debug"] is False


def test_debug_works_without_a_key_for_local_development() -> None:
    settings = report({"DJANGO_DEBUG": "1"})
    assert settings["debug"] is True and settings["dev_key"] is True
    assert settings["open_endpoint"] is True and settings["secure_cookies"] == [False, False]


def test_a_404_without_debug_lists_no_url_patterns() -> None:
    probe = (
        "from django.test import Client; r = Client().get('/no-such-page', HTTP_HOST='127.0.0.1'); "
        "print(r.status_code, b'admin/' in r.content or b'URLconf' in r.content)"
    )
    result = manage("shell", "-c", probe, env={"DJANGO_SECRET_KEY": "k" * 60})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "404 False"
