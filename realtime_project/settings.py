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

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    """Read a yes/no variable; anything but 1/true/yes/on is false."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    return float(value) if value.strip() else default


def env_list(name: str, default: str = "") -> list[str]:
    """A comma-separated variable as a list, blanks dropped."""
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


# Closed by default: DEBUG (tracebacks, URL lists on a 404, an open Realtime endpoint, open /metrics)
# only when asked for. `make serve` asks for it, and says so.
DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set, and DEBUG is off: refusing to start with a known key. Set "
            "DJANGO_SECRET_KEY to a long random value (e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`), or set DJANGO_DEBUG=1 for "
            "local development (`make serve` does both for you)."
        )
    SECRET_KEY = "dev-only-insecure-key-change-me"  # DEBUG only: local development, never a deployment
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")

# HTTPS. Cookies are Secure unless DEBUG (or DJANGO_SECURE_COOKIES=0, for plain HTTP on a trusted
# network); redirects and HSTS are opt-in, since they commit the host to HTTPS (see the README).
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", not DEBUG)
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", False)
# Probes and scrapers often talk to the process directly over plain HTTP; a redirect would only
# break them (a scraper's bearer token has already been sent by the time it is redirected).
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", False)
# Behind a TLS-terminating proxy that sets X-Forwarded-Proto (and strips it from clients): requests
# with `X-Forwarded-Proto: https` count as secure, for Django and for the console's origin check.
if env_bool("DJANGO_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

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
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=0,
    )
}

REDIS_URL = os.environ.get("REDIS_URL", "")
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
STATIC_ROOT = os.environ.get("DJANGO_STATIC_ROOT") or None
WHITENOISE_USE_FINDERS = True

# Recordings (REALTIME_RECORD_AUDIO) go through the default storage; files under var/media by default.
MEDIA_URL = "media/"
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT") or BASE_DIR / "var" / "media")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The voice app's own settings, one dict (see voice/conf.py for what each key does).
VOICE = {
    "SFT_MODEL": os.environ.get("SFT_MODEL", ""),
    "BASE_MODEL": os.environ.get("BASE_MODEL", ""),
    "PRETRAIN_MODEL": os.environ.get("PRETRAIN_MODEL", ""),
    "DEVICE": os.environ.get("MOSHI_DEVICE", "auto"),
    "LOAD_MODEL": os.environ.get("VOICE_LOAD_MODEL", "auto"),
    "DEMO_CHECKPOINT_DIR": os.environ.get("DEMO_CHECKPOINT_DIR", str(BASE_DIR / "var" / "demo-checkpoint")),
    "MAX_SESSIONS": env_int("REALTIME_MAX_SESSIONS", 8),
    "TICK_MS": env_float("REALTIME_TICK_MS", 80.0),
    "INPUT_QUEUE_FRAMES": env_int("REALTIME_INPUT_QUEUE_FRAMES", 64),
    "IDLE_TIMEOUT_S": env_float("REALTIME_IDLE_TIMEOUT_S", 600.0),
    "MAX_MESSAGE_BYTES": env_int("REALTIME_MAX_MESSAGE_BYTES", 15 * 1024 * 1024),
    "RESPONSE_ACTIVITY_RMS": env_float("RESPONSE_ACTIVITY_RMS", 0.02),
    "RESPONSE_END_SILENCE_MS": env_int("RESPONSE_END_SILENCE_MS", 800),
    "RESPONSE_MAX_MS": env_int("RESPONSE_MAX_MS", 30000),
    "TORCH_COMPILE": os.environ.get("MOSHI_TORCH_COMPILE", "auto"),
    "ASR_BACKEND": os.environ.get("ASR_BACKEND", "voice.asr.backends.openai_compatible_from_settings"),
    "ASR_BASE_URL": os.environ.get("ASR_BASE_URL", ""),
    "ASR_API_KEY": os.environ.get("ASR_API_KEY", ""),
    "ASR_MODEL": os.environ.get("ASR_MODEL", ""),
    "ASR_TIMEOUT_S": env_float("ASR_TIMEOUT_S", 30.0),
    "ASR_RETRIES": env_int("ASR_RETRIES", 2),
    "ASR_MAX_PENDING": env_int("ASR_MAX_PENDING", 4),
    "OPEN_ENDPOINT": os.environ.get("REALTIME_OPEN_ENDPOINT", "auto"),
    "ALLOWED_ORIGINS": env_list("REALTIME_ALLOWED_ORIGINS"),
    "RECORD_AUDIO": env_bool("REALTIME_RECORD_AUDIO", False),
    "SEED": env_int("MOSHI_SEED", 0),
    "ENGINE": os.environ.get("REALTIME_ENGINE", "batched"),
    "MAX_INSTRUCTIONS_BYTES": env_int("REALTIME_MAX_INSTRUCTIONS_BYTES", 32 * 1024),
    "MAX_TOOLS_BYTES": env_int("REALTIME_MAX_TOOLS_BYTES", 64 * 1024),
    "MAX_ITEM_TEXT_BYTES": env_int("REALTIME_MAX_ITEM_TEXT_BYTES", 32 * 1024),
    "MAX_METADATA_BYTES": env_int("REALTIME_MAX_METADATA_BYTES", 8 * 1024),
    "MAX_ITEMS": env_int("REALTIME_MAX_ITEMS", 1000),
    "MAX_CONVERSATION_BYTES": env_int("REALTIME_MAX_CONVERSATION_BYTES", 2 * 1024 * 1024),
    "MAX_EVENTS_PER_SECOND": env_int("REALTIME_MAX_EVENTS_PER_SECOND", 200),
    "MAX_STORED_CONFIGS": env_int("REALTIME_MAX_STORED_CONFIGS", 100),
    "MAX_UNSENT_BYTES": env_int("REALTIME_MAX_UNSENT_BYTES", 8 * 1024 * 1024),
    "MAX_SESSIONS_PER_KEY": env_int("REALTIME_MAX_SESSIONS_PER_KEY", 0),
    "SHUTDOWN_GRACE_S": env_float("REALTIME_SHUTDOWN_GRACE_S", 10.0),
    "CONSOLE_ALLOWED_ORIGINS": env_list("CONSOLE_ALLOWED_ORIGINS"),
    "METRICS_TOKEN": os.environ.get("REALTIME_METRICS_TOKEN", ""),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"daphne": {"level": "WARNING"}, "django.channels.server": {"level": "WARNING"}},
}
