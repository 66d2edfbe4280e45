"""Fake OpenAI Chat Completions server speaking the real wire protocol.

Serves `POST /v1/chat/completions` (also without `/v1`), plain and streamed
as Server-Sent Events, and `GET /v1/models` for connection checks.

In strict mode it refuses what the servers people run locally refuse: past
tool-call `arguments` that are not a JSON object (vLLM, Ollama and llama-server
parse them to render the chat template, and answer 400 when they cannot).
`arguments_as_objects=True` answers tool calls with `arguments` as a JSON object
rather than a string, as some OpenAI-compatible servers do.

    with OpenAIFake() as fake:
        client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-test")

Run standalone (for benchmarks): `python -m tests.fakes.openai_fake --port 0`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from tests.fakes.http import (
    ErrorReply,
    ProviderFake,
    Reply,
    Request,
    Response,
    Turn,
    error_headers,
    json_response,
    new_id,
    run_cli,
    split_evenly,
    sse,
)

__all__ = ["OpenAIFake", "insufficient_quota"]

_COMPLETIONS_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
_MODELS_PATHS = frozenset({"/v1/models", "/models"})

_ERROR_KINDS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Country, region, or territory not supported"),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


class OpenAIFake(ProviderFake):
    """Fake OpenAI Chat Completions API."""

    api_prefix: ClassVar[str] = "/v1"
    default_model: ClassVar[str] = "gpt-4o-mini"

    def __init__(
        self, *, models: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o"), arguments_as_objects: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.models = models
        self.arguments_as_objects = arguments_as_objects

    # -- routing ------------------------------------------------------------ #

    def is_generation_path(self, path: str) -> bool:
        return path in _COMPLETIONS_PATHS

    async def route(self, request: Request, body: Any) -> Reply:
        path = request.path
        if path in _COMPLETIONS_PATHS and request.method == "POST":
            stream = isinstance(body, dict) and body.get("stream") is True
            model = body.get("model", self.default_model) if isinstance(body, dict) else self.default_model
            return await self.generate(request, body, stream=stream, model=str(model))
        if request.method == "GET" and (path in _MODELS_PATHS or _model_id(path) is not None):
            return self._models(request, _model_id(path))
        not_found = _error_body(f"Invalid URL ({request.method} {path})", "invalid_request_error", None)
        return self.error_response(ErrorReply(404, body=not_found))

    def _models(self, request: Request, model_id: str | None) -> Response:
        auth = self.auth_error(request)
        if auth is not None:
            return self.error_response(auth)
        if model_id is None:
            return json_response({"object": "list", "data": [_model_object(m) for m in self.models]})
        if model_id not in self.models:
            message = f"The model '{model_id}' does not exist"
            return self.error_response(ErrorReply(404, message))
        return json_response(_model_object(model_id))

    # -- auth and validation --------------------------------------------------- #

    def auth_error(self, request: Request) -> ErrorReply | None:
        if self.expect_key is None:
            return None
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            body = _error_body(
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
                None,
            )
            return ErrorReply(401, body=body)
        if key != self.expect_key:
            message = (
                f"Incorrect API key provided: {_mask(key)}. "
                "You can find your API key at https://platform.openai.com/account/api-keys."
            )
            return ErrorReply(401, body=_error_body(message, "invalid_request_error", "invalid_api_key"))
        return None

    def validate(self, body: Mapping[str, Any]) -> ErrorReply | None:
        if not self.strict:
            return None
        if not body.get("model"):
            return _invalid("you must provide a model parameter", None)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _invalid("[] is too short - 'messages'", "messages")
        if body.get("stream_options") is not None and body.get("stream") is not True:
            return _invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")
        return _tool_message_problem(messages) or _past_arguments_problem(messages)

    def output_limit(self, body: Mapping[str, Any]) -> Any:
        return body.get("max_completion_tokens") or body.get("max_tokens")

    def stream_error_event(self) -> bytes:
        return sse(_error_body("The server had an error while processing your request. Sorry about that!",
                               "server_error", None))

    def count_tool_results(self, body: Mapping[str, Any]) -> int:
        return sum(1 for m in body.get("messages") or () if isinstance(m, dict) and m.get("role") == "tool")

    def offers_tools(self, body: Mapping[str, Any]) -> bool:
        return bool(body.get("tools"))

    # -- answers ------------------------------------------------------------ #

    def error_response(self, error: ErrorReply) -> Response:
        body = error.body
        if body is None:
            kind, code, default_message = _ERROR_KINDS.get(error.status, ("server_error", None, "Error."))
            body = _error_body(error.message or default_message, kind, code)
        headers = [("x-request-id", new_id("req_", 32)), *error_headers(error)]
        return json_response(body, error.status, headers)

    def answer(self, request: Request, body: Mapping[str, Any], turn: Turn, *, stream: bool, model: str) -> Reply:
        if turn.raw is not None:
            return Response(body=turn.raw.encode("utf-8", "surrogatepass"), headers=[("x-request-id", new_id("req_", 32))])
        prompt = turn.input_tokens if turn.input_tokens is not None else self.request_tokens(request)
        usage = _usage(prompt, self.output_tokens(turn))
        finish = turn.finish_reason or ("tool_calls" if turn.tool_calls else "stop")
        headers = [("x-request-id", new_id("req_", 32)), ("openai-processing-ms", "1")]
        completion_id = new_id("chatcmpl-", 29)
        calls = [(call.id or new_id("call_", 24), call) for call in turn.tool_calls]
        objects = self.arguments_as_objects
        if not stream:
            completion = _completion(completion_id, model, turn, calls, finish, usage, objects)
            return json_response(completion, headers=headers)
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage"))
        chunks = _stream_chunks(completion_id, model, turn, calls, finish, usage if include_usage else None, objects)
        events = [sse(chunk) for chunk in chunks] + [sse("[DONE]")]
        return self.streaming(request, turn, events, headers)


# --------------------------------------------------------------------------- #
# Wire format helpers
# --------------------------------------------------------------------------- #


def _model_id(path: str) -> str | None:
    for prefix in ("/v1/models/", "/models/"):
        if path.startswith(prefix) and len(path) > len(prefix):
            return path[len(prefix) :]
    return None


def _model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 1715367049, "owned_by": "system"}


def _mask(key: str) -> str:
    return key[:3] + "*" * 8 + key[-4:] if len(key) > 8 else "*" * len(key)


def _error_body(message: str, kind: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _invalid(message: str, param: str | None) -> ErrorReply:
    return ErrorReply(400, body=_error_body(message, "invalid_request_error", None, param))


def _tool_message_problem(messages: list[Any]) -> ErrorReply | None:
    """Enforce the ordering rule the real API enforces around tool calls."""
    awaiting: list[str] = []
    awaiting_since = 0
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return _invalid(f"Invalid type for 'messages[{index}]': expected an object.", f"messages.[{index}]")
        role = message.get("role")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id in awaiting:
                awaiting.remove(call_id)
                continue
            return _invalid(
                "Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                "with 'tool_calls'.",
                f"messages.[{index}].role",
            )
        if awaiting:
            return _missing_tool_responses(awaiting, awaiting_since)
        if role == "assistant" and message.get("tool_calls"):
            awaiting = [c.get("id") for c in message["tool_calls"] if isinstance(c, dict)]
            awaiting_since = index
    if awaiting:
        return _missing_tool_responses(awaiting, awaiting_since)
    return None


def _past_arguments_problem(messages: list[Any]) -> ErrorReply | None:
    """vLLM's answer to a past tool call whose arguments it cannot parse into an object."""
    for message in messages:
        for call in message.get("tool_calls") or () if message.get("role") == "assistant" else ():
            function = call.get("function") if isinstance(call, dict) else None
            arguments = function.get("arguments") if isinstance(function, dict) else None
            if not isinstance(arguments, str):
                continue
            try:
                value = json.loads(arguments)
            except ValueError as error:
                return ErrorReply(400, body={"error": {"message": str(error), "type": "BadRequestError",
                                                       "param": None, "code": 400}})
            if not isinstance(value, dict):
                return ErrorReply(400, body={"error": {"message": "tool call arguments must be a JSON object",
                                                       "type": "BadRequestError", "param": None, "code": 400}})
    return None


def insufficient_quota() -> ErrorReply:
    """OpenAI's answer when the account has no credit left: a 429 that waiting does not cure."""
    message = ("You exceeded your current quota, please check your plan and billing details. For more information "
               "on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.")
    return ErrorReply(429, body=_error_body(message, "insufficient_quota", "insufficient_quota"))


def _missing_tool_responses(ids: list[str], index: int) -> ErrorReply:
    return _invalid(
        "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
        f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(ids)}",
        f"messages.[{index}].role",
    )


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _completion(
    completion_id: str,
    model: str,
    turn: Turn,
    calls: list[tuple[str, Any]],
    finish: str,
    usage: dict[str, Any],
    objects: bool = False,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": turn.full_text if (turn.text is not None or turn.chunks is not None) else None,
        "refusal": None,
        "annotations": [],
    }
    if calls:
        message["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": call.name, "arguments": _arguments(call, objects)}}
            for call_id, call in calls
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": "fp_fake0001",
    }


def _arguments(call: Any, objects: bool) -> Any:
    return call.arguments_object() if objects else call.arguments_json()


def _stream_chunks(
    completion_id: str,
    model: str,
    turn: Turn,
    calls: list[tuple[str, Any]],
    finish: str,
    usage: dict[str, Any] | None,
    objects: bool = False,
) -> Iterator[dict[str, Any]]:
    created = int(time.time())
    with_usage = usage is not None

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_fake0001",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if with_usage:
            data["usage"] = None
        return data

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for piece in turn.deltas():
        yield chunk({"content": piece})
    for index, (call_id, call) in enumerate(calls):
        if objects:  # such servers send each call whole, in one piece
            whole = {"name": call.name, "arguments": _arguments(call, objects)}
            yield chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function", "function": whole}]})
            continue
        head = {"index": index, "id": call_id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        yield chunk({"tool_calls": [head]})
        for piece in split_evenly(call.arguments_json()):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, finish)
    if usage is not None:
        final = chunk({})
        final["choices"] = []
        final["usage"] = usage
        yield final


if __name__ == "__main__":
    run_cli(OpenAIFake)
