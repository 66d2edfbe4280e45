"""Translation between the neutral transcript and each provider's request and answer, without a
network: what is sent, what is kept, and what an error becomes."""

import base64
import json

import anthropic
import httpx2
import openai
import pytest
from google.genai import errors as genai_errors
from google.genai import types

from orchestrator import providers
from orchestrator.providers.anthropic import (THINKING, AnthropicProvider, anthropic_request, from_anthropic_message,
                                              to_anthropic_messages)
from orchestrator.providers.anthropic import provider_error as anthropic_error
from orchestrator.providers.base import ModelRequest, ModelResponse, ProviderError, replayable_arguments
from orchestrator.providers.gemini import (CALL_ID, SIGNATURE, THOUGHTS, GeminiProvider, from_gemini_response,
                                           gemini_config, to_gemini_contents)
from orchestrator.providers.gemini import provider_error as gemini_error
from orchestrator.providers.openai_compat import from_openai_completion, limit_parameter, to_openai_messages
from orchestrator.providers.openai_compat import provider_error as openai_error

CALCULATOR = {"name": "calculator", "description": "Evaluates arithmetic.",
              "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                             "required": ["expression"], "additionalProperties": False}}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def through_json(message: dict) -> dict:
    """What the database hands back: the transcript is stored as JSON."""
    return json.loads(json.dumps(message))


def round_trip(response: ModelResponse, *ids: str) -> dict:
    """The answer as the engine stores it, with ids filled in where the model gave none."""
    message = through_json(response.as_message())
    for call, call_id in zip(message.get("tool_calls") or (), ids):
        call["id"] = call["id"] or call_id
    return message


# --------------------------------------------------------------------------- #
# Gemini
# --------------------------------------------------------------------------- #


GEMINI_TURN = {
    "role": "assistant", "content": "Let me check.", "extra": {SIGNATURE: b64(b"text-signature")},
    "tool_calls": [
        {"id": "call_1_0_ab12cd34", "name": "current_time", "arguments": '{"timezone": "UTC"}',
         "extra": {SIGNATURE: b64(b"first-call")}},
        {"id": "g-2", "name": "calculator", "arguments": '{"expression": "6*7"}', "extra": {CALL_ID: "g-2"}},
    ],
}


def test_gemini_contents_group_results_in_call_order_and_replay_signatures() -> None:
    contents = to_gemini_contents([
        {"role": "user", "content": "What time is it, and what is 6*7?"},
        GEMINI_TURN,
        # Results out of call order: Gemini pairs them by position, so they are put back in order.
        {"role": "tool", "tool_call_id": "g-2", "name": "calculator", "content": '{"result": 42}',
         "is_error": False},
        {"role": "tool", "tool_call_id": "call_1_0_ab12cd34", "name": "current_time",
         "content": "Error: the person denied this call", "is_error": True},
        {"role": "user", "content": "Answer now."},
    ])

    assert [c.role for c in contents] == ["user", "model", "user"]
    text, first, second = contents[1].parts
    assert (text.text, text.thought_signature) == ("Let me check.", b"text-signature")
    assert (first.function_call.name, first.function_call.args, first.function_call.id) == (
        "current_time", {"timezone": "UTC"}, None)
    assert first.thought_signature == b"first-call"
    assert (second.function_call.id, second.thought_signature) == ("g-2", None)

    current_time, calculator, ask = contents[2].parts
    assert current_time.function_response.name == "current_time" and current_time.function_response.id is None
    assert current_time.function_response.response == {"error": "Error: the person denied this call"}
    assert calculator.function_response.id == "g-2"
    assert calculator.function_response.response == {"result": {"result": 42}}
    assert ask.text == "Answer now."


def test_gemini_text_results_stay_text_and_empty_turns_are_dropped() -> None:
    contents = to_gemini_contents([
        {"role": "user", "content": "Hello"},
        {"role": "user", "content": "Are you there?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "name": "lookup", "arguments": "{}"}]},
        {"role": "tool", "tool_call_id": "c1", "name": "lookup", "content": "plain words", "is_error": False},
    ])
    assert [c.role for c in contents] == ["user", "model", "user"]
    assert [p.text for p in contents[0].parts] == ["Hello", "Are you there?"]
    assert [p.function_call.name for p in contents[1].parts] == ["lookup"]
    assert contents[2].parts[0].function_response.response == {"result": "plain words"}


def test_gemini_answer_keeps_every_signature_as_json_and_replays_it_on_the_same_kind_of_part() -> None:
    response = types.GenerateContentResponse(
        candidates=[types.Candidate(finish_reason=types.FinishReason.STOP, content=types.Content(role="model", parts=[
            types.Part(text="Weighing options.", thought=True, thought_signature=b"thought"),
            types.Part(text="Let me "),
            types.Part(text="check."),
            types.Part(function_call=types.FunctionCall(name="current_time", args={"timezone": "UTC"}),
                       thought_signature=b"call-one"),
            types.Part(function_call=types.FunctionCall(id="g-2", name="calculator", args={"expression": "1+1"})),
            # A stream may close with an empty text part that carries the turn's signature.
            types.Part(text="", thought_signature=b"closing"),
        ]))],
        usage_metadata=types.GenerateContentResponseUsageMetadata(prompt_token_count=10, candidates_token_count=4,
                                                                  thoughts_token_count=6))
    answer = from_gemini_response(response)

    assert answer.text == "Let me check." and (answer.finish_reason, answer.raw_finish_reason) == (
        "tool_calls", "STOP")
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (10, 10)
    assert [(c.id, c.name, json.loads(c.arguments)) for c in answer.tool_calls] == [
        ("", "current_time", {"timezone": "UTC"}), ("g-2", "calculator", {"expression": "1+1"})]
    assert answer.tool_calls[0].extra == {SIGNATURE: b64(b"call-one")}
    assert answer.tool_calls[1].extra == {CALL_ID: "g-2"}
    assert answer.extra == {SIGNATURE: b64(b"closing"),
                            THOUGHTS: [{"text": "Weighing options.", SIGNATURE: b64(b"thought")}]}

    stored = round_trip(answer, "call_1_0_ffff0000")
    [model] = [c for c in to_gemini_contents([{"role": "user", "content": "Hi"}, stored]) if c.role == "model"]
    thought, text, first, second = model.parts
    assert (thought.thought, thought.text, thought.thought_signature) == (True, "Weighing options.", b"thought")
    assert (text.text, text.thought_signature) == ("Let me check.", b"closing")
    assert (first.function_call.id, first.thought_signature) == (None, b"call-one")
    assert (second.function_call.id, second.function_call.args) == ("g-2", {"expression": "1+1"})


def test_a_damaged_stored_signature_is_reported_not_sent() -> None:
    turn = json.loads(json.dumps(GEMINI_TURN))
    turn["tool_calls"][0]["extra"][SIGNATURE] = "%%%"
    with pytest.raises(ProviderError, match="thought signature .* damaged"):
        to_gemini_contents([{"role": "user", "content": "Hi"}, turn])


def test_gemini_blocks_and_empty_answers_become_clear_errors() -> None:
    blocked_prompt = types.GenerateContentResponse(
        prompt_feedback=types.GenerateContentResponsePromptFeedback(block_reason=types.BlockedReason.SAFETY))
    with pytest.raises(ProviderError, match="^Gemini blocked the request: SAFETY$") as caught:
        from_gemini_response(blocked_prompt)
    assert not caught.value.retryable

    with pytest.raises(ProviderError, match="no candidates") as caught:
        from_gemini_response(types.GenerateContentResponse(candidates=[]))
    assert caught.value.retryable

    malformed = types.GenerateContentResponse(candidates=[types.Candidate(finish_reason="MALFORMED_FUNCTION_CALL")])
    with pytest.raises(ProviderError, match="MALFORMED_FUNCTION_CALL") as caught:
        from_gemini_response(malformed)
    assert caught.value.retryable


@pytest.mark.parametrize("raw,finish", [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "blocked"), ("RECITATION", "blocked"),
    ("PROHIBITED_CONTENT", "blocked"), ("BLOCKLIST", "blocked"), ("SPII", "blocked"),
    ("UNEXPECTED_TOOL_CALL", "other"), ("OTHER", "other")])
def test_gemini_finish_reasons_are_read_and_the_partial_text_kept(raw: str, finish: str) -> None:
    answer = from_gemini_response(types.GenerateContentResponse(candidates=[types.Candidate(
        finish_reason=raw, content=types.Content(role="model", parts=[types.Part(text="Half an ans")]))]))
    assert (answer.text, answer.finish_reason, answer.raw_finish_reason) == ("Half an ans", finish, raw)
    assert answer.incomplete == (finish in ("length", "blocked"))


def test_gemini_config_declares_raw_json_schema_and_no_automatic_calling() -> None:
    config = gemini_config(ModelRequest(model="gemini-3-pro", system="Be careful.", messages=[], tools=[CALCULATOR],
                                        temperature=0.2, timeout=30, max_tokens=500))
    [declaration] = config.tools[0].function_declarations
    assert declaration.name == "calculator" and declaration.description == "Evaluates arithmetic."
    assert declaration.parameters_json_schema == CALCULATOR["parameters"] and declaration.parameters is None
    assert config.automatic_function_calling.disable is True
    assert config.system_instruction == "Be careful."
    assert (config.temperature, config.max_output_tokens, config.http_options.timeout) == (0.2, 500, 30000)

    bare = gemini_config(ModelRequest(model="gemini-3-pro", system="", messages=[]))
    assert bare.tools is None and bare.system_instruction is None and bare.temperature is None
    assert bare.tool_config is None


def test_gemini_last_round_declares_the_tools_used_with_calling_forbidden() -> None:
    history = [{"role": "user", "content": "Hi"}, GEMINI_TURN,
               {"role": "tool", "tool_call_id": "call_1_0_ab12cd34", "name": "current_time", "content": "12:00"},
               {"role": "tool", "tool_call_id": "g-2", "name": "calculator", "content": "42"},
               {"role": "user", "content": "Answer now."}]
    config = gemini_config(ModelRequest(model="gemini-3-pro", system="", messages=history))
    assert [d.name for d in config.tools[0].function_declarations] == ["current_time", "calculator"]
    assert config.tool_config.function_calling_config.mode == types.FunctionCallingConfigMode.NONE

    offered = gemini_config(ModelRequest(model="gemini-3-pro", system="", messages=history, tools=[CALCULATOR]))
    assert offered.tool_config is None


def test_gemini_last_round_declares_no_name_gemini_would_refuse() -> None:
    made_up = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "name": "launch rockets!", "arguments": "{}"}, {"id": "c2", "name": "current_time",
                                                                     "arguments": "{}"}]}
    config = gemini_config(ModelRequest(model="gemini-3-pro", system="", messages=[
        {"role": "user", "content": "Hi"}, made_up,
        {"role": "tool", "tool_call_id": "c1", "content": "Error"}, {"role": "tool", "tool_call_id": "c2",
                                                                     "content": "12:00"}]))
    assert [d.name for d in config.tools[0].function_declarations] == ["current_time"]


def _gemini_client_error(status: int, message: str, details: list | None = None,
                         headers: dict | None = None) -> genai_errors.APIError:
    body = {"error": {"code": status, "message": message, "status": "X", **({"details": details} if details else {})}}
    response = httpx2.Response(status, headers=headers or {}, json=body)
    cls = genai_errors.ServerError if status >= 500 else genai_errors.ClientError
    return cls(status, body, response)


def test_gemini_errors_in_plain_words() -> None:
    retry_info = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.5s"}]
    limited = gemini_error(_gemini_client_error(429, "Quota exceeded.", retry_info))
    assert (limited.retryable, limited.retry_after) == (True, 2.5) and "rate limited (429)" in limited.message

    by_header = gemini_error(_gemini_client_error(429, "Quota exceeded.", headers={"Retry-After": "7"}))
    assert by_header.retry_after == 7.0

    key_info = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]
    rejected = gemini_error(_gemini_client_error(400, "API key not valid.", key_info))
    assert rejected.message == "the API key was rejected (400): API key not valid." and not rejected.retryable

    assert gemini_error(_gemini_client_error(403, "Permission denied.")).message.startswith("the API key was rejected")
    unavailable = gemini_error(_gemini_client_error(503, "Overloaded."))
    assert unavailable.retryable and unavailable.message == "the provider failed (503): Overloaded."
    signature = gemini_error(_gemini_client_error(400, "The thought signature of function call `x` is not valid."))
    assert "thought signature" in signature.message and not signature.retryable
    assert "is the model name right" in gemini_error(_gemini_client_error(404, "models/x is not found.")).message
    refused = gemini_error(_gemini_client_error(400, "Invalid JSON payload."))
    assert refused.message == "the provider refused the request (400): Invalid JSON payload."
    assert not refused.retryable


def _quota_failure(quota_id: str, value: str | None = None) -> list[dict]:
    violation = {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                 "quotaId": quota_id, "quotaDimensions": {"location": "global", "model": "gemini-2.5-pro"}}
    if value is not None:
        violation["quotaValue"] = value
    return [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "27s"}]


@pytest.mark.parametrize(("message", "details", "used_up"), [
    ("You exceeded your current quota.", _quota_failure("GenerateRequestsPerDayPerProjectPerModel-FreeTier", "50"),
     True),
    ("You exceeded your current quota.", _quota_failure("GenerateRequestsPerMinutePerProjectPerModel", "0"), True),
    ("Quota exceeded for metric: generate_content_free_tier_requests, limit: 0, model: gemini-2.5-pro", None, True),
    ("You exceeded your current quota.", _quota_failure("GenerateRequestsPerMinutePerProjectPerModel", "15"),
     False),
])
def test_a_gemini_quota_that_waiting_cannot_refill_fails_at_once(message: str, details: list | None,
                                                                  used_up: bool) -> None:
    mapped = gemini_error(_gemini_client_error(429, message, details))
    assert mapped.retryable is not used_up
    assert ("the quota is used up" in mapped.message) is used_up


async def test_gemini_without_a_key_says_so_before_calling() -> None:
    provider = GeminiProvider(base_url="", api_key="")
    with pytest.raises(ProviderError, match="no API key for Gemini"):
        await provider.complete(ModelRequest(model="gemini-3-pro", system="", messages=[]))


# --------------------------------------------------------------------------- #
# Anthropic
# --------------------------------------------------------------------------- #


THINKING_BLOCKS = [{"type": "thinking", "thinking": "The user wants the time.", "signature": "EqQBCgIYAhIM"},
                   {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}]


def test_anthropic_messages_merge_roles_and_put_thinking_first() -> None:
    messages = to_anthropic_messages([
        {"role": "user", "content": "Earlier question"},
        {"role": "assistant", "content": "Earlier answer"},
        {"role": "user", "content": "What time is it?"},
        {"role": "assistant", "content": "Checking.", "extra": {THINKING: THINKING_BLOCKS, "other": "ignored"},
         "tool_calls": [{"id": "toolu_01A", "name": "current_time", "arguments": '{"timezone": "UTC"}'},
                        {"id": "call_1_1_ab12cd34", "name": "calculator", "arguments": '{"expression": "1+"'}]},
        {"role": "tool", "tool_call_id": "toolu_01A", "name": "current_time", "content": "12:00", "is_error": False},
        {"role": "tool", "tool_call_id": "call_1_1_ab12cd34", "name": "calculator", "content": "",
         "is_error": True},
        {"role": "user", "content": "Answer now."},
    ])

    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assistant = messages[3]["content"]
    assert assistant[:2] == THINKING_BLOCKS
    assert assistant[2] == {"type": "text", "text": "Checking."}
    assert assistant[3] == {"type": "tool_use", "id": "toolu_01A", "name": "current_time",
                            "input": {"timezone": "UTC"}}
    # Arguments that are not a JSON object cannot be a tool_use input; the error result says what was wrong.
    assert assistant[4]["id"] == "call_1_1_ab12cd34" and assistant[4]["input"] == {}
    assert messages[4]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "12:00"},
        {"type": "tool_result", "tool_use_id": "call_1_1_ab12cd34", "is_error": True},
        {"type": "text", "text": "Answer now."},
    ]


def test_anthropic_request_declares_tools_or_forbids_them() -> None:
    with_tools = anthropic_request(ModelRequest(model="claude-sonnet-4-6", system="Be careful.",
                                                messages=[{"role": "user", "content": "Hi"}], tools=[CALCULATOR],
                                                temperature=0.3, timeout=20))
    assert with_tools["tools"] == [{"name": "calculator", "description": "Evaluates arithmetic.",
                                    "input_schema": CALCULATOR["parameters"]}]
    assert "tool_choice" not in with_tools
    assert (with_tools["max_tokens"], with_tools["system"], with_tools["temperature"], with_tools["timeout"]) == (
        16384, "Be careful.", 0.3, 20)

    history = [{"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "", "tool_calls": [
                   {"id": "t1", "name": "current_time", "arguments": "{}"},
                   {"id": "t2", "name": "current_time", "arguments": "{}"}]},
               {"role": "tool", "tool_call_id": "t1", "name": "current_time", "content": "12:00"},
               {"role": "tool", "tool_call_id": "t2", "name": "current_time", "content": "12:00"}]
    last_round = anthropic_request(ModelRequest(model="claude-sonnet-4-6", system="", messages=history,
                                                max_tokens=1000))
    assert [t["name"] for t in last_round["tools"]] == ["current_time"]
    assert last_round["tool_choice"] == {"type": "none"}
    assert last_round["max_tokens"] == 1000 and "system" not in last_round

    plain = anthropic_request(ModelRequest(model="claude-sonnet-4-6", system="",
                                           messages=[{"role": "user", "content": "Hi"}]))
    assert "tools" not in plain and "temperature" not in plain


def _claude_message(content: list[dict], stop_reason: str = "tool_use") -> anthropic.types.Message:
    return anthropic.types.Message.model_validate({
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
        "content": content, "stop_reason": stop_reason, "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 7, "cache_read_input_tokens": 100,
                  "cache_creation_input_tokens": 5}})


def test_anthropic_answer_keeps_signed_thinking_for_replay() -> None:
    answer = from_anthropic_message(_claude_message([
        *THINKING_BLOCKS,
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_01A", "name": "current_time", "input": {"timezone": "UTC"}},
        {"type": "tool_use", "id": "toolu_01B", "name": "calculator", "input": {"expression": "2*3"}},
    ]))
    assert answer.text == "Checking." and (answer.finish_reason, answer.raw_finish_reason) == (
        "tool_calls", "tool_use")
    assert [(c.id, c.name, json.loads(c.arguments)) for c in answer.tool_calls] == [
        ("toolu_01A", "current_time", {"timezone": "UTC"}), ("toolu_01B", "calculator", {"expression": "2*3"})]
    assert answer.extra == {THINKING: THINKING_BLOCKS}
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (115, 7)

    replayed = to_anthropic_messages([{"role": "user", "content": "Hi"}, round_trip(answer)])[1]["content"]
    assert replayed[:2] == THINKING_BLOCKS
    assert [b["type"] for b in replayed[2:]] == ["text", "tool_use", "tool_use"]


@pytest.mark.parametrize("raw,finish", [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("model_context_window_exceeded", "length"), ("refusal", "blocked"), ("pause_turn", "other")])
def test_anthropic_stop_reasons_are_read_and_the_partial_text_kept(raw: str, finish: str) -> None:
    answer = from_anthropic_message(_claude_message([{"type": "text", "text": "Half an ans"}], stop_reason=raw))
    assert (answer.text, answer.finish_reason, answer.raw_finish_reason) == ("Half an ans", finish, raw)


def test_claude_gets_a_generous_output_limit_that_its_model_allows() -> None:
    def limit(model: str, max_tokens: int | None = None) -> int:
        return anthropic_request(ModelRequest(model=model, system="", messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=max_tokens))["max_tokens"]

    assert limit("claude-sonnet-4-6") == limit("claude-opus-4-1") == 16384
    assert limit("claude-3-5-haiku-latest") == 8192 and limit("claude-3-haiku-20240307") == 4096
    assert limit("claude-sonnet-4-6", 64000) == 64000


REQUEST = httpx2.Request("POST", "https://api.anthropic.com/v1/messages")


def _claude_error(cls: type, status: int, kind: str, headers: dict | None = None) -> anthropic.APIStatusError:
    body = {"type": "error", "error": {"type": kind, "message": f"{kind} happened"}}
    response = httpx2.Response(status, headers=headers or {}, json=body, request=REQUEST)
    return cls(f"Error code: {status}", response=response, body=body)


@pytest.mark.parametrize(("error", "message", "retryable", "wait"), [
    (_claude_error(anthropic.AuthenticationError, 401, "authentication_error"),
     "the API key was rejected (401): authentication_error happened", False, None),
    (_claude_error(anthropic.PermissionDeniedError, 403, "permission_error"),
     "the API key was rejected (403): permission_error happened", False, None),
    (_claude_error(anthropic.RateLimitError, 429, "rate_limit_error", {"retry-after": "3"}),
     "rate limited (429): rate_limit_error happened", True, 3.0),
    (_claude_error(anthropic.InternalServerError, 529, "overloaded_error"),
     "the provider is overloaded (529): overloaded_error happened", True, None),
    (_claude_error(anthropic.InternalServerError, 500, "api_error"),
     "the provider failed (500): api_error happened", True, None),
    (_claude_error(anthropic.APIStatusError, 200, "overloaded_error"),
     "the provider is overloaded (overloaded_error): overloaded_error happened", True, None),
    (_claude_error(anthropic.NotFoundError, 404, "not_found_error"),
     "not found (404) — is the model name right? not_found_error happened", False, None),
    (_claude_error(anthropic.BadRequestError, 400, "invalid_request_error"),
     "the provider refused the request (400): invalid_request_error happened", False, None),
    (anthropic.APITimeoutError(request=REQUEST), "the model at https://api.anthropic.com did not answer in time",
     True, None),
    (anthropic.APIConnectionError(request=REQUEST), "could not connect to the model at https://api.anthropic.com",
     True, None),
])
def test_anthropic_errors_in_plain_words(error: anthropic.APIError, message: str, retryable: bool,
                                         wait: float | None) -> None:
    mapped = anthropic_error(error, "https://api.anthropic.com")
    assert (mapped.message, mapped.retryable, mapped.retry_after) == (message, retryable, wait)


async def test_anthropic_without_a_key_says_so_before_calling() -> None:
    provider = AnthropicProvider(base_url="", api_key="")
    with pytest.raises(ProviderError, match="no API key for Anthropic"):
        await provider.complete(ModelRequest(model="claude-sonnet-4-6", system="", messages=[]))


# --------------------------------------------------------------------------- #
# OpenAI-compatible
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(("raw", "replayed"), [
    ('{"expression": "1+1"}', '{"expression": "1+1"}'),
    ("", "{}"),
    ('{"expression": "1+', '{"unparsed_arguments": "{\\"expression\\": \\"1+"}'),
    ("[1, 2]", '{"unparsed_arguments": "[1, 2]"}'),
    ('{"x": NaN}', '{"unparsed_arguments": "{\\"x\\": NaN}"}'),
    ("[" * 100_000, json.dumps({"unparsed_arguments": "[" * 100_000})),
])
def test_past_arguments_are_replayed_as_a_json_object(raw: str, replayed: str) -> None:
    assert replayable_arguments(raw) == replayed
    assert isinstance(json.loads(replayable_arguments(raw)), dict)


def test_openai_messages_replay_malformed_arguments_as_json_and_keep_the_transcript() -> None:
    turn = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "name": "calculator", "arguments": '{"expression": "1+'}]}
    request = ModelRequest(model="m", system="", messages=[{"role": "user", "content": "Hi"}, turn,
                                                           {"role": "tool", "tool_call_id": "c1", "content": "Error"}])
    [sent] = to_openai_messages(request)[1]["tool_calls"]
    assert json.loads(sent["function"]["arguments"]) == {"unparsed_arguments": '{"expression": "1+'}
    assert turn["tool_calls"][0]["arguments"] == '{"expression": "1+'


def test_the_output_limit_goes_by_the_name_the_endpoint_knows() -> None:
    assert limit_parameter("https://api.openai.com/v1") == "max_completion_tokens"
    assert limit_parameter("http://127.0.0.1:11434/v1") == limit_parameter("http://vllm:8000/v1") == "max_tokens"


def _completion(finish: str, arguments: object = '{"a": 1}') -> dict:
    """A completion as a server sends it."""
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": finish, "message": {
                "role": "assistant", "content": "Half", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": arguments}}]}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}


@pytest.mark.parametrize(("raw", "finish"), [
    ("stop", "stop"), ("tool_calls", "tool_calls"), ("length", "length"), ("content_filter", "blocked"),
    ("something_new", "other")])
def test_openai_finish_reasons_are_read(raw: str, finish: str) -> None:
    answer = from_openai_completion(_completion(raw))
    assert (answer.text, answer.finish_reason, answer.raw_finish_reason) == ("Half", finish, raw)


def test_openai_arguments_sent_as_an_object_are_taken_as_json() -> None:
    [call] = from_openai_completion(_completion("tool_calls", {"expression": "6*7"})).tool_calls
    assert json.loads(call.arguments) == {"expression": "6*7"}


def test_openai_usage_is_read_from_the_answer() -> None:
    answer = from_openai_completion(_completion("stop"))
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (12, 3)


@pytest.mark.parametrize("body", [
    None, [], "text", {}, {"choices": None}, {"choices": []}, {"choices": "x"}, {"choices": [None]},
    {"choices": [[1, 2]]}])
def test_an_openai_answer_without_a_choice_is_a_provider_error_to_retry(body: object) -> None:
    with pytest.raises(ProviderError, match="no choices") as failure:
        from_openai_completion(body)
    assert failure.value.retryable


def test_an_openai_answer_of_odd_shapes_is_read_without_a_crash() -> None:
    """Text and counts a server got wrong read as missing, a name or id that is not a string as its JSON
    (so that the model is told which tool does not exist), and the rest still counts."""
    answer = from_openai_completion({
        "choices": [{"finish_reason": 7, "message": {"content": ["not", "text"], "tool_calls": [
            {"id": 5, "function": {}}, {"id": "c2", "function": {"name": "calc", "arguments": None}},
            {"id": "c3", "function": {"name": ["x"], "arguments": {"n": 1}}}]}}],
        "usage": {"prompt_tokens": "12", "completion_tokens": True}})
    assert (answer.text, answer.raw_finish_reason, answer.finish_reason) == ("", "", "")
    assert [(call.id, call.name, call.arguments) for call in answer.tool_calls] == [
        ("5", "", ""), ("c2", "calc", ""), ("c3", '["x"]', '{"n": 1}')]
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (0, 0)
    assert from_openai_completion({"choices": [{"message": None}]}).text == ""
    parts = [{"type": "text", "text": "Checking "}, {"type": "image_url"}, "x", {"type": "text", "text": "the time."}]
    assert from_openai_completion({"choices": [{"message": {"content": parts}}]}).text == "Checking the time."


@pytest.mark.parametrize("call", [None, "call", {"id": "c", "function": "calc"}, {"id": "c"}])
def test_an_openai_tool_call_that_cannot_be_read_asks_for_the_turn_again(call: object) -> None:
    with pytest.raises(ProviderError, match="not an object") as failure:
        from_openai_completion({"choices": [{"message": {"tool_calls": [call]}}]})
    assert failure.value.retryable


def _openai_status_error(status: int, code: str | None, kind: str) -> openai.APIStatusError:
    body = {"error": {"message": f"{kind} happened", "type": kind, "param": None, "code": code}}
    response = httpx2.Response(status, json=body, request=httpx2.Request("POST", "http://llm/v1/chat/completions"))
    return openai.APIStatusError(f"Error code: {status}", response=response, body=body["error"])


def test_openai_quota_used_up_fails_at_once_and_a_rate_limit_waits() -> None:
    quota = openai_error(_openai_status_error(429, "insufficient_quota", "insufficient_quota"), "http://llm/v1")
    assert not quota.retryable and "quota is used up" in quota.message
    limited = openai_error(_openai_status_error(429, "rate_limit_exceeded", "requests"), "http://llm/v1")
    assert limited.retryable and limited.message.startswith("rate limited (429)")


def test_an_error_event_in_an_openai_stream_is_retried_unless_it_blames_the_request() -> None:
    request = httpx2.Request("POST", "http://llm/v1/chat/completions")
    failed = openai_error(openai.APIError("The server had an error", request,
                                          body={"message": "The server had an error", "type": "server_error"}), "x")
    assert failed.retryable and "failed while answering" in failed.message
    refused = openai_error(openai.APIError("bad", request, body={"message": "bad", "code": 400}), "x")
    assert not refused.retryable


# --------------------------------------------------------------------------- #
# Resolution
# --------------------------------------------------------------------------- #


def test_gemini_and_anthropic_resolve_with_a_shared_client_per_endpoint(settings) -> None:
    settings.GEMINI_API_KEY, settings.CORTEX_GEMINI_BASE_URL = "g-key", ""
    settings.ANTHROPIC_API_KEY, settings.CORTEX_ANTHROPIC_BASE_URL = "a-key", "http://claude.internal"

    gemini, model = providers.resolve("gemini:gemini-3-pro")
    assert isinstance(gemini, GeminiProvider) and model == "gemini-3-pro"
    assert gemini.label(model) == "Gemini · gemini-3-pro"
    assert providers.resolve("gemini:gemini-2.5-flash")[0] is gemini
    profile = providers.resolve("gemini:gemini-3-pro", base_url="http://gemini.internal", api_key="other")[0]
    assert profile is not gemini and profile.base_url == "http://gemini.internal"

    claude, model = providers.resolve("anthropic:claude-sonnet-4-6")
    assert isinstance(claude, AnthropicProvider) and claude.base_url == "http://claude.internal"
    assert claude.label(model) == "Claude · claude-sonnet-4-6"
    assert providers.resolve("anthropic:claude-haiku-4-5")[0] is claude
    assert providers.parse_model("anthropic:claude-sonnet-4-6").provider == "anthropic"
