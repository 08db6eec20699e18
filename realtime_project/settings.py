"""Django settings, read from the environment (12-factor).

Every variable has an embedded default that needs no outside service: SQLite, the in-memory
channel layer and the demo Moshi checkpoint. Defaults are closed: DEBUG is off unless
DJANGO_DEBUG=1, and without DEBUG the server does not start until DJANGO_SECRET_KEY is set.
The README lists each variable.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from voice.environment import read_environment, voice_settings

BASE_DIR = Path(__file__).resolve().parent.parent


# Every variable, its default and its type are declared once, in voice/environment.py; parsed here, once.
ENV = read_environment(os.environ)

# Closed by default: DEBUG (tracebacks, URL lists on a 404, an open Realtime endpoint, open /metrics)
# only when asked for. `make serve` asks for it, and says so.
DEBUG = ENV["DJANGO_DEBUG"]
SECRET_KEY = ENV["DJANGO_SECRET_KEY"]
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set, and DEBUG is off: refusing to start with a known key. Set "
            "DJANGO_SECRET_KEY to a long random value (e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`), or set DJANGO_DEBUG=1 for "
            "local development (`make serve` does both for you)."
        )
    SECRET_KEY = "dev-only-insecure-key-change-me"  # DEBUG only: local development, never a deployment
ALLOWED_HOSTS = ENV["DJANGO_ALLOWED_HOSTS"]

# HTTPS. Cookies are Secure unless DEBUG (or DJANGO_SECURE_COOKIES=0, for plain HTTP on a trusted
# network); redirects and HSTS are opt-in, since they commit the host to HTTPS (see the README).
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = ENV["DJANGO_SECURE_COOKIES"] and not DEBUG
SECURE_SSL_REDIRECT = ENV["DJANGO_SECURE_SSL_REDIRECT"]
# Probes and scrapers often talk to the process directly over plain HTTP; a redirect would only
# break them (a scraper's bearer token has already been sent by the time it is redirected).
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = ENV["DJANGO_SECURE_HSTS_SECONDS"]
SECURE_HSTS_INCLUDE_SUBDOMAINS = ENV["DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS"]
SECURE_HSTS_PRELOAD = ENV["DJANGO_SECURE_HSTS_PRELOAD"]
# Behind a TLS-terminating proxy that sets X-Forwarded-Proto (and strips it from clients): requests
# with `X-Forwarded-Proto: https` count as secure, for Django and for the console's origin check.
if ENV["DJANGO_BEHIND_TLS_PROXY"]:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CSRF_TRUSTED_ORIGINS = ENV["DJANGO_CSRF_TRUSTED_ORIGINS"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "transcripts",
    "voice",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "realtime_project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "realtime_project.asgi.application"
WSGI_APPLICATION = None

DATABASES = {
    "default": dj_database_url.parse(
        ENV["DATABASE_URL"] or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=0,
    )
}
# SQLite with several processes (the daphne workers of deploy/supervisord.conf write to one file): a
# writer waits up to 20 s for another's lock instead of failing at once with "database is locked",
# WAL lets readers go on while one process writes, and IMMEDIATE transactions take the write lock
# when they begin: a deferred one that read first could not wait for it and would fail at once
# (Django's advice for concurrent SQLite). PostgreSQL is left as configured.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL", "transaction_mode": "IMMEDIATE"}
    )

REDIS_URL = ENV["REDIS_URL"]
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Static files (the admin's, the console's) are served by whitenoise straight from the app finders,
# so daphne needs no collectstatic; set DJANGO_STATIC_ROOT to collect them for another server.
STATIC_ROOT = ENV["DJANGO_STATIC_ROOT"] or None
WHITENOISE_USE_FINDERS = True

# Recordings (REALTIME_RECORD_AUDIO) go through the default storage; files under var/media by default.
MEDIA_URL = "media/"
MEDIA_ROOT = BASE_DIR / ENV["MEDIA_ROOT"]  # an absolute MEDIA_ROOT stays as it is

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The voice app's own settings, one dict (voice/environment.py says what each variable does).
VOICE = voice_settings(ENV)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": ENV["LOG_LEVEL"]},
    "loggers": {"daphne": {"level": "WARNING"}, "django.channels.server": {"level": "WARNING"}},
}
