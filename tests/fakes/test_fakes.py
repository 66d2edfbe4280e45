"""The provider fakes, driven through the real SDKs over real HTTP."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from tests.fakes.anthropic_fake import AnthropicFake
from tests.fakes.gemini_fake import GeminiFake, quota_exceeded
from tests.fakes.http import ToolCall, Turn
from tests.fakes.openai_fake import OpenAIFake, insufficient_quota

OPENAI_KEY = "sk-test-openai-0000"
GEMINI_KEY = "gemini-test-key"
ANTHROPIC_KEY = "sk-ant-test-0000"
GPT = "gpt-4o-mini"
GEMINI = "gemini-3-pro-preview"
CLAUDE = "claude-sonnet-4-6"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- #
# Fixtures
# --------------------------------------------------------------------------- #


@pytest.fixture
def openai_fake() -> Iterator[OpenAIFake]:
    with OpenAIFake(expect_key=OPENAI_KEY) as fake:
        yield fake


@pytest.fixture
async def openai_client(openai_fake: OpenAIFake) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=openai_fake.base_url, api_key=OPENAI_KEY, max_retries=0)
    yield client
    await client.close()


@pytest.fixture
def gemini_fake() -> Iterator[GeminiFake]:
    with GeminiFake(expect_key=GEMINI_KEY) as fake:
        yield fake


def _gemini(fake: GeminiFake, key: str = GEMINI_KEY, timeout_ms: int | None = None) -> genai.Client:
    options = types.HttpOptions(base_url=fake.base_url, timeout=timeout_ms)
    return genai.Client(api_key=key, http_options=options)


@pytest.fixture
async def gemini_client(gemini_fake: GeminiFake) -> AsyncIterator[Any]:
    client = _gemini(gemini_fake)
    yield client.aio
    await client.aio.aclose()


@pytest.fixture
def anthropic_fake() -> Iterator[AnthropicFake]:
    with AnthropicFake(expect_key=ANTHROPIC_KEY) as fake:
        yield fake


@pytest.fixture
async def anthropic_client(anthropic_fake: AnthropicFake) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=anthropic_fake.base_url, api_key=ANTHROPIC_KEY, max_retries=0)
    yield client
    await client.close()


USER = [{"role": "user", "content": "What time is it?"}]
GPT_TOOLS = [{"type": "function", "function": {"name": "current_time", "description": "The time now.",
                                               "parameters": {"type": "object", "properties": {}}}}]
CLAUDE_TOOLS = [{"name": name, "description": name, "input_schema": {"type": "object"}}
                for name in ("get_weather", "get_time")]


# --------------------------------------------------------------------------- #
# OpenAI
# --------------------------------------------------------------------------- #


async def test_openai_parallel_tool_calls(openai_fake: OpenAIFake, openai_client: openai.AsyncOpenAI) -> None:
    openai_fake.script_tool_calls(("get_weather", {"city": "Paris"}), ("get_time", {"tz": "Europe/Paris"}))

    response = await openai_client.chat.completions.create(model=GPT, messages=USER)

    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}, {"tz": "Europe/Paris"}]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


async def test_openai_malformed_arguments_pass_through(openai_fake: OpenAIFake, openai_client: openai.AsyncOpenAI) -> None:
    openai_fake.script(Turn(tool_calls=[ToolCall("calculator", '{"expression": "1+')]))

    response = await openai_client.chat.completions.create(model=GPT, messages=USER)

    assert response.choices[0].message.tool_calls[0].function.arguments == '{"expression": "1+'


async def test_openai_rate_limit_with_retry_after(openai_fake: OpenAIFake, openai_client: openai.AsyncOpenAI) -> None:
    openai_fake.script_error(429, retry_after=7)

    with pytest.raises(openai.RateLimitError) as caught:
        await openai_client.chat.completions.create(model=GPT, messages=USER)

    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"
    assert openai_fake.call_count == 1


async def test_openai_server_error(openai_fake: OpenAIFake, openai_client: openai.AsyncOpenAI) -> None:
    openai_fake.script_error(500)

    with pytest.raises(openai.InternalServerError):
        await openai_client.chat.completions.create(model=GPT, messages=USER, tools=GPT_TOOLS)
    # The scripted error is used up; the next request gets an answer.
    response = await openai_client.chat.completions.create(model=GPT, messages=USER, tools=GPT_TOOLS)
    assert response.choices[0].message.tool_calls


async def test_openai_slow_answer_times_out(openai_fake: OpenAIFake, openai_client: openai.AsyncOpenAI) -> None:
    openai_fake.script_delay(5.0, Turn(text="too late"))

    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        await openai_client.chat.completions.create(model=GPT, messages=USER, timeout=0.3)

    assert time.monotonic() - started < 2
    await openai_fake.wait_for_disconnects(1)


async def test_openai_slow_answer_within_timeout(openai_fake: OpenAIFake, openai_client: openai.AsyncOpenAI) -> None:
    openai_fake.script_delay(0.2, Turn(text="late but fine"))

    started = time.monotonic()
    response = await openai_client.chat.completions.create(model=GPT, messages=USER, timeout=5)

    assert response.choices[0].message.content == "late but fine"
    assert time.monotonic() - started >= 0.2


async def test_openai_cancelled_request_is_seen_by_fake(openai_fake: OpenAIFake, openai_client: openai.AsyncOpenAI) -> None:
    openai_fake.script_delay(5.0)
    task = asyncio.create_task(openai_client.chat.completions.create(model=GPT, messages=USER))
    await openai_fake.wait_for_calls(1)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    await openai_fake.wait_for_disconnects(1)


async def test_openai_streaming_text(openai_fake: OpenAIFake, openai_client: openai.AsyncOpenAI) -> None:
    openai_fake.script_text(chunks=["The time ", "is ", "noon."])

    stream = await openai_client.chat.completions.create(
        model=GPT, messages=USER, stream=True, stream_options={"include_usage": True}
    )
    pieces: list[str] = []
    finish: list[str] = []
    usage = None
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish.append(choice.finish_reason)
        usage = chunk.usage or usage

    assert pieces == ["The time ", "is ", "noon."]
    assert finish == ["stop"]
    assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0


async def test_openai_streaming_tool_calls(openai_fake: OpenAIFake, openai_client: openai.AsyncOpenAI) -> None:
    openai_fake.script_tool_calls(("get_weather", {"city": "Paris", "unit": "celsius"}), ("current_time", {}))

    stream = await openai_client.chat.completions.create(model=GPT, messages=USER, stream=True)
    calls: dict[int, dict[str, str]] = {}
    async for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += delta.id or ""
                entry["name"] += delta.function.name or "" if delta.function else ""
                entry["arguments"] += delta.function.arguments or "" if delta.function else ""

    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "current_time"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "unit": "celsius"}
    assert json.loads(calls[1]["arguments"]) == {}
    assert all(c["id"].startswith("call_") for c in calls.values())


async def test_openai_stream_cut_midway(openai_fake: OpenAIFake, openai_client: openai.AsyncOpenAI) -> None:
    openai_fake.script_text(chunks=["a", "b", "c", "d"], abort_after=2)

    stream = await openai_client.chat.completions.create(model=GPT, messages=USER, stream=True)
    with pytest.raises(openai.APIConnectionError):
        async for _ in stream:
            pass


async def test_openai_bad_key(openai_fake: OpenAIFake) -> None:
    client = openai.AsyncOpenAI(base_url=openai_fake.base_url, api_key="sk-wrong-key-1234", max_retries=0)
    try:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model=GPT, messages=USER)
        assert caught.value.code == "invalid_api_key"
        assert caught.value.message.startswith("Error code: 401") and "Incorrect API key provided" in str(caught.value)
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
    finally:
        await client.close()


async def test_openai_models_and_path_without_v1(openai_fake: OpenAIFake) -> None:
    bare = openai.AsyncOpenAI(base_url=openai_fake.root_url, api_key=OPENAI_KEY, max_retries=0)
    try:
        models = await bare.models.list()
        response = await bare.chat.completions.create(model=GPT, messages=USER, tools=GPT_TOOLS)
    finally:
        await bare.close()

    assert [m.id for m in models.data] == ["gpt-4o-mini", "gpt-4o"]
    assert response.choices[0].message.tool_calls
    assert [r.path for r in openai_fake.requests] == ["/models", "/chat/completions"]


async def test_openai_default_tool_loop(openai_client: openai.AsyncOpenAI, openai_fake: OpenAIFake) -> None:
    openai_fake.rounds = 3
    messages: list[dict[str, Any]] = list(USER)
    for _ in range(10):
        response = await openai_client.chat.completions.create(model=GPT, messages=messages, tools=GPT_TOOLS)
        message = response.choices[0].message
        if not message.tool_calls:
            break
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            assert call.function.name == "current_time" and call.function.arguments == "{}"
            messages.append({"role": "tool", "tool_call_id": call.id, "content": "12:00"})

    assert message.content == "All done."
    assert openai_fake.call_count == 4
    assert [len(body["messages"]) for body in openai_fake.calls] == [1, 3, 5, 7]


async def test_openai_rejects_unanswered_tool_calls(openai_fake: OpenAIFake, openai_client: openai.AsyncOpenAI) -> None:
    messages = [
        *USER,
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "user", "content": "hello?"},
    ]
    with pytest.raises(openai.BadRequestError, match="call_1"):
        await openai_client.chat.completions.create(model=GPT, messages=messages)


async def test_openai_refuses_past_arguments_that_are_not_json_as_vllm_does(
    openai_fake: OpenAIFake, openai_client: openai.AsyncOpenAI
) -> None:
    def history(arguments: str) -> list[dict[str, Any]]:
        call = {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": arguments}}
        return [*USER, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "Error: not JSON"}]

    for broken in ('{"expression": "1+', "[1, 2]"):
        with pytest.raises(openai.BadRequestError) as caught:
            await openai_client.chat.completions.create(model=GPT, messages=history(broken))
        assert caught.value.status_code == 400
    openai_fake.script_text("Fine.")
    answer = await openai_client.chat.completions.create(model=GPT, messages=history('{"expression": "1+1"}'))
    assert answer.choices[0].message.content == "Fine."


async def test_openai_cuts_an_answer_off_at_max_tokens(openai_fake: OpenAIFake, openai_client: openai.AsyncOpenAI) -> None:
    openai_fake.script_text("word " * 100)
    openai_fake.script_text(chunks=["word " * 50, "word " * 50])

    plain = await openai_client.chat.completions.create(model=GPT, messages=USER, max_tokens=10)
    assert plain.choices[0].finish_reason == "length" and plain.usage.completion_tokens == 10
    assert plain.choices[0].message.content == ("word " * 100)[:40]
    stream = await openai_client.chat.completions.create(model=GPT, messages=USER, max_tokens=10, stream=True)
    finishes = [c.finish_reason async for chunk in stream for c in chunk.choices if c.finish_reason]
    assert finishes == ["length"]


async def test_openai_content_filter_and_an_exhausted_quota(
    openai_fake: OpenAIFake, openai_client: openai.AsyncOpenAI
) -> None:
    openai_fake.script_text("I will not", finish_reason="content_filter")
    openai_fake.script(Turn(error=insufficient_quota()))

    filtered = await openai_client.chat.completions.create(model=GPT, messages=USER)
    assert filtered.choices[0].finish_reason == "content_filter"
    with pytest.raises(openai.RateLimitError) as caught:
        await openai_client.chat.completions.create(model=GPT, messages=USER)
    assert caught.value.code == "insufficient_quota" and "exceeded your current quota" in caught.value.message


async def test_openai_fails_half_way_through_a_stream(openai_fake: OpenAIFake, openai_client: openai.AsyncOpenAI) -> None:
    openai_fake.script_text(chunks=["a", "b", "c", "d"], error_after=3)

    stream = await openai_client.chat.completions.create(model=GPT, messages=USER, stream=True)
    pieces: list[str] = []
    with pytest.raises(openai.APIError, match="The server had an error"):
        async for chunk in stream:
            pieces.extend(c.delta.content for c in chunk.choices if c.delta.content)
    assert pieces == ["a", "b"]


async def test_openai_can_send_arguments_as_objects() -> None:
    with OpenAIFake(arguments_as_objects=True) as fake:
        fake.script_tool_calls(("calculator", {"expression": "6*7"}))
        async with openai.AsyncOpenAI(base_url=fake.base_url, api_key=OPENAI_KEY, max_retries=0) as client:
            response = await client.chat.completions.create(model=GPT, messages=USER)
    assert response.choices[0].message.tool_calls[0].function.arguments == {"expression": "6*7"}


# --------------------------------------------------------------------------- #
# Gemini
# --------------------------------------------------------------------------- #


def _question() -> types.Content:
    return types.Content(role="user", parts=[types.Part(text="Weather and time in Paris?")])


def _answers(calls: list[types.FunctionCall]) -> types.Content:
    parts = [types.Part.from_function_response(name=c.name, response={"result": "ok"}) for c in calls]
    return types.Content(role="user", parts=parts)


GEMINI_TOOLS = types.GenerateContentConfig(
    tools=[types.Tool(function_declarations=[types.FunctionDeclaration(name=name, description=name)
                                             for name in ("get_weather", "get_time", "current_time")])],
    automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))


async def _two_call_turn(fake: GeminiFake, client: Any) -> types.GenerateContentResponse:
    fake.script_tool_calls(("get_weather", {"city": "Paris"}), ("get_time", {"tz": "Europe/Paris"}))
    return await client.models.generate_content(model=GEMINI, contents=[_question()], config=GEMINI_TOOLS)


async def test_gemini_two_function_calls_with_signatures(gemini_fake: GeminiFake, gemini_client: Any) -> None:
    response = await _two_call_turn(gemini_fake, gemini_client)

    assert [(c.name, c.args) for c in response.function_calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"tz": "Europe/Paris"}),
    ]
    # As Gemini 3 does: only the first of parallel calls is signed.
    first, second = [p.thought_signature for p in response.candidates[0].content.parts]
    assert isinstance(first, bytes) and first and second is None
    assert set(gemini_fake.signatures) == {first}
    assert response.usage_metadata.total_token_count > response.usage_metadata.prompt_token_count


async def test_gemini_replay_with_signatures_intact(gemini_fake: GeminiFake, gemini_client: Any) -> None:
    response = await _two_call_turn(gemini_fake, gemini_client)
    gemini_fake.script_text("Sunny; it is noon.")

    contents = [_question(), response.candidates[0].content, _answers(response.function_calls)]
    final = await gemini_client.models.generate_content(model=GEMINI, contents=contents, config=GEMINI_TOOLS)

    assert final.text == "Sunny; it is noon."
    replayed = gemini_fake.last_call["contents"][1]["parts"]
    assert replayed[0]["thoughtSignature"] and "thoughtSignature" not in replayed[1]


async def test_gemini_replay_without_signature_is_rejected(gemini_fake: GeminiFake, gemini_client: Any) -> None:
    response = await _two_call_turn(gemini_fake, gemini_client)
    stripped = response.candidates[0].content.model_copy(deep=True)
    stripped.parts[0].thought_signature = None

    with pytest.raises(genai_errors.ClientError) as caught:
        await gemini_client.models.generate_content(
            model=GEMINI, contents=[_question(), stripped, _answers(response.function_calls)]
        )

    assert caught.value.code == 400
    assert caught.value.status == "INVALID_ARGUMENT"
    assert "thought signature" in caught.value.message


async def test_gemini_replay_with_altered_or_swapped_signature_is_rejected(
    gemini_fake: GeminiFake, gemini_client: Any
) -> None:
    response = await _two_call_turn(gemini_fake, gemini_client)
    original = response.candidates[0].content
    altered = original.model_copy(deep=True)
    altered.parts[0].thought_signature = bytes([altered.parts[0].thought_signature[0] ^ 1]) + altered.parts[0].thought_signature[1:]
    swapped = original.model_copy(deep=True)
    swapped.parts[0].thought_signature, swapped.parts[1].thought_signature = (
        original.parts[1].thought_signature,
        original.parts[0].thought_signature,
    )

    for content in (altered, swapped):
        with pytest.raises(genai_errors.ClientError, match="thought signature") as caught:
            await gemini_client.models.generate_content(
                model=GEMINI, contents=[_question(), content, _answers(response.function_calls)]
            )
        assert caught.value.code == 400


async def test_gemini_documented_skip_signature_is_accepted(gemini_fake: GeminiFake, gemini_client: Any) -> None:
    injected = types.Content(
        role="model",
        parts=[
            types.Part(
                function_call=types.FunctionCall(name="current_time", args={}),
                thought_signature=b"skip_thought_signature_validator",
            )
        ],
    )
    answer = types.Content(role="user", parts=[types.Part.from_function_response(name="current_time", response={"t": "noon"})])
    gemini_fake.script_text("ok")

    response = await gemini_client.models.generate_content(model=GEMINI, contents=[_question(), injected, answer])

    assert response.text == "ok"


async def test_gemini_rate_limited(gemini_fake: GeminiFake, gemini_client: Any) -> None:
    gemini_fake.script_error(429, retry_after=12)

    with pytest.raises(genai_errors.ClientError) as caught:
        await gemini_client.models.generate_content(model=GEMINI, contents="hi")

    assert caught.value.code == 429
    assert caught.value.status == "RESOURCE_EXHAUSTED"
    assert caught.value.response.headers["retry-after"] == "12"


async def test_gemini_server_error(gemini_fake: GeminiFake, gemini_client: Any) -> None:
    gemini_fake.script_error(503)

    with pytest.raises(genai_errors.ServerError) as caught:
        await gemini_client.models.generate_content(model=GEMINI, contents="hi")

    assert caught.value.code == 503 and caught.value.status == "UNAVAILABLE"


async def test_gemini_streaming_text(gemini_fake: GeminiFake, gemini_client: Any) -> None:
    gemini_fake.script_text(chunks=["It is ", "noon ", "in Paris."])

    chunks = [c async for c in await gemini_client.models.generate_content_stream(model=GEMINI, contents="hi")]

    assert [c.text for c in chunks] == ["It is ", "noon ", "in Paris."]
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[-1].usage_metadata.candidates_token_count > 0


async def test_gemini_streamed_function_calls_replay(gemini_fake: GeminiFake, gemini_client: Any) -> None:
    gemini_fake.script_tool_calls(("get_weather", {"city": "Paris"}), ("get_time", {}), text="Let me check.")
    gemini_fake.script_text("Done checking.")

    parts: list[types.Part] = []
    calls: list[types.FunctionCall] = []
    async for chunk in await gemini_client.models.generate_content_stream(
        model=GEMINI, contents=[_question()], config=GEMINI_TOOLS
    ):
        parts.extend(chunk.candidates[0].content.parts)
        calls.extend(chunk.function_calls or ())
    model_turn = types.Content(role="model", parts=parts)
    final = await gemini_client.models.generate_content(
        model=GEMINI, contents=[_question(), model_turn, _answers(calls)]
    )

    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert final.text == "Done checking."


async def test_gemini_bad_key(gemini_fake: GeminiFake) -> None:
    client = _gemini(gemini_fake, key="not-the-key")
    try:
        with pytest.raises(genai_errors.ClientError) as caught:
            await client.aio.models.generate_content(model=GEMINI, contents="hi")
        assert caught.value.code == 400 and "API key not valid" in caught.value.message
        with pytest.raises(genai_errors.ClientError):
            await client.aio.models.list()
    finally:
        await client.aio.aclose()


async def test_gemini_list_models(gemini_client: Any) -> None:
    names = [m.name async for m in await gemini_client.models.list()]
    model = await gemini_client.models.get(model=GEMINI)

    assert names == ["models/gemini-3-pro-preview", "models/gemini-2.5-flash"]
    assert model.input_token_limit > 0


async def test_gemini_slow_answer_times_out(gemini_fake: GeminiFake) -> None:
    gemini_fake.script_delay(5.0)
    client = _gemini(gemini_fake, timeout_ms=300)
    try:
        # google-genai lets its HTTP library's timeout through unwrapped.
        with pytest.raises((httpx.TimeoutException, httpx2.TimeoutException)):
            await client.aio.models.generate_content(model=GEMINI, contents="hi")
    finally:
        await client.aio.aclose()
    await gemini_fake.wait_for_disconnects(1)


async def test_gemini_default_loop_through_automatic_function_calling(
    gemini_fake: GeminiFake, gemini_client: Any
) -> None:
    gemini_fake.rounds = 3
    seen: list[str] = []

    def current_time() -> str:
        """Current wall-clock time."""
        seen.append("called")
        return "12:00"

    response = await gemini_client.models.generate_content(
        model=GEMINI, contents="What time is it?", config=types.GenerateContentConfig(tools=[current_time])
    )

    assert response.text == "All done."
    assert len(seen) == 3
    assert gemini_fake.call_count == 4


async def test_gemini_calls_without_declared_tools_end_as_unexpected_and_mode_none_answers_in_text(
    gemini_fake: GeminiFake, gemini_client: Any
) -> None:
    gemini_fake.script_tool_calls(("get_time", {}))
    gemini_fake.script_tool_calls(("get_time", {}), text="It is noon.")

    unexpected = await gemini_client.models.generate_content(model=GEMINI, contents=[_question()])
    assert unexpected.candidates[0].finish_reason == types.FinishReason.UNEXPECTED_TOOL_CALL
    assert unexpected.candidates[0].content is None
    forbidden = GEMINI_TOOLS.model_copy(update={"tool_config": types.ToolConfig(
        function_calling_config=types.FunctionCallingConfig(mode=types.FunctionCallingConfigMode.NONE))})
    answered = await gemini_client.models.generate_content(model=GEMINI, contents=[_question()], config=forbidden)
    assert answered.text == "It is noon." and not answered.function_calls


async def test_gemini_cuts_an_answer_off_at_max_output_tokens_and_blocks(
    gemini_fake: GeminiFake, gemini_client: Any
) -> None:
    gemini_fake.script_text("word " * 100)
    gemini_fake.script_text("Some of", finish_reason="SAFETY")

    cut = await gemini_client.models.generate_content(
        model=GEMINI, contents="hi", config=types.GenerateContentConfig(max_output_tokens=10))
    assert cut.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS and cut.text == ("word " * 100)[:40]
    blocked = await gemini_client.models.generate_content(model=GEMINI, contents="hi")
    assert blocked.candidates[0].finish_reason == types.FinishReason.SAFETY


async def test_gemini_daily_quota_names_itself(gemini_fake: GeminiFake, gemini_client: Any) -> None:
    gemini_fake.script(Turn(error=quota_exceeded(per_day=True)))

    with pytest.raises(genai_errors.ClientError) as caught:
        await gemini_client.models.generate_content(model=GEMINI, contents="hi")
    assert caught.value.code == 429 and caught.value.status == "RESOURCE_EXHAUSTED"
    [failure] = [d for d in caught.value.details["error"]["details"] if d["@type"].endswith("QuotaFailure")]
    assert "PerDay" in failure["violations"][0]["quotaId"]


async def test_gemini_fails_half_way_through_a_stream(gemini_fake: GeminiFake, gemini_client: Any) -> None:
    gemini_fake.script_text(chunks=["a", "b", "c"], error_after=1)

    pieces: list[str] = []
    with pytest.raises(genai_errors.ServerError) as caught:
        async for chunk in await gemini_client.models.generate_content_stream(model=GEMINI, contents="hi"):
            pieces.append(chunk.text)
    assert pieces == ["a"] and caught.value.code == 503


# --------------------------------------------------------------------------- #
# Anthropic
# --------------------------------------------------------------------------- #


async def test_anthropic_two_tool_uses_and_tool_result_round_trip(
    anthropic_fake: AnthropicFake, anthropic_client: anthropic.AsyncAnthropic
) -> None:
    anthropic_fake.script_tool_calls(("get_weather", {"city": "Paris"}), ("get_time", {}), text="Checking.")
    anthropic_fake.script_text("Sunny at noon.")

    first = await anthropic_client.messages.create(model=CLAUDE, max_tokens=256, messages=USER, tools=CLAUDE_TOOLS)
    uses = [b for b in first.content if b.type == "tool_use"]
    results = [{"type": "tool_result", "tool_use_id": u.id, "content": f"result of {u.name}"} for u in uses]
    messages = [*USER, {"role": "assistant", "content": first.content}, {"role": "user", "content": results}]
    second = await anthropic_client.messages.create(model=CLAUDE, max_tokens=256, messages=messages,
                                                    tools=CLAUDE_TOOLS)

    assert first.stop_reason == "tool_use"
    assert first.content[0].type == "text" and first.content[0].text == "Checking."
    assert [(u.name, u.input) for u in uses] == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert second.stop_reason == "end_turn" and second.content[0].text == "Sunny at noon."
    sent = anthropic_fake.last_call["messages"][2]["content"]
    assert [r["tool_use_id"] for r in sent] == [u.id for u in uses]
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0


async def test_anthropic_rejects_unknown_tool_result(
    anthropic_fake: AnthropicFake, anthropic_client: anthropic.AsyncAnthropic
) -> None:
    messages = [
        *USER,
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_other", "content": "x"}]},
    ]
    with pytest.raises(anthropic.BadRequestError, match="toolu_other"):
        await anthropic_client.messages.create(model=CLAUDE, max_tokens=64, messages=messages)


async def test_anthropic_streaming_text(anthropic_fake: AnthropicFake, anthropic_client: anthropic.AsyncAnthropic) -> None:
    anthropic_fake.script_text(chunks=["It is ", "noon", "."])

    async with anthropic_client.messages.stream(model=CLAUDE, max_tokens=64, messages=USER) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()

    assert pieces == ["It is ", "noon", "."]
    assert final.content[0].text == "It is noon."
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


async def test_anthropic_raw_stream_event_sequence(
    anthropic_fake: AnthropicFake, anthropic_client: anthropic.AsyncAnthropic
) -> None:
    anthropic_fake.script_tool_calls(("get_weather", {"city": "Paris"}), text="Hm")

    stream = await anthropic_client.messages.create(model=CLAUDE, max_tokens=64, messages=USER, stream=True)
    events = [event async for event in stream]

    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == 2 and kinds.count("content_block_stop") == 2
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert "text_delta" in deltas and "input_json_delta" in deltas
    assert events[-2].delta.stop_reason == "tool_use"


async def test_anthropic_streaming_tool_uses(anthropic_fake: AnthropicFake, anthropic_client: anthropic.AsyncAnthropic) -> None:
    anthropic_fake.script_tool_calls(("get_weather", {"city": "Paris", "days": 2}), ("get_time", {"tz": "CET"}))

    async with anthropic_client.messages.stream(model=CLAUDE, max_tokens=64, messages=USER) as stream:
        final = await stream.get_final_message()

    assert [(b.name, b.input) for b in final.content] == [
        ("get_weather", {"city": "Paris", "days": 2}),
        ("get_time", {"tz": "CET"}),
    ]
    assert final.stop_reason == "tool_use"


async def test_anthropic_rate_limited(anthropic_fake: AnthropicFake, anthropic_client: anthropic.AsyncAnthropic) -> None:
    anthropic_fake.script_error(429, retry_after=3)

    with pytest.raises(anthropic.RateLimitError) as caught:
        await anthropic_client.messages.create(model=CLAUDE, max_tokens=64, messages=USER)

    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.body["error"]["type"] == "rate_limit_error"


async def test_anthropic_overloaded_and_server_error(
    anthropic_fake: AnthropicFake, anthropic_client: anthropic.AsyncAnthropic
) -> None:
    anthropic_fake.script_error(529).script_error(500)

    with pytest.raises(anthropic.APIStatusError) as overloaded:
        await anthropic_client.messages.create(model=CLAUDE, max_tokens=64, messages=USER)
    with pytest.raises(anthropic.InternalServerError):
        await anthropic_client.messages.create(model=CLAUDE, max_tokens=64, messages=USER)

    assert overloaded.value.status_code == 529


async def test_anthropic_bad_key(anthropic_fake: AnthropicFake) -> None:
    client = anthropic.AsyncAnthropic(base_url=anthropic_fake.base_url, api_key="sk-ant-wrong", max_retries=0)
    try:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await client.messages.create(model=CLAUDE, max_tokens=64, messages=USER)
        assert caught.value.body["error"]["type"] == "authentication_error"
        with pytest.raises(anthropic.AuthenticationError):
            await client.models.list()
    finally:
        await client.close()


async def test_anthropic_list_models(anthropic_client: anthropic.AsyncAnthropic) -> None:
    models = [m.id async for m in anthropic_client.models.list()]

    assert models == ["claude-sonnet-4-6", "claude-haiku-4-5"]


async def test_anthropic_slow_answer_times_out(
    anthropic_fake: AnthropicFake, anthropic_client: anthropic.AsyncAnthropic
) -> None:
    anthropic_fake.script_delay(5.0)

    with pytest.raises(anthropic.APITimeoutError):
        await anthropic_client.messages.create(model=CLAUDE, max_tokens=64, messages=USER, timeout=0.3)
    await anthropic_fake.wait_for_disconnects(1)


async def test_anthropic_refuses_tool_blocks_in_a_request_without_tools(
    anthropic_fake: AnthropicFake, anthropic_client: anthropic.AsyncAnthropic
) -> None:
    messages = [
        *USER,
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "noon"}]},
    ]
    with pytest.raises(anthropic.BadRequestError, match="must define tools"):
        await anthropic_client.messages.create(model=CLAUDE, max_tokens=64, messages=messages)
    anthropic_fake.script_text("Noon.")
    answer = await anthropic_client.messages.create(model=CLAUDE, max_tokens=64, messages=messages, tools=CLAUDE_TOOLS)
    assert answer.content[0].text == "Noon."


async def test_anthropic_wants_tool_results_first_in_their_user_turn(
    anthropic_fake: AnthropicFake, anthropic_client: anthropic.AsyncAnthropic
) -> None:
    anthropic_fake.script_text("Noon.")
    use = {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}}]}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "noon"}
    text = {"type": "text", "text": "Answer now."}
    for turns in ([{"role": "user", "content": [text, result]}],
                  [{"role": "user", "content": [text]}, {"role": "user", "content": [result]}]):
        with pytest.raises(anthropic.BadRequestError, match="`tool_result` block"):
            await anthropic_client.messages.create(model=CLAUDE, max_tokens=64, messages=[*USER, use, *turns],
                                                   tools=CLAUDE_TOOLS)
    answer = await anthropic_client.messages.create(
        model=CLAUDE, max_tokens=64, messages=[*USER, use, {"role": "user", "content": [result, text]}],
        tools=CLAUDE_TOOLS)
    assert answer.stop_reason == "end_turn"


async def test_anthropic_cuts_an_answer_off_at_max_tokens(
    anthropic_fake: AnthropicFake, anthropic_client: anthropic.AsyncAnthropic
) -> None:
    anthropic_fake.script_text("word " * 100)

    answer = await anthropic_client.messages.create(model=CLAUDE, max_tokens=10, messages=USER)
    assert answer.stop_reason == "max_tokens" and answer.usage.output_tokens == 10
    assert answer.content[0].text == ("word " * 100)[:40]


async def test_anthropic_fails_half_way_through_a_stream(
    anthropic_fake: AnthropicFake, anthropic_client: anthropic.AsyncAnthropic
) -> None:
    anthropic_fake.script_text(chunks=["a", "b", "c"], error_after=5)

    pieces: list[str] = []
    with pytest.raises(anthropic.APIStatusError, match="Overloaded") as caught:
        async with anthropic_client.messages.stream(model=CLAUDE, max_tokens=64, messages=USER) as stream:
            async for text in stream.text_stream:
                pieces.append(text)
    assert pieces == ["a", "b"] and caught.value.type == "overloaded_error"


# --------------------------------------------------------------------------- #
# HTTP server behaviour and process mode
# --------------------------------------------------------------------------- #


async def test_keep_alive_and_chunked_request_body() -> None:
    with OpenAIFake() as fake:
        reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
        try:
            body = json.dumps({"model": GPT, "messages": USER}).encode()
            plain = (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            chunked = (
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            )
            for raw in (plain, chunked):
                writer.write(raw)
                status, payload = await _read_response(reader)
                assert status == 200 and payload["object"] == "chat.completion"
        finally:
            writer.close()
    assert fake.call_count == 2
    assert fake.calls[0] == fake.calls[1]


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, Any]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split()[1]), json.loads(body)


async def test_many_concurrent_keep_alive_clients() -> None:
    # Raw sockets rather than an HTTP client library: what is measured is the server.
    clients, per_client, latency = 300, 3, 0.2
    with OpenAIFake(latency=latency, record=False) as fake:
        started = time.monotonic()
        await asyncio.gather(*(_keep_alive_client(fake.port, per_client) for _ in range(clients)))
        elapsed = time.monotonic() - started
    # Serially this would take 180 s; concurrently it is a few latencies.
    assert elapsed < per_client * latency + 3
    assert fake.call_count == clients * per_client and fake.requests == []
    assert fake.errors == []


async def _keep_alive_client(port: int, requests: int) -> None:
    body = json.dumps({"model": GPT, "messages": USER, "tools": GPT_TOOLS}).encode()
    raw = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(requests):
            writer.write(raw)
            status, payload = await _read_response(reader)
            assert status == 200 and payload["choices"][0]["message"]["tool_calls"]
    finally:
        writer.close()


async def test_cli_process_mode() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.openai_fake", "--port", "0", "--latency", "0.01", "--rounds", "1",
        cwd=PROJECT_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 10)).decode().strip()
        assert line.startswith("LISTENING http://127.0.0.1:") and line.endswith("/v1")
        client = openai.AsyncOpenAI(base_url=line.split(" ", 1)[1], api_key="any", max_retries=0)
        try:
            first = await client.chat.completions.create(model=GPT, messages=USER, tools=GPT_TOOLS)
            unoffered = await client.chat.completions.create(model=GPT, messages=USER)
        finally:
            await client.close()
        # Offered no tool (a final answer's request, say), the model answers instead of calling one.
        assert unoffered.choices[0].message.content == "All done." and not unoffered.choices[0].message.tool_calls
        assert first.choices[0].message.tool_calls[0].function.name == "current_time"
    finally:
        process.terminate()
        returncode = await asyncio.wait_for(process.wait(), 10)
    stderr = (await process.stderr.read()).decode()
    assert returncode == 0, stderr
