"""Fake Anthropic Messages API speaking the real wire protocol.

Serves `POST /v1/messages` (plain and streamed with the real event sequence),
`POST /v1/messages/count_tokens`, and `GET /v1/models[/{id}]`.

Strict as the real API about tool blocks: every tool_use answered by tool_result
blocks at the start of the next user message, and `tools` defined in any request
whose history holds tool_use or tool_result blocks. `max_tokens` is honoured: an
answer longer than it is cut off with stop reason `max_tokens`.

    with AnthropicFake() as fake:
        client = anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="sk-ant-test")
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from tests.fakes.http import (
    ErrorReply,
    ProviderFake,
    Reply,
    Request,
    Response,
    ToolCall,
    Turn,
    error_headers,
    json_response,
    new_id,
    run_cli,
    split_evenly,
    sse,
)

__all__ = ["AnthropicFake"]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_DEFAULT_MESSAGES = {
    429: "Number of request tokens has exceeded your per-minute rate limit.",
    500: "Internal server error",
    529: "Overloaded",
}


class AnthropicFake(ProviderFake):
    """Fake Anthropic Messages API."""

    api_prefix: ClassVar[str] = ""
    default_model: ClassVar[str] = "claude-sonnet-4-6"

    def __init__(
        self, *, models: tuple[str, ...] = ("claude-sonnet-4-6", "claude-haiku-4-5"), **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.models = models

    def check_turn(self, turn: Turn) -> None:
        for call in turn.tool_calls:
            call.arguments_object()

    # -- routing ------------------------------------------------------------ #

    def is_generation_path(self, path: str) -> bool:
        return path == "/v1/messages"

    async def route(self, request: Request, body: Any) -> Reply:
        path, method = request.path, request.method
        if method == "POST" and path == "/v1/messages":
            stream = isinstance(body, dict) and body.get("stream") is True
            model = body.get("model", self.default_model) if isinstance(body, dict) else self.default_model
            return await self.generate(request, body, stream=stream, model=str(model))
        if method == "POST" and path == "/v1/messages/count_tokens":
            return self._guarded(request) or json_response({"input_tokens": self.request_tokens(request)})
        if method == "GET" and path == "/v1/models":
            return self._guarded(request) or self._list()
        if method == "GET" and path.startswith("/v1/models/"):
            return self._guarded(request) or self._model(path.removeprefix("/v1/models/"))
        return self.error_response(ErrorReply(404, "Not found"))

    def _guarded(self, request: Request) -> Response | None:
        auth = self.auth_error(request)
        return None if auth is None else self.error_response(auth)

    def _list(self) -> Response:
        data = [_model_info(m) for m in self.models]
        return json_response(
            {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
        )

    def _model(self, model_id: str) -> Response:
        if model_id not in self.models:
            return self.error_response(ErrorReply(404, f"model: {model_id}"))
        return json_response(_model_info(model_id))

    # -- auth and validation --------------------------------------------------- #

    def auth_error(self, request: Request) -> ErrorReply | None:
        if self.expect_key is None:
            return None
        key = request.headers.get("x-api-key")
        if key is None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            key = token if scheme.lower() == "bearer" and token else None
        if key is None:
            return ErrorReply(401, "x-api-key header is required")
        if key != self.expect_key:
            return ErrorReply(401, "invalid x-api-key")
        return None

    def validate(self, body: Mapping[str, Any]) -> ErrorReply | None:
        if not self.strict:
            return None
        for required in ("model", "max_tokens", "messages"):
            if required not in body:
                return ErrorReply(400, f"{required}: Field required")
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            return ErrorReply(400, "messages: at least one message is required")
        return _tool_pairing_problem(messages) or _undefined_tools_problem(body, messages)

    length_reason = "max_tokens"

    def output_limit(self, body: Mapping[str, Any]) -> Any:
        return body.get("max_tokens")

    def stream_error_event(self) -> bytes:
        return sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error")

    def count_tool_results(self, body: Mapping[str, Any]) -> int:
        return sum(1 for _, block in _blocks(body.get("messages") or ()) if block.get("type") == "tool_result")

    def offers_tools(self, body: Mapping[str, Any]) -> bool:
        return bool(body.get("tools"))

    # -- answers ------------------------------------------------------------ #

    def error_response(self, error: ErrorReply) -> Response:
        body = error.body
        if body is None:
            message = error.message or _DEFAULT_MESSAGES.get(error.status, "Error")
            kind = _ERROR_TYPES.get(error.status, "api_error")
            body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": new_id("req_011", 21)}
        headers = [("request-id", new_id("req_011", 21)), *error_headers(error)]
        return json_response(body, error.status, headers)

    def answer(self, request: Request, body: Mapping[str, Any], turn: Turn, *, stream: bool, model: str) -> Reply:
        prompt = turn.input_tokens if turn.input_tokens is not None else self.request_tokens(request)
        output = self.output_tokens(turn)
        stop_reason = turn.finish_reason or ("tool_use" if turn.tool_calls else "end_turn")
        calls = [(call.id or new_id("toolu_01", 22), call) for call in turn.tool_calls]
        message_id = new_id("msg_01", 22)
        headers = [("request-id", new_id("req_011", 21))]
        if not stream:
            message = _message(message_id, model, _content(turn, calls), stop_reason, _usage(prompt, output))
            return json_response(message, headers=headers)
        events = [sse(data, data["type"]) for data in _stream_events(message_id, model, turn, calls, stop_reason, prompt, output)]
        return self.streaming(request, turn, events, headers)


# --------------------------------------------------------------------------- #
# Wire format helpers
# --------------------------------------------------------------------------- #


def _blocks(messages: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    for index, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for block in content:
                if isinstance(block, dict):
                    yield index, block


def _tool_pairing_problem(messages: list[Any]) -> ErrorReply | None:
    """Enforce the real API's rule: tool_use and tool_result come in adjacent pairs."""
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return ErrorReply(400, f"messages.{index}: Input should be a valid dictionary")
    return _unexpected_results(messages) or _results_first(messages) or _unanswered_uses(messages)


def _results_first(messages: list[Any]) -> ErrorReply | None:
    """A user message that answers tool_use blocks must begin with all of its tool_result blocks."""
    for index, message in enumerate(messages):
        if message.get("role") != "user" or not index:
            continue
        expected = len(_tool_use_ids(messages[index - 1]))
        types = [b.get("type") for _, b in _blocks([message])]
        leading = next((n for n, kind in enumerate(types) if kind != "tool_result"), len(types))
        if types.count("tool_result") > leading or (expected and leading < expected):
            return ErrorReply(
                400,
                f"messages.{index}: Did not find {expected or types.count('tool_result')} `tool_result` block(s) at "
                "the beginning of this message. Messages following `tool_use` blocks must begin with a matching "
                "number of `tool_result` blocks.",
            )
    return None


def _undefined_tools_problem(body: Mapping[str, Any], messages: list[Any]) -> ErrorReply | None:
    if body.get("tools"):
        return None
    if any(block.get("type") in ("tool_use", "tool_result") for _, block in _blocks(messages)):
        return ErrorReply(400, "Requests which include `tool_use` or `tool_result` blocks must define tools.")
    return None


def _unexpected_results(messages: list[Any]) -> ErrorReply | None:
    for index, message in enumerate(messages):
        if message.get("role") != "user":
            continue
        previous = _tool_use_ids(messages[index - 1]) if index else []
        results = [b.get("tool_use_id") for _, b in _blocks([message]) if b.get("type") == "tool_result"]
        unexpected = [str(i) for i in results if i not in previous]
        if unexpected:
            return ErrorReply(
                400,
                f"messages.{index}.content.0: unexpected `tool_use_id` found in `tool_result` blocks: "
                f"{', '.join(unexpected)}. Each `tool_result` block must have a corresponding "
                "`tool_use` block in the previous message.",
            )
    return None


def _unanswered_uses(messages: list[Any]) -> ErrorReply | None:
    # A trailing assistant message is a prefill, which nobody could have answered yet.
    for index, message in enumerate(messages[:-1]):
        used = _tool_use_ids(message)
        answered = {b.get("tool_use_id") for _, b in _blocks([messages[index + 1]]) if b.get("type") == "tool_result"}
        missing = [str(i) for i in used if i not in answered]
        if missing:
            return ErrorReply(
                400,
                f"messages.{index + 1}: `tool_use` ids were found without `tool_result` blocks immediately "
                f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding "
                "`tool_result` block in the next message.",
            )
    return None


def _tool_use_ids(message: Any) -> list[str]:
    if not isinstance(message, dict) or message.get("role") != "assistant":
        return []
    return [b.get("id") for _, b in _blocks([message]) if b.get("type") == "tool_use"]


def _model_info(model_id: str) -> dict[str, Any]:
    return {
        "type": "model",
        "id": model_id,
        "display_name": model_id.replace("-", " ").title(),
        "created_at": "2025-09-29T00:00:00Z",
    }


def _usage(prompt: int, output: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output,
        "service_tier": "standard",
    }


def _content(turn: Turn, calls: list[tuple[str, ToolCall]]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if turn.full_text or not calls:
        blocks.append({"type": "text", "text": turn.full_text})
    blocks.extend(
        {"type": "tool_use", "id": call_id, "name": call.name, "input": call.arguments_object()} for call_id, call in calls
    )
    return blocks


def _message(
    message_id: str, model: str, content: list[dict[str, Any]], stop_reason: str | None, usage: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


def _stream_events(
    message_id: str,
    model: str,
    turn: Turn,
    calls: list[tuple[str, ToolCall]],
    stop_reason: str,
    prompt: int,
    output: int,
) -> Iterator[dict[str, Any]]:
    start_usage = _usage(prompt, 1)
    yield {"type": "message_start", "message": _message(message_id, model, [], None, start_usage)}
    index = 0
    if turn.full_text or not calls:
        yield {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
        yield {"type": "ping"}
        for piece in turn.deltas():
            yield {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}}
        yield {"type": "content_block_stop", "index": index}
        index += 1
    for call_id, call in calls:
        block = {"type": "tool_use", "id": call_id, "name": call.name, "input": {}}
        yield {"type": "content_block_start", "index": index, "content_block": block}
        for piece in ["", *split_evenly(call.arguments_json())]:
            yield {"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": piece}}
        yield {"type": "content_block_stop", "index": index}
        index += 1
    final_usage = {"input_tokens": prompt, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": output}
    yield {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None}, "usage": final_usage}
    yield {"type": "message_stop"}


if __name__ == "__main__":
    run_cli(AnthropicFake)
