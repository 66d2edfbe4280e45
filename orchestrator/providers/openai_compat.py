"""Any OpenAI-compatible Chat Completions endpoint (OpenAI, Ollama, vLLM, LM Studio) via `openai`."""

from __future__ import annotations

import email.utils
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

import openai

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
    arguments_text,
    check_report,
    replayable_arguments,
)

# Chat Completions finish reasons (and the words local servers use) in the shared vocabulary.
FINISH = {"stop": Finish.STOP, "eos": Finish.STOP, "stop_sequence": Finish.STOP, "end_turn": Finish.STOP,
          "tool_calls": Finish.TOOL_CALLS, "function_call": Finish.TOOL_CALLS, "length": Finish.LENGTH,
          "max_tokens": Finish.LENGTH, "content_filter": Finish.BLOCKED, "refusal": Finish.BLOCKED}


CLIENT_SHARDS = 8  # clients (connection pools) per event loop that the calls take in turn: see LoopClients


class OpenAIProvider:
    name = "openai"

    def __init__(self, *, base_url: str, api_key: str, public_only: bool = False) -> None:
        self.base_url = base_url
        self._api_key = api_key or "none"
        self._public_only = public_only
        self._clients = LoopClients(self._new_client, shards=CLIENT_SHARDS)
        self._ssl_context: ssl.SSLContext | None = None

    @property
    def client(self) -> openai.AsyncOpenAI:
        return self._clients.get()

    def _new_client(self) -> openai.AsyncOpenAI:
        # One TLS context for every client of the provider: each would otherwise load the CA
        # certificates again (about 0.7 MiB apiece).
        if self._ssl_context is None:
            self._ssl_context = netguard.tls_context()
        context = self._ssl_context
        # The engine retries durably with backoff; the SDK's own retries would hide Retry-After.
        http_client = openai.DefaultAsyncHttpxClient(
            transport=netguard.endpoint_transport(ssl_context=context) if self._public_only
            else netguard.site_endpoint_transport(ssl_context=context))
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self._api_key, max_retries=0,
                                  http_client=http_client)

    def label(self, model: str) -> str:
        return LABELS["openai"].format(model=model)

    async def check(self, model: str, *, timeout: float = CHECK_TIMEOUT) -> str:
        # A client of its own, closed here: a check may run on a short-lived event loop (a sync
        # view's), where a cached client would be left holding connections of a closed loop.
        async with self._new_client() as client:
            try:
                page = await client.models.list(timeout=timeout)
            except openai.NotFoundError as error:
                raise ProviderError(f"{self.base_url} has no model list (404): is the base URL right? "
                                    "OpenAI-compatible endpoints usually end in /v1.", status=404) from error
            except openai.APIError as error:
                raise provider_error(error, self.base_url) from error
        listed = None if page.has_next_page() else {entry.id for entry in page.data}
        return check_report(self.base_url, model, listed)

    async def complete(self, request: ModelRequest, *, on_delta: DeltaCallback | None = None) -> ModelResponse:
        body: dict[str, Any] = {"model": request.model, "messages": to_openai_messages(request)}
        if request.tools:
            body["tools"] = [{"type": "function", "function": spec} for spec in request.tools]
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens:
            body[limit_parameter(self.base_url)] = request.max_tokens
        usage = Usage()
        try:
            if on_delta is not None:
                response = await self._stream(body, request.timeout, on_delta, usage)
            else:
                response = from_openai_completion(await self._post(body, request.timeout))
        except openai.APIError as error:
            failure = provider_error(error, self.base_url)
            failure.usage = usage
            raise failure from error
        response.output_limit = request.max_tokens or None
        return response

    async def _post(self, body: dict[str, Any], timeout: float | None, *, stream: bool = False) -> Any:
        """`POST /chat/completions` as `client.chat.completions.create` sends it, less the walk the
        SDK makes through every request to reshape typed parameters: `body` is plain JSON already
        (strings, numbers, lists and dicts), which that walk returns unchanged, and on a long
        conversation with a dozen tool schemas it cost more than the rest of a round's work. The
        answer comes back as the server's JSON (`cast_to=object`), not as the SDK's typed objects,
        whose construction cost about as much again; a stream's chunks are still typed."""
        options: dict[str, Any] = {"timeout": timeout, "security": {"bearer_auth": True}}
        if stream:
            return await self.client.post("/chat/completions", body={**body, "stream": True}, options=options,
                                          cast_to=openai.types.chat.ChatCompletion, stream=True,
                                          stream_cls=openai.AsyncStream[openai.types.chat.ChatCompletionChunk])
        return await self.client.post("/chat/completions", body=body, options=options, cast_to=object)

    async def _stream(self, body: dict[str, Any], timeout: float | None, on_delta: DeltaCallback,
                      usage: Usage) -> ModelResponse:
        """Stream text to `on_delta`; `usage` is filled in as the server reports it."""
        stream = await self._post({**body, "stream_options": {"include_usage": True}}, timeout, stream=True)
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        finish = ""
        async for chunk in stream:
            if chunk.usage:
                usage.input_tokens = chunk.usage.prompt_tokens or 0
                usage.output_tokens = chunk.usage.completion_tokens or 0
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                delta = choice.delta
                if delta.content:
                    text.append(delta.content)
                    await on_delta(delta.content)
                for part in delta.tool_calls or []:
                    call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] = part.id or call["id"]
                    if part.function:
                        call["name"] += part.function.name or ""
                        call["arguments"] += arguments_text(part.function.arguments)
        return ModelResponse(
            text="".join(text),
            tool_calls=[ModelToolCall(c["id"], c["name"], c["arguments"]) for _, c in sorted(calls.items())],
            usage=Usage(usage.input_tokens, usage.output_tokens), finish_reason=finish_reason(finish),
            raw_finish_reason=finish)


def limit_parameter(base_url: str) -> str:
    """OpenAI's own API wants `max_completion_tokens` (its reasoning models refuse `max_tokens`);
    the servers people run themselves (Ollama, vLLM, llama-server, LM Studio) know `max_tokens`."""
    return "max_completion_tokens" if urlsplit(base_url or "").hostname == "api.openai.com" else "max_tokens"


def to_openai_messages(request: ModelRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    for message in request.messages:
        messages.append(_to_openai(message))
    return messages


def _to_openai(message: Message) -> dict[str, Any]:
    role = message["role"]
    if role == "tool":
        return {"role": "tool", "tool_call_id": message["tool_call_id"], "content": message.get("content") or ""}
    if role == "assistant" and message.get("tool_calls"):
        return {
            "role": "assistant",
            "content": message.get("content") or None,
            "tool_calls": [{"id": call["id"], "type": "function",
                            "function": {"name": call["name"],
                                         "arguments": replayable_arguments(call.get("arguments"))}}
                           for call in message["tool_calls"]],
        }
    return {"role": role, "content": message.get("content") or ""}


def from_openai_completion(completion: Any) -> ModelResponse:
    """A chat completion as the server sent it: plain JSON (`_post` asks the SDK for it as it is,
    without building its typed objects), read defensively, since a server may send any shape."""
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ProviderError("the model returned no choices", retryable=True)
    choice = choices[0]
    message = _object(choice.get("message"))
    calls = []
    for call in _list(message.get("tool_calls")):
        if not isinstance(call, dict) or not isinstance(function := call.get("function"), dict):
            raise ProviderError("the model sent a tool call that is not an object with a function", retryable=True)
        # A name or id that is not a string is kept as its JSON, so the model is told what it sent.
        calls.append(ModelToolCall(arguments_text(call.get("id")), arguments_text(function.get("name")),
                                   arguments_text(function.get("arguments"))))
    usage = _object(completion.get("usage"))
    raw = _text(choice.get("finish_reason"))
    return ModelResponse(text=_content(message.get("content")), tool_calls=calls,
                         usage=Usage(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))),
                         finish_reason=finish_reason(raw), raw_finish_reason=raw)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _content(value: Any) -> str:
    """The message's text: a string, or a list of parts (as the request's content may be), whose
    text parts are joined; anything else is no text."""
    if isinstance(value, list):
        return "".join(_text(part.get("text")) for part in value if isinstance(part, dict) and part.get("type") == "text")
    return _text(value)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def finish_reason(raw: str | None) -> str:
    return FINISH.get(raw, Finish.OTHER) if raw else ""


def provider_error(error: openai.APIError, base_url: str) -> ProviderError:
    """Plain words for what went wrong, and whether trying again can help."""
    if isinstance(error, openai.APITimeoutError):
        return ProviderError(f"the model at {base_url} did not answer in time", retryable=True)
    if isinstance(error, openai.APIConnectionError):
        return ProviderError(f"could not connect to the model at {base_url}", retryable=True)
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        detail = _detail(error)
        if status in (401, 403):
            return ProviderError(f"the API key was rejected ({status}): {detail}", status=status)
        if status == 429 and _code(error) == "insufficient_quota":
            # Waiting does not refill a quota: the account needs credit or a higher plan.
            return ProviderError(f"the account's quota is used up (429 insufficient_quota): {detail}",
                                 status=status)
        if status == 429:
            return ProviderError(f"rate limited (429): {detail}", retryable=True,
                                 retry_after=retry_after(error.response.headers), status=status)
        if status == 404:
            return ProviderError(f"not found (404) — is the model name right? {detail}", status=status)
        if status >= 500 or status == 408:
            return ProviderError(f"the provider failed ({status}): {detail}", retryable=True,
                                 retry_after=retry_after(error.response.headers), status=status)
        return ProviderError(f"the provider refused the request ({status}): {detail}", status=status)
    # An error event inside a stream that had started well: the server failed half way.
    code = _code(error)
    if code == "insufficient_quota":
        return ProviderError(f"the account's quota is used up (insufficient_quota): {error.message}")
    if _client_fault(code):
        return ProviderError(f"the provider refused the request: {error.message}")
    return ProviderError(f"the provider failed while answering: {error.message}", retryable=True)


def _code(error: openai.APIError) -> str:
    """The error's code, else its type: `insufficient_quota`, `500`, `invalid_request_error`…"""
    return str(error.code or getattr(error, "type", None) or "")


def _client_fault(code: str) -> bool:
    """An error event that blames the request itself (a 4xx code or a client error type)."""
    if code.isdigit():
        return 400 <= int(code) < 500 and int(code) not in (408, 429)
    return code in ("invalid_request_error", "BadRequestError")


def _detail(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:500]
    return str(error.message)[:500]


def retry_after(headers: Any) -> float | None:
    """Seconds to wait from Retry-After (seconds or an HTTP date) or retry-after-ms."""
    if headers is None:
        return None
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return max(0.0, millis / 1000)
    value = headers.get("retry-after")
    if not value:
        return None
    seconds = _number(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
