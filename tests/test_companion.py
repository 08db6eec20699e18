"""The companion model through an OpenAI-compatible chat-completions API, against a real local HTTP server.

The backend (streamed text and tool calls assembled, usage read, errors), the per-session runner
(one call at a time, in order, bounded queue, timeouts and retries, finish and cancel), what is
stored and shown in the admin, and the settings.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User

from transcripts import services
from transcripts.models import CompanionCall
from voice.companion import (
    ERROR_CODES,
    CompanionReply,
    NoCompanion,
    OpenAICompatibleCompanion,
    SessionCompanion,
    get_companion,
)
from voice.environment import read_environment
from voice.protocol.companion import CompanionOutcome, CompanionRequest, ToolCall
from voice.recorder import SessionRecorder

from .companion_server import MODEL, CompanionServer, Reply, companion_server, companion_settings  # noqa: F401
from .conftest import TIMEOUT

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def request(
    number: int = 1,
    text: str = "What is the weather in Paris?",
    *,
    tools: list | None = None,
    tool_choice: str | dict | None = None,
    purpose: str = "turn",
) -> CompanionRequest:
    return CompanionRequest(
        request_id=f"cmp_{number}",
        purpose=purpose,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
        tools=tools or [],
        tool_choice=tool_choice,
        context={"response_id": f"resp_{number}"},
    )


@pytest.fixture
async def backend(companion_server: CompanionServer) -> AsyncIterator[OpenAICompatibleCompanion]:  # noqa: F811
    companion = OpenAICompatibleCompanion(
        base_url=companion_server.base_url, api_key="test-key", model=MODEL, max_tokens=400
    )
    yield companion
    await companion.client.close()


class Collected:
    """A runner whose outcomes are collected, with when each was delivered."""

    def __init__(self, backend, *, timeout: float = 5.0, retries: int = 0, max_pending: int = 4) -> None:
        self.outcomes: list[CompanionOutcome] = []
        self.times: list[float] = []
        self.runner = SessionCompanion(backend, self.deliver, timeout=timeout, retries=retries, max_pending=max_pending)

    async def deliver(self, outcome: CompanionOutcome) -> None:
        self.outcomes.append(outcome)
        self.times.append(time.monotonic())

    async def wait(self, count: int) -> list[CompanionOutcome]:
        async with asyncio.timeout(TIMEOUT):
            while len(self.outcomes) < count:
                await asyncio.sleep(0.01)
        return self.outcomes


async def ask(backend, *requests: CompanionRequest, **options) -> list[CompanionOutcome]:
    collected = Collected(backend, **options)
    for item in requests:
        collected.runner.submit(item)
    outcomes = await collected.wait(len(requests))
    await collected.runner.finish(timeout=0)
    return outcomes


# --- the backend against the server ---------------------------------------------------------------


async def test_streamed_text_is_assembled_with_its_usage(backend, companion_server: CompanionServer) -> None:  # noqa: F811
    companion_server.script(Reply(text="It is sunny in Paris, twenty degrees.", chunks=5, usage=(31, 9)))
    [outcome] = await ask(backend, request())
    assert outcome.error is None and outcome.error_code is None
    assert outcome.text == "It is sunny in Paris, twenty degrees." and outcome.tool_calls == ()
    assert outcome.usage == {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40}
    assert outcome.model == MODEL and outcome.latency_ms >= 0 and outcome.request_id == "cmp_1"
    [body] = companion_server.bodies
    assert body["model"] == MODEL and body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == request().messages and body["max_completion_tokens"] == 400
    assert "tools" not in body and "tool_choice" not in body  # none given: none sent
    assert companion_server.headers[0]["authorization"] == "Bearer test-key"


async def test_streamed_tool_calls_are_assembled_with_ids_names_and_arguments(
    backend,
    companion_server: CompanionServer,  # noqa: F811
) -> None:
    companion_server.script(
        Reply(
            text="Let me look.",
            tool_calls=[("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_weather", {"city": "Lyon"})],
            chunks=4,
        )
    )
    [outcome] = await ask(backend, request(tools=[WEATHER_TOOL], tool_choice="auto"))
    assert outcome.error is None and outcome.text == "Let me look."
    assert outcome.tool_calls == (
        ToolCall("call_fake0", "get_weather", json.dumps({"city": "Paris", "unit": "celsius"})),
        ToolCall("call_fake1", "get_weather", json.dumps({"city": "Lyon"})),
    )
    [body] = companion_server.bodies
    assert body["tools"] == [WEATHER_TOOL] and body["tool_choice"] == "auto"


async def test_a_tool_call_without_an_id_gets_one_and_a_forced_choice_is_sent(
    backend,
    companion_server: CompanionServer,  # noqa: F811
) -> None:
    companion_server.script(Reply(tool_calls=[("get_weather", '{"city": "Oslo"}')], with_ids=False))
    choice = {"type": "function", "function": {"name": "get_weather"}}
    [outcome] = await ask(backend, request(tools=[WEATHER_TOOL], tool_choice=choice))
    [call] = outcome.tool_calls
    assert call.call_id.startswith("call_") and len(call.call_id) > len("call_") + 8
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Oslo"})
    assert companion_server.bodies[0]["tool_choice"] == choice


@pytest.mark.parametrize(("status", "retried"), [(500, True), (429, True), (401, False)])
async def test_an_http_error_is_an_outcome_after_bounded_retries(
    backend,
    companion_server: CompanionServer,  # noqa: F811
    status: int,
    retried: bool,
) -> None:
    companion_server.script(*(Reply(status=status, error_message="no luck") for _ in range(3)))
    [outcome] = await ask(backend, request(), retries=1)
    assert outcome.error_code == "companion_error" and str(status) in outcome.error and "no luck" in outcome.error
    assert outcome.text == "" and outcome.tool_calls == () and outcome.usage is None
    assert companion_server.requests == (2 if retried else 1)


async def test_a_server_error_is_retried_with_backoff_then_answered(
    backend,
    companion_server: CompanionServer,  # noqa: F811
) -> None:
    companion_server.script(Reply(status=503), Reply(status=500), Reply(text="Third time lucky."))
    started = time.monotonic()
    [outcome] = await ask(backend, request(), retries=2)
    assert outcome.error is None and outcome.text == "Third time lucky." and companion_server.requests == 3
    assert time.monotonic() - started >= 0.5 + 1.0 - 0.05  # backed off 0.5 s, then 1 s


async def test_a_slow_answer_times_out_after_its_retries(backend, companion_server: CompanionServer) -> None:  # noqa: F811
    companion_server.default = Reply(text="too late", delay=5.0)
    started = time.monotonic()
    [outcome] = await ask(backend, request(), timeout=0.3, retries=1)
    elapsed = time.monotonic() - started
    assert outcome.error_code == "companion_timeout" and "0.3" in outcome.error
    assert companion_server.requests == 2  # the first try and one retry
    assert elapsed < 0.3 * 2 + 0.5 + 1.0, "bounded: two timeouts and one backoff"


async def test_a_slowly_dripping_stream_is_bounded_by_the_timeout_too(
    backend,
    companion_server: CompanionServer,  # noqa: F811
) -> None:
    companion_server.script(Reply(text="word " * 40, chunks=40, chunk_delay=0.05))  # 2 s in all, each chunk quick
    [outcome] = await ask(backend, request(), timeout=0.5)
    assert outcome.error_code == "companion_timeout" and outcome.latency_ms < 1500


async def test_an_error_in_the_stream_is_an_outcome(backend, companion_server: CompanionServer) -> None:  # noqa: F811
    companion_server.script(Reply(text="Half an answer and then", chunks=6, stream_error=True))
    [outcome] = await ask(backend, request(), retries=2)
    assert outcome.error_code == "companion_error" and "stream" in outcome.error
    assert companion_server.requests == 1  # not retried: the service answered


async def test_an_unreachable_service_is_an_outcome() -> None:
    with CompanionServer() as server:
        url = server.base_url  # closed below: nothing listens there any more
    companion = OpenAICompatibleCompanion(base_url=url, api_key="k", model=MODEL, max_tokens=0)
    try:
        [outcome] = await ask(companion, request(), retries=1)
    finally:
        await companion.client.close()
    assert outcome.error_code == "companion_error" and "unreachable" in outcome.error


# --- the runner -------------------------------------------------------------------------------------


async def test_requests_run_one_at_a_time_and_are_delivered_in_order(
    backend,
    companion_server: CompanionServer,  # noqa: F811
) -> None:
    companion_server.script(
        Reply(text="first", delay=0.3), Reply(text="second", delay=0.05), Reply(text="third", delay=0.1)
    )
    outcomes = await ask(backend, request(1), request(2), request(3))
    assert [o.request_id for o in outcomes] == ["cmp_1", "cmp_2", "cmp_3"]
    assert [o.text for o in outcomes] == ["first", "second", "third"]
    assert companion_server.max_concurrent == 1  # a conversation is sequential
    assert [body["messages"][-1]["content"] for body in companion_server.bodies] == [
        request().messages[-1]["content"]
    ] * 3


async def test_more_than_max_pending_requests_fail_at_once_as_busy(
    backend,
    companion_server: CompanionServer,  # noqa: F811
) -> None:
    companion_server.default = Reply(text="slowly", delay=1.0)
    collected = Collected(backend, max_pending=2)
    started = time.monotonic()
    for number in (1, 2, 3, 4):
        collected.runner.submit(request(number))
    assert collected.runner.pending == 4  # 2 waiting, 2 busy failures on their way
    outcomes = await collected.wait(4)
    assert [(o.request_id, o.error_code) for o in outcomes] == [
        ("cmp_3", "companion_busy"),
        ("cmp_4", "companion_busy"),
        ("cmp_1", None),
        ("cmp_2", None),
    ]
    assert collected.times[1] - started < 0.6, "the busy ones did not wait for the slow ones"
    assert companion_server.requests == 2 and outcomes[0].error and outcomes[0].latency_ms == 0
    await collected.runner.finish(timeout=0)


async def test_a_flood_of_requests_is_refused_without_growing(
    backend,
    companion_server: CompanionServer,  # noqa: F811
) -> None:
    companion_server.default = Reply(text="slowly", delay=1.0)
    collected = Collected(backend, max_pending=2)
    for number in range(1, 101):
        collected.runner.submit(request(number))
    assert collected.runner.pending == 4  # 2 waiting, 2 busy failures on their way; the rest dropped
    outcomes = await collected.wait(4)
    assert [o.request_id for o in outcomes if o.error_code is None] == ["cmp_1", "cmp_2"]
    assert companion_server.requests == 2
    await collected.runner.finish(timeout=0)


async def test_a_failed_delivery_does_not_stop_the_next(backend, companion_server: CompanionServer) -> None:  # noqa: F811
    delivered: list[str] = []

    async def deliver(outcome: CompanionOutcome) -> None:
        delivered.append(outcome.request_id)
        if outcome.request_id == "cmp_1":
            raise RuntimeError("the session broke")

    runner = SessionCompanion(backend, deliver, timeout=5.0, retries=0, max_pending=4)
    runner.submit(request(1))
    runner.submit(request(2))
    assert await asyncio.wait_for(runner.finish(timeout=TIMEOUT), TIMEOUT + 1) is True
    assert delivered == ["cmp_1", "cmp_2"]


async def test_finish_waits_for_pending_answers_but_is_bounded(
    backend,
    companion_server: CompanionServer,  # noqa: F811
) -> None:
    companion_server.script(Reply(text="quick", delay=0.1), Reply(text="never", delay=5.0))
    collected = Collected(backend)
    collected.runner.submit(request(1))
    collected.runner.submit(request(2))
    started = time.monotonic()
    assert await collected.runner.finish(timeout=1.0) is False
    assert time.monotonic() - started < 2.0
    assert [o.text for o in collected.outcomes] == ["quick"]  # the first delivered, the second dropped
    assert collected.runner.pending == 0
    collected.runner.submit(request(3))  # after the end: dropped, nothing runs
    await asyncio.sleep(0.1)
    assert len(collected.outcomes) == 1 and companion_server.requests == 2


async def test_cancel_drops_what_is_pending_at_once(backend, companion_server: CompanionServer) -> None:  # noqa: F811
    companion_server.default = Reply(text="slow", delay=2.0)
    collected = Collected(backend)
    for number in (1, 2, 3):
        collected.runner.submit(request(number))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    cancelled = collected.runner.cancel()
    assert collected.runner.pending == 0 and len(cancelled) == 1  # the worker, in its call
    await asyncio.wait(cancelled, timeout=1.0)
    assert time.monotonic() - started < 0.5 and all(task.done() for task in cancelled)
    await asyncio.sleep(0.2)
    assert collected.outcomes == [] and companion_server.requests == 1


async def test_no_companion_configured_answers_unavailable_at_once() -> None:
    [outcome] = await ask(NoCompanion(), request(), retries=3)
    assert outcome.error_code == "companion_unavailable" and outcome.latency_ms < 1000


async def test_a_backend_that_raises_anything_still_gives_an_outcome() -> None:
    class Broken:
        enabled = True
        model = "broken"

        async def complete(self, request: CompanionRequest, *, timeout: float) -> CompanionReply:
            raise KeyError("surprise")

    [outcome] = await ask(Broken(), request(), retries=2)
    assert outcome.error_code == "companion_error" and "KeyError" in outcome.error
    assert set(ERROR_CODES) == {"companion_timeout", "companion_error", "companion_busy", "companion_unavailable"}


# --- settings -----------------------------------------------------------------------------------------


def test_no_companion_configured_means_none(settings) -> None:
    settings.VOICE = {**settings.VOICE, "COMPANION_BASE_URL": "", "COMPANION_API_KEY": ""}
    assert isinstance(get_companion(), NoCompanion) and get_companion().enabled is False


def test_the_companion_is_built_from_settings_and_rebuilt_when_they_change(
    companion_settings: CompanionServer,  # noqa: F811
    settings,
) -> None:
    companion = get_companion()
    assert isinstance(companion, OpenAICompatibleCompanion) and companion.enabled
    assert companion.model == MODEL and companion.max_tokens == 400
    assert str(companion.client.base_url).rstrip("/") == companion_settings.base_url
    assert get_companion() is companion  # cached
    settings.VOICE = {**settings.VOICE, "COMPANION_MODEL": "other-model", "COMPANION_MAX_TOKENS": 50}
    changed = get_companion()
    assert changed is not companion and (changed.model, changed.max_tokens) == ("other-model", 50)
    settings.VOICE = {**settings.VOICE, "COMPANION_BASE_URL": "", "COMPANION_API_KEY": "sk-only-a-key"}
    assert get_companion().enabled  # a key alone: OpenAI itself
    json.dumps(settings.VOICE)  # settings stay plain data


def test_companion_variables_are_parsed_by_type() -> None:
    defaults = read_environment({})
    assert defaults["COMPANION_BASE_URL"] == "" and defaults["COMPANION_MODEL"] == "gpt-4o-mini"
    assert (defaults["COMPANION_TIMEOUT_S"], defaults["COMPANION_RETRIES"]) == (20.0, 1)
    assert (defaults["COMPANION_MAX_PENDING"], defaults["COMPANION_MAX_TOKENS"]) == (4, 400)
    values = read_environment(
        {"COMPANION_TIMEOUT_S": "7.5", "COMPANION_RETRIES": "3", "COMPANION_MAX_PENDING": "2", "COMPANION_MODEL": "m"}
    )
    assert (values["COMPANION_TIMEOUT_S"], values["COMPANION_RETRIES"], values["COMPANION_MAX_PENDING"]) == (7.5, 3, 2)
    assert values["COMPANION_MODEL"] == "m"


# --- what is stored, and shown ------------------------------------------------------------------------


CONVERSATION = {
    "session_id": "sess_companion",
    "conversation_id": "conv_companion",
    "dialect": "ga",
    "model_name": "moshi-demo-random-weights",
    "model_type": "sft",
}


@pytest.mark.django_db(transaction=True)  # the recorder writes from the database thread
async def test_outcomes_are_stored_through_the_recorder(backend, companion_server: CompanionServer) -> None:  # noqa: F811
    companion_server.script(
        Reply(text="Sunny, twenty degrees.", usage=(40, 6)),
        Reply(tool_calls=[("get_weather", {"city": "Paris"})], usage=(50, 12)),
        Reply(status=500, error_message="the model is down"),
    )
    history = [{"role": "system", "content": "Be brief."}]
    for n in range(30):  # a long conversation, one enormous message in it
        history.append(
            {"role": "user" if n % 2 == 0 else "assistant", "content": f"turn {n} " + "x" * (9000 if n == 28 else 5)}
        )
    long = CompanionRequest("cmp_long", "turn", history, [WEATHER_TOOL], "auto", {"response_id": "resp_9"})
    outcomes = await ask(backend, long, request(2, purpose="response.create"), request(3))
    recorder = SessionRecorder(**CONVERSATION)
    recorder.start()
    await recorder.add(list(outcomes))
    await asyncio.wait_for(recorder.close("disconnect:1000"), TIMEOUT)

    @database_sync_to_async
    def stored() -> list[CompanionCall]:
        return list(CompanionCall.objects.filter(conversation_id=recorder.conversation_pk).order_by("pk"))

    first, second, third = await stored()
    assert (first.request_id, first.purpose, first.status, first.model) == ("cmp_long", "turn", "completed", MODEL)
    assert first.message_count == 31 and len(first.messages) == 21  # the system message and the last 20
    assert first.messages[0] == {"role": "system", "content": "Be brief."}
    assert first.messages[1]["content"].startswith("turn 10 ")
    cut = first.messages[-2]["content"]
    assert cut.startswith("turn 28 xxx") and cut.endswith("more characters)") and len(cut) < 4100
    assert first.asked.startswith("turn 28 ") and len(first.asked) < 4100  # the last user message
    assert first.tools == ["get_weather"] and first.tool_choice == "auto" and first.context == {"response_id": "resp_9"}
    assert (first.text, first.tool_calls) == ("Sunny, twenty degrees.", [])
    assert (first.prompt_tokens, first.completion_tokens, first.total_tokens) == (40, 6, 46)
    assert first.latency_ms is not None and first.clock_ms is None
    assert second.purpose == "response.create" and second.asked == "What is the weather in Paris?"
    assert second.tool_calls == [{"call_id": "call_fake0", "name": "get_weather", "arguments": '{"city": "Paris"}'}]
    assert (third.status, third.error_code, third.total_tokens) == ("failed", "companion_error", None)
    assert "the model is down" in third.error


def outcome(number: int, **fields) -> CompanionOutcome:
    values = {"text": "", "tool_calls": (), "model": "gpt-test", "latency_ms": 120, **fields}
    return CompanionOutcome(request=request(number, text=f"question {number}"), **values)


@pytest.fixture
def staff_client(client):
    user = User.objects.create_user("staff", password="pw", is_staff=True, is_superuser=True)
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_the_conversation_page_shows_what_the_companion_was_asked_and_answered(staff_client) -> None:
    pk = services.conversation_start(**CONVERSATION)
    services.conversation_records_apply(
        conversation_pk=pk,
        batch=[
            outcome(1, text="It is sunny.", usage={"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35}),
            outcome(
                2,
                tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Paris"}'),),
                usage={"prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 50},
            ),
            outcome(3, error="The companion did not answer within 20s.", error_code="companion_timeout"),
        ],
    )
    services.conversation_end(conversation_pk=pk, reason="disconnect:1000")
    page = staff_client.get(f"/admin/transcripts/conversation/{pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    order = [
        "companion turn (completed, gpt-test)",
        "asked: question 1 — answered: It is sunny.",
        "35 tokens (30 prompt, 5 completion)",
        "asked: question 2 — answered: tool call: get_weather({&quot;city&quot;: &quot;Paris&quot;})",
        "companion turn (failed, gpt-test)",
        "asked: question 3 — answered: companion_timeout: The companion did not answer within 20s.",
    ]
    positions = [html.index(text) for text in order]
    assert positions == sorted(positions), list(zip(order, positions, strict=True))
    assert "3 companion calls" in html and "85 tokens (70 prompt, 15 completion)" in html  # the totals
    listing = staff_client.get("/admin/transcripts/companioncall/", {"conversation__id__exact": pk})
    assert listing.status_code == 200 and b"question 2" in listing.content and b"get_weather" in listing.content
    call = CompanionCall.objects.get(request_id="cmp_1")
    detail = staff_client.get(f"/admin/transcripts/companioncall/{call.pk}/change/")
    assert detail.status_code == 200 and b"Be brief." in detail.content


@pytest.mark.django_db
def test_a_live_conversations_companion_calls_sit_on_its_session_clock(staff_client) -> None:
    from voice.live.records import Fragment, LiveStarted

    pk = services.conversation_start(
        session_id="live_companion", conversation_id="live_companion", dialect="live", model_name="m", model_type="sft"
    )
    resource = {"id": "live_companion", "model": "gpt-live-1", "instructions": "Answer about trains."}
    services.conversation_records_apply(
        conversation_pk=pk,
        batch=[LiveStarted(resource, "sft"), Fragment("user", "When is the next train?", 1000, 2500)],
    )
    services.conversation_records_apply(conversation_pk=pk, batch=[outcome(1, text="At noon.")])
    services.conversation_records_apply(conversation_pk=pk, batch=[Fragment("assistant", "At noon.", 3000, 3800)])
    assert CompanionCall.objects.get(conversation_id=pk).clock_ms == 2500
    html = staff_client.get(f"/admin/transcripts/conversation/{pk}/change/").content.decode()
    order = ["user turn", "+0:02.500", "companion turn (completed", "+0:03.000", "assistant turn"]
    positions = [html.index(text) for text in order]
    assert positions == sorted(positions), list(zip(order, positions, strict=True))


@pytest.mark.django_db
def test_whatever_a_request_holds_is_stored_cleaned() -> None:
    pk = services.conversation_start(**{**CONVERSATION, "session_id": "sess_dirty"})
    dirty = CompanionRequest(
        request_id="cmp_" + "x" * 200,
        purpose="tool_output",
        messages=[
            "not a message",
            {"role": "user", "content": [{"type": "text", "text": "nul\x00 here"}, {"type": "input_audio"}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "lone \ud800 surrogate"},
        ],
        tools=[{"type": "function", "function": {"name": "f"}}, {"type": "web_search"}],
        tool_choice={"type": "function", "function": {"name": "f"}},
        context={"response_id": "resp_1", "score": float("nan"), "opaque": object()},
    )
    record = CompanionOutcome(dirty, "ok\x00", (), "m" * 300, -5, usage={"total_tokens": 2**40, "prompt_tokens": True})
    services.conversation_records_apply(conversation_pk=pk, batch=[record])
    call = CompanionCall.objects.get(conversation_id=pk)
    assert len(call.request_id) == 64 and len(call.model) == 128 and call.text == "ok"
    assert call.asked == "(tool output) lone \ufffd surrogate" and call.message_count == 3
    assert call.messages[0]["content"][0]["text"] == "nul here" and len(call.messages) == 2
    assert call.tools == ["f", "?"] and call.tool_choice == {"type": "function", "function": {"name": "f"}}
    assert call.context["response_id"] == "resp_1" and call.context["score"] is None
    assert call.latency_ms == 0 and call.prompt_tokens is None and call.total_tokens == 2147483647
