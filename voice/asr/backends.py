"""ASR backends behind one interface: an OpenAI-compatible transcription API, or none."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import openai
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from voice.conf import get_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TranscriptionResult:
    text: str
    language: str | None = None


class TranscriptionError(Exception):
    """The ASR service failed or answered something unusable; ``retryable`` says whether to try again."""

    def __init__(self, code: str, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


class TranscriptionBackend(Protocol):
    enabled: bool

    async def transcribe(
        self, wav: bytes, *, model: str, language: str | None, prompt: str | None, timeout: float
    ) -> TranscriptionResult: ...


class NoTranscription:
    """Transcription off: sessions that ask for it get no transcription events (logged once)."""

    enabled = False

    async def transcribe(
        self, wav: bytes, *, model: str, language: str | None, prompt: str | None, timeout: float
    ) -> TranscriptionResult:
        raise TranscriptionError("transcription_disabled", "No ASR service is configured.", retryable=False)


class OpenAICompatibleBackend:
    """Any service that speaks OpenAI's /audio/transcriptions (OpenAI, Groq, Deepgram's, speaches...)."""

    enabled = True

    def __init__(self, *, base_url: str | None, api_key: str, default_model: str) -> None:
        self.default_model = default_model
        # Retries are ours (bounded, with backoff), so the SDK's own are off.
        self.client = openai.AsyncOpenAI(base_url=base_url or None, api_key=api_key or "none", max_retries=0)

    async def transcribe(
        self, wav: bytes, *, model: str, language: str | None, prompt: str | None, timeout: float
    ) -> TranscriptionResult:
        options: dict[str, Any] = {}
        if language:
            options["language"] = language
        if prompt:
            options["prompt"] = prompt
        try:
            answer = await self.client.audio.transcriptions.create(
                file=("speech.wav", wav, "audio/wav"),
                model=self.default_model or model,
                response_format="json",
                timeout=timeout,
                **options,
            )
        except openai.APITimeoutError as exc:
            raise TranscriptionError(
                "asr_timeout", f"The ASR service did not answer within {timeout:g}s.", retryable=True
            ) from exc
        except openai.APIStatusError as exc:
            retryable = exc.status_code >= 500 or exc.status_code == 429
            raise TranscriptionError(
                "asr_http_error", f"The ASR service answered HTTP {exc.status_code}: {exc.message}", retryable=retryable
            ) from exc
        except openai.APIConnectionError as exc:
            raise TranscriptionError(
                "asr_unreachable", f"The ASR service is unreachable: {exc}", retryable=True
            ) from exc
        except (openai.APIResponseValidationError, ValueError, TypeError) as exc:  # not the JSON the API promises
            raise TranscriptionError(
                "asr_bad_response", f"The ASR service's answer is unusable: {exc}", retryable=False
            ) from exc
        text = getattr(answer, "text", None)
        if not isinstance(text, str):
            raise TranscriptionError("asr_bad_response", "The ASR service's answer has no text.", retryable=False)
        return TranscriptionResult(text=text.strip(), language=getattr(answer, "language", None) or language)


def openai_compatible_from_settings() -> OpenAICompatibleBackend | NoTranscription:
    """The OpenAI-compatible backend from ASR_BASE_URL / ASR_API_KEY / ASR_MODEL; none when unset."""
    config = get_config()
    if not (config["ASR_BASE_URL"] or config["ASR_API_KEY"]):
        log.info("no ASR_BASE_URL or ASR_API_KEY: input transcription is off")
        return NoTranscription()
    return OpenAICompatibleBackend(
        base_url=config["ASR_BASE_URL"], api_key=config["ASR_API_KEY"], default_model=config["ASR_MODEL"]
    )


@cache
def get_backend() -> TranscriptionBackend:
    """The configured backend: VOICE["ASR_BACKEND"] names a class or a factory by dotted path."""
    return import_string(get_config()["ASR_BACKEND"])()


@receiver(setting_changed)
def _forget_backend(*, setting: str, **kwargs: Any) -> None:
    if setting == "VOICE":
        get_backend.cache_clear()
