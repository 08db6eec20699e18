"""Companion backends behind one interface: an OpenAI-compatible chat-completions API, or none."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import openai
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from voice.conf import get_config
from voice.protocol.companion import CompanionRequest, ToolCall

log = logging.getLogger(__name__)

USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


@dataclass(frozen=True)
class CompanionReply:
    """What the model answered to one call: text and/or tool calls, the model that answered, the usage."""

    text: str
    tool_calls: tuple[ToolCall, ...]
    model: str
    usage: dict[str, int] | None = None
    finish_reason: str | None = None


class CompanionError(Exception):
    """The companion service failed or answered something unusable; ``retryable`` says whether to try again."""

    def __init__(self, code: str, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


class CompanionBackend(Protocol):
    enabled: bool
    model: str

    async def complete(self, request: CompanionRequest, *, timeout: float) -> CompanionReply: ...


class NoCompanion:
    """No companion configured: every request fails at once with ``companion_unavailable``."""

    enabled = False
    model = ""

    async def complete(self, request: CompanionRequest, *, timeout: float) -> CompanionReply:
        raise CompanionError("companion_unavailable", "No companion model is configured.", retryable=False)


class OpenAICompatibleCompanion:
    """Any service that speaks OpenAI's /chat/completions with streaming (OpenAI, Groq, vLLM, Ollama...)."""

    enabled = True

    def __init__(
        self, *, base_url: str | None, api_key: str, model: str, max_tokens: int, timeout: float = 20.0
    ) -> None:
        self.model = model
        self.max_tokens = max_tokens
        # Retries are ours (bounded, with backoff, in SessionCompanion), so the SDK's own are off.
        self.client = openai.AsyncOpenAI(
            base_url=base_url or None, api_key=api_key or "none", timeout=timeout, max_retries=0
        )

    async def complete(self, request: CompanionRequest, *, timeout: float) -> CompanionReply:
        options: dict[str, Any] = {}
        if request.tools:
            options["tools"] = request.tools
        if request.tool_choice is not None:
            options["tool_choice"] = request.tool_choice
        if self.max_tokens > 0:
            options["max_completion_tokens"] = self.max_tokens
        assembly = _Assembly(self.model)
        try:
            stream = await self.client.chat.completions.create(
                model=self.model,
                messages=request.messages,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
                timeout=timeout,
                **options,
            )
            async for chunk in stream:
                assembly.add(chunk)
        except openai.APITimeoutError as exc:
            raise CompanionError(
                "companion_timeout", f"The companion did not answer within {timeout:g}s.", retryable=True
            ) from exc
        except openai.APIStatusError as exc:
            retryable = exc.status_code >= 500 or exc.status_code == 429
            raise CompanionError(
                "companion_error", f"The companion answered HTTP {exc.status_code}: {_said(exc)}", retryable=retryable
            ) from exc
        except openai.APIConnectionError as exc:
            raise CompanionError("companion_error", f"The companion is unreachable: {exc}", retryable=True) from exc
        except openai.APIError as exc:  # an error event in the stream
            raise CompanionError(
                "companion_error", f"The companion's stream failed: {exc.message}", retryable=False
            ) from exc
        except (ValueError, TypeError, AttributeError) as exc:  # not the chunks the API promises
            raise CompanionError(
                "companion_error", f"The companion's answer is unusable: {exc}", retryable=False
            ) from exc
        return assembly.reply()


def _said(exc: openai.APIStatusError) -> str:
    """The service's own error message when its body has one, else the SDK's."""
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else None
    return str(message)[:500] if message else exc.message[:500]


class _Assembly:
    """A streamed answer put together: text deltas joined, tool-call deltas joined by their index."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.text: list[str] = []
        self.calls: dict[int, dict[str, str]] = {}
        self.usage: dict[str, int] | None = None
        self.finish_reason: str | None = None

    def add(self, chunk: Any) -> None:
        if getattr(chunk, "model", None):
            self.model = chunk.model
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.usage = {key: int(getattr(usage, key, 0) or 0) for key in USAGE_KEYS}
        for choice in chunk.choices or ():
            if choice.index != 0:
                continue  # one choice asked for (n=1)
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
            delta = choice.delta
            if delta is None:
                continue
            if delta.content:
                self.text.append(delta.content)
            for piece in delta.tool_calls or ():
                call = self.calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                if piece.id and not call["id"]:
                    call["id"] = piece.id  # some servers repeat it in every delta
                function = piece.function
                if function is not None:
                    if function.name and function.name != call["name"]:
                        call["name"] += function.name
                    if function.arguments:
                        call["arguments"] += function.arguments

    def reply(self) -> CompanionReply:
        calls = tuple(
            ToolCall(
                call_id=call["id"] or f"call_{secrets.token_hex(12)}",
                name=call["name"],
                arguments=call["arguments"] or "{}",
            )
            for _, call in sorted(self.calls.items())
        )
        return CompanionReply(
            text="".join(self.text),
            tool_calls=calls,
            model=self.model,
            usage=self.usage,
            finish_reason=self.finish_reason,
        )


def openai_compatible_from_settings() -> OpenAICompatibleCompanion | NoCompanion:
    """The OpenAI-compatible companion from COMPANION_BASE_URL / _API_KEY / _MODEL; none when both are unset."""
    config = get_config()
    if not (config["COMPANION_BASE_URL"] or config["COMPANION_API_KEY"]):
        log.info("no COMPANION_BASE_URL or COMPANION_API_KEY: no companion model")
        return NoCompanion()
    return OpenAICompatibleCompanion(
        base_url=config["COMPANION_BASE_URL"],
        api_key=config["COMPANION_API_KEY"],
        model=config["COMPANION_MODEL"],
        max_tokens=config["COMPANION_MAX_TOKENS"],
        timeout=config["COMPANION_TIMEOUT_S"],
    )


@cache
def get_companion() -> CompanionBackend:
    """The configured companion: VOICE["COMPANION_BACKEND"] names a class or a factory by dotted path."""
    return import_string(get_config()["COMPANION_BACKEND"])()


@receiver(setting_changed)
def _forget_companion(*, setting: str, **kwargs: Any) -> None:
    if setting == "VOICE":
        get_companion.cache_clear()
