"""Every environment variable of the server, written once: its name, typed default and meaning.

`VARIABLES` is the one source. settings.py reads the process environment through
`read_environment` (each value parsed once, by the type of its default, with a clear error for a
bad one) and builds the voice app's VOICE dict with `voice_settings`; voice/conf.py derives the
app's defaults from the same list. The README's configuration table and `.env.example` are
generated from it (`manage.py environment`), and a test checks both. Plain Python: settings.py
imports it before Django is set up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Variable:
    """One environment variable: the VOICE key it fills (None: a Django setting), default, meaning."""

    env: str
    default: Any
    doc: str
    key: str | None = None
    shown: str | None = None  # the default as the README shows it, when not the value itself

    @property
    def kind(self) -> type:
        return type(self.default)

    def parse(self, raw: str) -> Any:
        """The typed value of a non-empty environment string; ImproperlyConfigured names the variable."""
        text = raw.strip()
        try:
            if self.kind is bool:
                if text.lower() in TRUE | FALSE:
                    return text.lower() in TRUE
                raise ValueError("expected 1/0, true/false, yes/no or on/off")
            if self.kind is int:
                return int(text)
            if self.kind is float:
                return float(text)
            if self.kind is list:
                return [part.strip() for part in text.split(",") if part.strip()]
        except ValueError as exc:
            raise ImproperlyConfigured(f"{self.env}={raw!r}: {exc}") from None
        return raw

    def default_text(self) -> str:
        if self.shown is not None:
            return self.shown
        if isinstance(self.default, bool):
            return "1" if self.default else "0"
        if isinstance(self.default, list):
            return ",".join(self.default)
        if isinstance(self.default, float) and self.default.is_integer():
            return str(int(self.default))
        return str(self.default)


MIB = 1024 * 1024

VARIABLES: tuple[Variable, ...] = (
    # --- the model ---
    Variable(
        "SFT_MODEL",
        "",
        "Hub repo id or local folder of the Moshi model sessions use by default",
        "SFT_MODEL",
        "(demo checkpoint)",
    ),
    Variable(
        "BASE_MODEL", "", "optional further model; a session picks it with `?model_type=base`", "BASE_MODEL", "(none)"
    ),
    Variable(
        "PRETRAIN_MODEL",
        "",
        "optional further model; a session picks it with `?model_type=pretrain`",
        "PRETRAIN_MODEL",
        "(none)",
    ),
    Variable("MOSHI_DEVICE", "auto", "`cuda` when a GPU is visible, else `cpu`; or any torch device string", "DEVICE"),
    Variable("MOSHI_TORCH_COMPILE", "auto", "`torch.compile` on CUDA only (`on`/`off` to force)", "TORCH_COMPILE"),
    Variable("MOSHI_SEED", 0, "torch seed for sampling", "SEED"),
    Variable(
        "VOICE_LOAD_MODEL",
        "auto",
        "load the model when the process serves (daphne, runserver); `1` always, `0` never",
        "LOAD_MODEL",
    ),
    Variable(
        "DEMO_CHECKPOINT_DIR",
        "var/demo-checkpoint",
        "where the demo checkpoint is written and read (relative to the repository)",
        "DEMO_CHECKPOINT_DIR",
    ),
    Variable(
        "REALTIME_ENGINE",
        "batched",
        "`serial` runs the old one-session-at-a-time design (for the benchmark's comparison)",
        "ENGINE",
    ),
    Variable(
        "REALTIME_ENGINE_PROCESS",
        "child",
        "where the model steps: `child` = an engine process this server starts (and restarts), "
        "`external` = one already running at `REALTIME_ENGINE_SOCKET` (`manage.py run_engine`, "
        "as under `deploy/supervisord.conf`), `inline` = a thread of this process (shares its GIL; tests, debugging)",
        "ENGINE_PROCESS",
    ),
    Variable(
        "REALTIME_ENGINE_SOCKET",
        "var/run/engine.sock",
        "the engine process's Unix socket (relative to the repository); a `child` engine uses a private one",
        "ENGINE_SOCKET",
    ),
    Variable(
        "REALTIME_ENGINE_START_TIMEOUT_S",
        600.0,
        "how long a server waits for its `child` engine to load the models before it gives up",
        "ENGINE_START_TIMEOUT_S",
    ),
    Variable(
        "REALTIME_WEB_WORKERS",
        0,
        "daphne workers behind one port under `make serve` / `deploy/supervisord.conf`; `0` = the number of cores",
        "WEB_WORKERS",
    ),
    # --- sessions and the engine ---
    Variable(
        "REALTIME_MAX_SESSIONS", 8, "slots per model: concurrent sessions stepped together in one batch", "MAX_SESSIONS"
    ),
    Variable(
        "REALTIME_RESIZE_STEP",
        0,
        "the streaming state grows and shrinks in steps of this many rows with the live sessions; `0` = 8 on the CPU, fixed at `REALTIME_MAX_SESSIONS` on CUDA (graphs, compile)",
        "RESIZE_STEP",
    ),
    Variable(
        "REALTIME_TICK_MS",
        80.0,
        "one batched model step per tick (one Mimi frame); `0` steps as soon as a frame is ready",
        "TICK_MS",
    ),
    Variable(
        "REALTIME_INPUT_QUEUE_FRAMES",
        64,
        "per-session input bound in 80 ms frames (5 s); audio beyond it gets an `error`",
        "INPUT_QUEUE_FRAMES",
    ),
    Variable(
        "REALTIME_IDLE_TIMEOUT_S",
        600.0,
        "a session with no client event for this long gets an `error` (`session_idle_timeout`) and a clean close; `0` = never",
        "IDLE_TIMEOUT_S",
    ),
    Variable(
        "REALTIME_MAX_MESSAGE_BYTES",
        15 * MIB,
        'largest client event accepted (OpenAI\'s 15 MiB); see "Limits"',
        "MAX_MESSAGE_BYTES",
    ),
    Variable(
        "REALTIME_MAX_INSTRUCTIONS_BYTES",
        32 * 1024,
        "session (or response) `instructions`, UTF-8 bytes; more gets an `error`",
        "MAX_INSTRUCTIONS_BYTES",
    ),
    Variable("REALTIME_MAX_TOOLS_BYTES", 64 * 1024, "a session's (or response's) `tools`, as JSON", "MAX_TOOLS_BYTES"),
    Variable("REALTIME_MAX_ITEM_TEXT_BYTES", 32 * 1024, "the text of one item a client creates", "MAX_ITEM_TEXT_BYTES"),
    Variable("REALTIME_MAX_METADATA_BYTES", 8 * 1024, "a response's `metadata`, as JSON", "MAX_METADATA_BYTES"),
    Variable(
        "REALTIME_MAX_ITEMS",
        1000,
        "items one conversation holds; a client's `conversation.item.create` beyond it gets an `error`",
        "MAX_ITEMS",
    ),
    Variable(
        "REALTIME_MAX_CONVERSATION_BYTES",
        2 * MIB,
        "all client-created items of one conversation together",
        "MAX_CONVERSATION_BYTES",
    ),
    Variable(
        "REALTIME_MAX_EVENTS_PER_SECOND",
        200,
        "client events per second (bursts of twice that); beyond it `rate_limit_exceeded` and the event is not handled",
        "MAX_EVENTS_PER_SECOND",
    ),
    Variable(
        "REALTIME_MAX_STORED_CONFIGS",
        100,
        "session configurations stored per session (only changed ones are stored)",
        "MAX_STORED_CONFIGS",
    ),
    Variable(
        "REALTIME_MAX_UNSENT_BYTES",
        8 * MIB,
        "output daphne holds for a client that does not read; past it the connection is dropped and the session ends (`client_not_reading`)",
        "MAX_UNSENT_BYTES",
    ),
    Variable(
        "REALTIME_MAX_SESSIONS_PER_KEY",
        0,
        "live sessions one API key may hold in this process; beyond it `too_many_sessions` and close 4013; `0` = no cap",
        "MAX_SESSIONS_PER_KEY",
    ),
    Variable(
        "REALTIME_SHUTDOWN_GRACE_S",
        10.0,
        "on SIGTERM, how long live sessions get to be told, stored and closed",
        "SHUTDOWN_GRACE_S",
    ),
    Variable(
        "LIVE_MAX_DURATION_S",
        3600,
        "a Live API session's longest life: it sets `expires_at`, and the session then closes with reason `expired`",
        "LIVE_MAX_DURATION_S",
    ),
    # --- responses ---
    Variable(
        "RESPONSE_ACTIVITY_RMS",
        0.02,
        "output audio louder than this counts as the model speaking",
        "RESPONSE_ACTIVITY_RMS",
    ),
    Variable(
        "RESPONSE_END_SILENCE_MS", 800, "quiet output after speech that ends a response", "RESPONSE_END_SILENCE_MS"
    ),
    Variable(
        "RESPONSE_MAX_MS",
        30000,
        "the server's turn-length limit: a response this long ends `completed`",
        "RESPONSE_MAX_MS",
    ),
    # --- input transcription ---
    Variable(
        "ASR_BASE_URL",
        "",
        "an OpenAI-compatible transcription API, e.g. `https://api.groq.com/openai/v1` or a local speaches server; with `ASR_API_KEY` also unset, input transcription is off",
        "ASR_BASE_URL",
        "(none)",
    ),
    Variable("ASR_API_KEY", "", "its key", "ASR_API_KEY", "(none)"),
    Variable(
        "ASR_MODEL",
        "",
        "when set, the model the ASR service is asked for whatever the session names (frameworks name OpenAI models a self-hosted service may not have)",
        "ASR_MODEL",
        "(none)",
    ),
    Variable("ASR_TIMEOUT_S", 30.0, "per request", "ASR_TIMEOUT_S"),
    Variable(
        "ASR_RETRIES", 2, "retries after timeouts, 5xx and 429, backing off exponentially from 0.5 s", "ASR_RETRIES"
    ),
    Variable(
        "ASR_MAX_PENDING",
        4,
        "segments per session waiting for the ASR service; more fail at once with `asr_queue_full`",
        "ASR_MAX_PENDING",
    ),
    Variable(
        "ASR_BACKEND",
        "voice.asr.backends.openai_compatible_from_settings",
        "dotted path to another backend factory",
        "ASR_BACKEND",
        "OpenAI-compatible",
    ),
    # --- the companion model ---
    Variable(
        "COMPANION_BASE_URL",
        "",
        "an OpenAI-compatible chat-completions API that reads what was said, the instructions and tools, and answers with text Moshi says or tool calls; with `COMPANION_API_KEY` also unset, there is no companion",
        "COMPANION_BASE_URL",
        "(none)",
    ),
    Variable("COMPANION_API_KEY", "", "its key", "COMPANION_API_KEY", "(none)"),
    Variable("COMPANION_MODEL", "gpt-4o-mini", "the model the companion service is asked for", "COMPANION_MODEL"),
    Variable("COMPANION_TIMEOUT_S", 20.0, "per request, the whole streamed answer", "COMPANION_TIMEOUT_S"),
    Variable(
        "COMPANION_RETRIES",
        1,
        "retries after timeouts, 5xx, 429 and connection errors, backing off exponentially from 0.5 s",
        "COMPANION_RETRIES",
    ),
    Variable(
        "COMPANION_MAX_PENDING",
        4,
        "requests per session waiting for the companion (one runs at a time); more fail at once with `companion_busy`",
        "COMPANION_MAX_PENDING",
    ),
    Variable(
        "COMPANION_MAX_TOKENS",
        400,
        "`max_completion_tokens` of each request: the longest answer",
        "COMPANION_MAX_TOKENS",
    ),
    Variable(
        "COMPANION_BACKEND",
        "voice.companion.backends.openai_compatible_from_settings",
        "dotted path to another companion backend factory",
        "COMPANION_BACKEND",
        "OpenAI-compatible",
    ),
    # --- access and operations ---
    Variable(
        "REALTIME_OPEN_ENDPOINT",
        "auto",
        "`1`: anyone may connect without an API key (local development; `make serve` sets it); `auto` = only when `DJANGO_DEBUG=1`",
        "OPEN_ENDPOINT",
    ),
    Variable(
        "REALTIME_ALLOWED_ORIGINS",
        [],
        "browser origins allowed besides `DJANGO_ALLOWED_HOSTS`, comma-separated, e.g. `https://app.example.com`",
        "ALLOWED_ORIGINS",
        "(none)",
    ),
    Variable(
        "CONSOLE_ALLOWED_ORIGINS",
        [],
        "exact origins (scheme, host, port) that may open `/console/live`; when set, they replace the default",
        "CONSOLE_ALLOWED_ORIGINS",
        "(the server's own origin)",
    ),
    Variable(
        "REALTIME_METRICS_TOKEN",
        "",
        "bearer token `/metrics` requires; unset, `/metrics` answers 403 except under DEBUG",
        "METRICS_TOKEN",
        "(none)",
    ),
    Variable(
        "REALTIME_RECORD_AUDIO",
        False,
        "`1` keeps each session's input and output audio as WAVs, playable in the admin",
        "RECORD_AUDIO",
    ),
    # --- Django ---
    Variable(
        "DJANGO_DEBUG",
        False,
        "`1` for local development only: Django's debug pages, the Realtime endpoint open and `/metrics` open (`make serve` sets it)",
    ),
    Variable(
        "DJANGO_SECRET_KEY",
        "",
        "required unless `DJANGO_DEBUG=1`: without it the server refuses to start; 50+ random characters",
        shown="(none)",
    ),
    Variable(
        "DJANGO_ALLOWED_HOSTS",
        ["127.0.0.1", "localhost", "[::1]"],
        "comma-separated host names the server answers to, over HTTP and WebSocket",
    ),
    Variable(
        "DJANGO_SECURE_COOKIES",
        True,
        "Secure flag on the session and CSRF cookies (always off under DEBUG); `0` only for plain HTTP on a trusted network",
        shown="on unless DEBUG",
    ),
    Variable(
        "DJANGO_SECURE_SSL_REDIRECT", False, "`1` redirects HTTP to HTTPS (`/healthz`, `/readyz`, `/metrics` exempt)"
    ),
    Variable(
        "DJANGO_SECURE_HSTS_SECONDS", 0, "`Strict-Transport-Security` max-age; set only once HTTPS works everywhere"
    ),
    Variable("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", False, "HSTS for every subdomain too"),
    Variable("DJANGO_SECURE_HSTS_PRELOAD", False, "ask for the HSTS preload list (hard to undo)"),
    Variable(
        "DJANGO_BEHIND_TLS_PROXY",
        False,
        "`1` trusts `X-Forwarded-Proto: https` from the proxy (it must set or overwrite that header); Django and the console's origin check then treat such requests as HTTPS",
    ),
    Variable(
        "DJANGO_CSRF_TRUSTED_ORIGINS",
        [],
        "comma-separated origins for admin forms behind a proxy, e.g. `https://voice.example.com`",
        shown="(none)",
    ),
    Variable(
        "DJANGO_STATIC_ROOT",
        "",
        "where `collectstatic` puts static files, if another server serves them (daphne + whitenoise need none)",
        shown="(none)",
    ),
    Variable("DATABASE_URL", "", "e.g. `postgres://user@127.0.0.1:5432/realtime`", shown="SQLite `db.sqlite3`"),
    Variable(
        "REDIS_URL",
        "",
        "e.g. `redis://127.0.0.1:6379/0` switches Channels to channels-redis",
        shown="(in-memory layer)",
    ),
    Variable(
        "MEDIA_ROOT",
        "var/media",
        "where recordings are stored (Django's default file storage), relative to the repository",
    ),
    Variable("LOG_LEVEL", "INFO", "root log level"),
)

BY_ENV = {variable.env: variable for variable in VARIABLES}

KINDS = {variable.key: variable for variable in VARIABLES if variable.key}  # by VOICE key


def read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Every variable's typed value, by name: the environment's when set and not empty, else the default."""
    values: dict[str, Any] = {}
    for variable in VARIABLES:
        raw = environ.get(variable.env, "")
        values[variable.env] = variable.parse(raw) if raw.strip() else _copy(variable.default)
    return values


def voice_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """The VOICE dict for settings.py, from read_environment's values."""
    return {variable.key: values[variable.env] for variable in VARIABLES if variable.key}


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value
