"""Anthropic's Messages API (Claude) via `anthropic`'s async client.

With extended thinking, Claude's answer starts with signed `thinking` (or `redacted_thinking`)
blocks that must be sent back unchanged, ahead of the rest of that assistant turn, whenever the
turn is replayed (required while a tool round is open). They are kept, as the JSON blocks the API
returned, in the assistant message's `extra["anthropic_thinking"]`.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
from anthropic.types import Message as AnthropicMessage

from .. import netguard
from . import LABELS
from .base import (
    CHECK_TIMEOUT,
    DeltaCallback,
    Finish,
    LoopClients,
    Message,
    ModelRequest,
    ModelResponse,
    ModelToolCall,
    ProviderError,
    Usage,
    check_report,
)
from .openai_compat import retry_after

THINKING = "anthropic_thinking"
# The Messages API requires max_tokens. Unless the model role sets its own, a generous limit that
# every current Claude model allows; the older models that allow less get their own maximum.
DEFAULT_MAX_TOKENS = 16384
SMALLER_MAXIMUMS = (("claude-3-5-", 8192), ("claude-3-haiku", 4096), ("claude-3-opus", 4096),
                    ("claude-3-sonnet", 4096))
# Stop reasons in the shared vocabulary. A full context window cuts the answer off like a limit.
FINISH = {"end_turn": Finish.STOP, "stop_sequence": Finish.STOP, "tool_use": Finish.TOOL_CALLS,
          "max_tokens": Finish.LENGTH, "model_context_window_exceeded": Finish.LENGTH, "refusal": Finish.BLOCKED}
DEFAULT_BASE_URL = "https://api.anthropic.com"
# The most models the API lists on one page: one request sees the whole list.
LIST_PAGE_SIZE = 1000


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, *, base_url: str, api_key: str, public_only: bool = False) -> None:
        self._public_only = public_only
        self.base_url = base_url or DEFAULT_BASE_URL
        self._api_key = api_key
        self._clients = LoopClients(self._new_client)

    @property
    def client(self) -> anthropic.AsyncAnthropic:
        return self._clients.get()

    def _new_client(self) -> anthropic.AsyncAnthropic:
        # The engine retries durably with backoff; the SDK's own retries would hide Retry-After.
        http_client = anthropic.DefaultAsyncHttpxClient(
            transport=netguard.endpoint_transport() if self._public_only else netguard.site_endpoint_transport())
        return anthropic.AsyncAnthropic(api_key=self._api_key, base_url=self.base_url, max_retries=0,
                                        http_client=http_client)

    def _require_key(self) -> None:
        if not self._api_key:
            raise ProviderError("no API key for Anthropic: set ANTHROPIC_API_KEY or give the model profile a key")

    def label(self, model: str) -> str:
        return LABELS["anthropic"].format(model=model)

    async def check(self, model: str, *, timeout: float = CHECK_TIMEOUT) -> str:
        self._require_key()
        # A client of its own, closed here: a check may run on a short-lived event loop (a sync
        # view's), where a cached client would be left holding connections of a closed loop.
        async with self._new_client() as client:
            try:
                page = await client.models.list(limit=LIST_PAGE_SIZE, timeout=timeout)
            except anthropic.NotFoundError as error:
                raise ProviderError(f"{self.base_url} has no model list (404): is the base URL right?",
                                    status=404) from error
            except anthropic.APIError as error:
                raise provider_error(error, self.base_url) from error
        listed = None if page.has_next_page() else {entry.id for entry in page.data}
        return check_report(self.base_url, model, listed)

    async def complete(self, request: ModelRequest, *, on_delta: DeltaCallback | None = None) -> ModelResponse:
        self._require_key()
        kwargs = anthropic_request(request)
        usage = Usage()
        try:
            if on_delta is not None:
                message = await self._stream(kwargs, on_delta, usage)
            else:
                message = await self.client.messages.create(**kwargs)
        except anthropic.APIError as error:
            failure = provider_error(error, self.base_url)
            failure.usage = usage
            raise failure from error
        # A stream cut half way surfaces as the HTTP library's own error.
        except httpx2.TransportError as error:
            raise ProviderError(f"the connection to {self.base_url} dropped ({type(error).__name__}: {error})",
                                retryable=True, usage=usage) from error
        response = from_anthropic_message(message)
        response.output_limit = kwargs["max_tokens"]
        return response

    async def _stream(self, kwargs: dict[str, Any], on_delta: DeltaCallback, usage: Usage) -> AnthropicMessage:
        """Stream text to `on_delta`; `usage` follows what the stream has reported so far."""
        # The SDK's stream helper assembles the final message, tool_use input JSON deltas included.
        async with self.client.messages.stream(**kwargs) as stream:
            async for event in stream:
                if event.type == "message_start":
                    usage.input_tokens = _input_tokens(event.message.usage)
                    usage.output_tokens = event.message.usage.output_tokens or 0
                elif event.type == "message_delta":
                    usage.output_tokens = event.usage.output_tokens or usage.output_tokens
                elif event.type == "text" and event.text:
                    await on_delta(event.text)
            return await stream.get_final_message()


# --------------------------------------------------------------------------- #
# Neutral transcript -> Messages API request
# --------------------------------------------------------------------------- #


def anthropic_request(request: ModelRequest) -> dict[str, Any]:
    messages = to_anthropic_messages(request.messages)
    kwargs: dict[str, Any] = {"model": request.model, "messages": messages, "timeout": request.timeout,
                              "max_tokens": request.max_tokens or default_max_tokens(request.model)}
    if request.system:
        kwargs["system"] = request.system
    if request.temperature is not None:
        kwargs["temperature"] = request.temperature
    if request.tools:
        kwargs["tools"] = [{"name": spec["name"], "description": spec.get("description") or "",
                            "input_schema": spec.get("parameters") or {"type": "object"}} for spec in request.tools]
    elif used := _tools_used(messages):
        # The API refuses tool_use/tool_result blocks in a request that defines no tools. On a turn
        # that offers none (the last round), declare the ones the transcript used and forbid calls.
        kwargs["tools"] = [{"name": name, "description": "Not available any more in this task.",
                            "input_schema": {"type": "object"}} for name in used]
        kwargs["tool_choice"] = {"type": "none"}
    return kwargs


def default_max_tokens(model: str) -> int:
    return next((limit for prefix, limit in SMALLER_MAXIMUMS if model.startswith(prefix)), DEFAULT_MAX_TOKENS)


def to_anthropic_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Messages API `messages` for a neutral transcript.

    Tool results become tool_result blocks in a user message; consecutive messages of one role are
    merged, since the API wants user and assistant to alternate and every round's results in the
    single user message that follows its tool_use blocks."""
    result: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        if role == "assistant":
            blocks = _assistant_blocks(message)
        elif role == "tool":
            role, blocks = "user", [_tool_result(message)]
        else:
            role = "user"
            blocks = [{"type": "text", "text": message["content"]}] if message.get("content") else []
        if not blocks:
            continue
        if result and result[-1]["role"] == role:
            result[-1]["content"].extend(blocks)
        else:
            result.append({"role": role, "content": blocks})
    return result


def _assistant_blocks(message: Message) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [dict(block) for block in (message.get("extra") or {}).get(THINKING) or ()]
    if message.get("content"):
        blocks.append({"type": "text", "text": message["content"]})
    blocks.extend({"type": "tool_use", "id": call["id"], "name": call["name"],
                   "input": _arguments_object(call.get("arguments"))}
                  for call in message.get("tool_calls") or ())
    return blocks


def _tool_result(message: Message) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message["tool_call_id"]}
    if message.get("content"):
        block["content"] = message["content"]
    if message.get("is_error"):
        block["is_error"] = True
    return block


def _arguments_object(raw: str | None) -> dict[str, Any]:
    # The neutral format keeps arguments as the model wrote them; Claude's own are always objects.
    try:
        value = json.loads(raw or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _tools_used(messages: list[dict[str, Any]]) -> list[str]:
    names = [block["name"] for message in messages for block in message["content"] if block["type"] == "tool_use"]
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------- #
# Messages API answer -> neutral answer
# --------------------------------------------------------------------------- #


def from_anthropic_message(message: AnthropicMessage) -> ModelResponse:
    text: list[str] = []
    calls: list[ModelToolCall] = []
    thinking: list[dict[str, Any]] = []
    for block in message.content:
        if block.type == "text":
            text.append(block.text)
        elif block.type == "tool_use":
            calls.append(ModelToolCall(id=block.id, name=block.name,
                                       arguments=json.dumps(block.input, ensure_ascii=False)))
        elif block.type == "thinking":
            thinking.append({"type": "thinking", "thinking": block.thinking, "signature": block.signature})
        elif block.type == "redacted_thinking":
            thinking.append({"type": "redacted_thinking", "data": block.data})
    raw = message.stop_reason or ""
    return ModelResponse(text="".join(text), tool_calls=calls, extra={THINKING: thinking} if thinking else {},
                         usage=Usage(_input_tokens(message.usage), message.usage.output_tokens or 0),
                         finish_reason=FINISH.get(raw, Finish.OTHER) if raw else "", raw_finish_reason=raw)


def _input_tokens(usage: Any) -> int:
    # Cached prompt tokens are reported apart from the rest; all of them were read.
    return (usage.input_tokens or 0) + (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


def provider_error(error: anthropic.APIError, base_url: str) -> ProviderError:
    """Plain words for what went wrong, and whether trying again can help."""
    if isinstance(error, anthropic.APITimeoutError):
        return ProviderError(f"the model at {base_url} did not answer in time", retryable=True)
    if isinstance(error, anthropic.APIConnectionError):
        return ProviderError(f"could not connect to the model at {base_url}", retryable=True)
    if not isinstance(error, anthropic.APIStatusError):
        return ProviderError(f"model call failed: {error}")
    status, kind = error.status_code, error.type
    # An error inside a stream arrives after a 200: its type says what it was.
    code = str(status) if status >= 400 else str(kind)
    detail = str(error.api_message or error.message)[:500]
    hint = retry_after(error.response.headers)
    if status in (401, 403) or kind in ("authentication_error", "permission_error"):
        return ProviderError(f"the API key was rejected ({code}): {detail}", status=status)
    if status == 429 or kind == "rate_limit_error":
        return ProviderError(f"rate limited ({code}): {detail}", retryable=True, retry_after=hint, status=status)
    if status == 529 or kind == "overloaded_error":
        return ProviderError(f"the provider is overloaded ({code}): {detail}", retryable=True, retry_after=hint,
                             status=status)
    if status >= 500 or status == 408 or kind in ("api_error", "timeout_error"):
        return ProviderError(f"the provider failed ({code}): {detail}", retryable=True, retry_after=hint,
                             status=status)
    if status == 404:
        return ProviderError(f"not found (404) — is the model name right? {detail}", status=status)
    return ProviderError(f"the provider refused the request ({code}): {detail}", status=status)
