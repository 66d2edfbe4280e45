"""Google Gemini via `google-genai`'s async client.

Gemini 3 signs its reasoning: a function-call part (and sometimes a text part) comes back with an
opaque `thought_signature`, and every later request that replays that part must carry the same
bytes on it, or Gemini refuses the request. The transcript is JSON in the database, so signatures
are kept as base64 text in the neutral message's `extra` and turned back into bytes on replay:

- a tool call's `extra`: `gemini_thought_signature` (the signature of its function-call part) and
  `gemini_call_id` (the id Gemini gave the call, when it gave one: the engine invents ids for calls
  that have none, and those must not be sent to Gemini as if they were its own);
- the assistant message's `extra`: `gemini_thought_signature` for the text part, and
  `gemini_thoughts` for thought parts (`[{"text": ..., "gemini_thought_signature": ...}]`).

A model turn is replayed as thought parts, then its text, then its function calls: the order in
which Gemini writes them. Consecutive text pieces (a stream sends one per chunk) become one part
carrying the signature that came with them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import httpx
import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from google.genai.client import AsyncClient

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

SIGNATURE = "gemini_thought_signature"
CALL_ID = "gemini_call_id"
THOUGHTS = "gemini_thoughts"

# Finish reasons that mean Gemini withheld the answer rather than failed to write one.
BLOCKED = frozenset({"SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY",
                     "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "MODEL_ARMOR"})
# A quota that waiting a minute does not refill: none at all, or a daily one.
_DAILY_QUOTA = re.compile(r"per ?day", re.IGNORECASE)
_ZERO_LIMIT = re.compile(r"\blimit: 0\b")
# What Gemini accepts as a function's name: a call the model made up may not qualify.
_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
# The most models the API lists on one page: one request sees the whole list.
LIST_PAGE_SIZE = 1000


class GeminiProvider:
    name = "gemini"

    def __init__(self, *, base_url: str, api_key: str, public_only: bool = False) -> None:
        self.base_url = base_url
        self._api_key = api_key
        self._public_only = public_only
        self._clients = LoopClients(self._new_client)

    @property
    def client(self) -> AsyncClient:
        return self._clients.get().aio

    def _new_client(self) -> genai.Client:
        # Exactly one attempt, which also turns off the SDK's implicit retry of connection errors:
        # the engine retries durably and honours Gemini's retry hint, which SDK retries would hide.
        options = types.HttpOptions(
            base_url=self.base_url or None, retry_options=types.HttpRetryOptions(attempts=1),
            async_client_args={"transport": netguard.endpoint_transport()} if self._public_only else None)
        return genai.Client(api_key=self._api_key, vertexai=False, http_options=options)

    def _require_key(self) -> None:
        if not self._api_key:
            raise ProviderError("no API key for Gemini: set GEMINI_API_KEY or give the model profile a key")

    def label(self, model: str) -> str:
        return LABELS["gemini"].format(model=model)

    async def check(self, model: str, *, timeout: float = CHECK_TIMEOUT) -> str:
        self._require_key()
        config = types.ListModelsConfig(page_size=LIST_PAGE_SIZE,
                                        http_options=types.HttpOptions(timeout=max(1, round(timeout * 1000))))
        # A client of its own, closed here: a check may run on a short-lived event loop (a sync
        # view's), where a cached client would be left holding connections of a closed loop.
        client = self._new_client()
        try:
            async with client.aio as aio:
                pager = await aio.models.list(config=config)
        except genai_errors.APIError as error:
            raise provider_error(error) from error
        except (httpx2.TransportError, httpx.TransportError) as error:
            raise transport_error(error) from error
        finally:
            client.close()
        listed = None if pager.config.get("page_token") else {
            (entry.name or "").removeprefix("models/") for entry in pager.page}
        return check_report(self.base_url or "Gemini", model.removeprefix("models/"), listed)

    async def complete(self, request: ModelRequest, *, on_delta: DeltaCallback | None = None) -> ModelResponse:
        self._require_key()
        contents = to_gemini_contents(request.messages)
        config = gemini_config(request)
        spent = Usage()
        try:
            if on_delta is not None:
                response = await self._stream(request.model, contents, config, on_delta, spent)
            else:
                response = await self.client.models.generate_content(model=request.model, contents=contents,
                                                                     config=config)
        except genai_errors.APIError as error:
            failure = provider_error(error)
            failure.usage = spent
            raise failure from error
        except (httpx2.TransportError, httpx.TransportError) as error:
            failure = transport_error(error)
            failure.usage = spent
            raise failure from error
        answer = from_gemini_response(response)
        answer.output_limit = request.max_tokens or None
        return answer

    async def _stream(self, model: str, contents: list[types.Content], config: types.GenerateContentConfig,
                      on_delta: DeltaCallback, spent: Usage) -> types.GenerateContentResponse:
        """Stream text to `on_delta` and gather the chunks into one response; `spent` follows the
        usage reported so far."""
        parts: list[types.Part] = []
        answered = False
        finish: Any = None
        feedback: types.GenerateContentResponsePromptFeedback | None = None
        usage: types.GenerateContentResponseUsageMetadata | None = None
        async for chunk in await self.client.models.generate_content_stream(model=model, contents=contents,
                                                                            config=config):
            feedback = chunk.prompt_feedback or feedback
            usage = chunk.usage_metadata or usage
            if usage is not None:
                spent.input_tokens, spent.output_tokens = _token_counts(usage)
            if not chunk.candidates:
                continue
            answered = True
            candidate = chunk.candidates[0]
            finish = candidate.finish_reason or finish
            for part in (candidate.content.parts if candidate.content else None) or ():
                parts.append(part)
                if part.text and not part.thought:
                    await on_delta(part.text)
        candidates = [types.Candidate(content=types.Content(role="model", parts=parts), finish_reason=finish)] \
            if answered else []
        return types.GenerateContentResponse(candidates=candidates, prompt_feedback=feedback, usage_metadata=usage)


# --------------------------------------------------------------------------- #
# Neutral transcript -> Gemini request
# --------------------------------------------------------------------------- #


def gemini_config(request: ModelRequest) -> types.GenerateContentConfig:
    tools = tool_config = None
    if request.tools:
        tools = [types.Tool(function_declarations=[
            # Raw JSON schema goes in `parameters_json_schema`: `parameters` is Gemini's own OpenAPI
            # subset and would refuse keywords such as additionalProperties.
            types.FunctionDeclaration(name=spec["name"], description=spec.get("description") or "",
                                      parameters_json_schema=spec.get("parameters") or None)
            for spec in request.tools])]
    elif used := _tools_used(request.messages):
        # A turn that offers no tools (the last round) after a transcript with calls in it: with no
        # declarations Gemini may call one anyway and end with UNEXPECTED_TOOL_CALL. Declare the
        # ones the transcript used and forbid calling them.
        tools = [types.Tool(function_declarations=[
            types.FunctionDeclaration(name=name, description="Not available any more in this task.")
            for name in used])]
        tool_config = types.ToolConfig(
            function_calling_config=types.FunctionCallingConfig(mode=types.FunctionCallingConfigMode.NONE))
    return types.GenerateContentConfig(
        system_instruction=request.system or None,
        tools=tools,
        tool_config=tool_config,
        # The engine runs tools itself, under policy; the SDK must never call anything.
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        temperature=request.temperature,
        max_output_tokens=request.max_tokens or None,
        http_options=types.HttpOptions(timeout=max(1, round(request.timeout * 1000))),
    )


def _tools_used(messages: list[Message]) -> list[str]:
    names = [call["name"] for message in messages if message["role"] == "assistant"
             for call in message.get("tool_calls") or () if _FUNCTION_NAME.match(str(call.get("name", "")))]
    return list(dict.fromkeys(names))


def to_gemini_contents(messages: list[Message]) -> list[types.Content]:
    """Gemini `contents` for a neutral transcript.

    Tool results become function-response parts in a user turn, all results of a round in one turn
    and in the order of the calls, since Gemini pairs calls and responses by position and name.
    Turns of the same role are merged, so user and model always alternate."""
    contents: list[types.Content] = []
    calls: dict[str, tuple[int, dict[str, Any]]] = {}  # id -> (position, call) in the last model turn
    results: list[Message] = []

    def flush_results() -> None:
        paired = [(calls.get(m.get("tool_call_id", ""), (len(calls), {})), m) for m in results]
        paired.sort(key=lambda pair: pair[0][0])
        _append(contents, "user", [_function_response(m, call) for (_, call), m in paired])
        results.clear()

    for message in messages:
        role = message["role"]
        if role == "tool":
            results.append(message)
            continue
        if results:
            flush_results()
        if role == "assistant":
            calls = {call["id"]: (position, call) for position, call in enumerate(message.get("tool_calls") or ())}
            _append(contents, "model", _model_parts(message))
        elif message.get("content"):
            _append(contents, "user", [types.Part(text=message["content"])])
    if results:
        flush_results()
    return contents


def _append(contents: list[types.Content], role: str, parts: list[types.Part]) -> None:
    if not parts:
        return
    if contents and contents[-1].role == role:
        contents[-1].parts = [*(contents[-1].parts or ()), *parts]
    else:
        contents.append(types.Content(role=role, parts=parts))


def _model_parts(message: Message) -> list[types.Part]:
    extra = message.get("extra") or {}
    parts = [types.Part(text=thought.get("text") or "", thought=True,
                        thought_signature=_signature_bytes(thought.get(SIGNATURE)))
             for thought in extra.get(THOUGHTS) or ()]
    text, signature = message.get("content") or "", extra.get(SIGNATURE)
    if text or signature:
        parts.append(types.Part(text=text, thought_signature=_signature_bytes(signature)))
    for call in message.get("tool_calls") or ():
        call_extra = call.get("extra") or {}
        parts.append(types.Part(
            function_call=types.FunctionCall(id=call_extra.get(CALL_ID), name=call["name"],
                                             args=_arguments_object(call.get("arguments"))),
            thought_signature=_signature_bytes(call_extra.get(SIGNATURE))))
    return parts


def _function_response(result: Message, call: dict[str, Any]) -> types.Part:
    text = result.get("content") or ""
    response = {"error": text} if result.get("is_error") else {"result": _json_or_text(text)}
    return types.Part(function_response=types.FunctionResponse(
        id=(call.get("extra") or {}).get(CALL_ID), name=call.get("name") or result.get("name") or "",
        response=response))


def _arguments_object(raw: str | None) -> dict[str, Any]:
    # The neutral format keeps arguments as the model wrote them; Gemini's own are always objects.
    try:
        value = json.loads(raw or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _json_or_text(text: str) -> Any:
    """Tool results that are JSON go back as structure, so the model reads fields, not quoting."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _signature_bytes(value: str | None) -> bytes | None:
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ProviderError("a Gemini thought signature stored in this job's transcript is damaged "
                            "(not base64); the transcript cannot be replayed to Gemini") from error


def _signature_text(value: bytes | None) -> str | None:
    return base64.b64encode(value).decode("ascii") if value else None


# --------------------------------------------------------------------------- #
# Gemini response -> neutral answer
# --------------------------------------------------------------------------- #


def from_gemini_response(response: types.GenerateContentResponse) -> ModelResponse:
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason:
        why = f" ({feedback.block_reason_message})" if feedback.block_reason_message else ""
        raise ProviderError(f"Gemini blocked the request: {_enum_name(feedback.block_reason)}{why}")
    if not response.candidates:
        raise ProviderError("Gemini returned no candidates", retryable=True)
    candidate = response.candidates[0]
    finish = _enum_name(candidate.finish_reason)

    text: list[str] = []
    text_signature: str | None = None
    thoughts: list[dict[str, str]] = []
    calls: list[ModelToolCall] = []
    previous_thought = False
    for part in (candidate.content.parts if candidate.content else None) or ():
        signature = _signature_text(part.thought_signature)
        if part.function_call is not None:
            calls.append(_tool_call(part.function_call, signature))
        elif part.thought:
            if not previous_thought:
                thoughts.append({"text": ""})
            thoughts[-1]["text"] += part.text or ""
            if signature:
                thoughts[-1][SIGNATURE] = signature
        elif part.text is not None or signature:
            text.append(part.text or "")
            text_signature = signature or text_signature
        previous_thought = bool(part.thought) and part.function_call is None

    answer = "".join(text)
    if not answer and not calls and finish == "MALFORMED_FUNCTION_CALL":
        raise ProviderError("Gemini wrote a function call it could not complete (MALFORMED_FUNCTION_CALL)",
                            retryable=True)
    extra: dict[str, Any] = {}
    if text_signature:
        extra[SIGNATURE] = text_signature
    if thoughts:
        extra[THOUGHTS] = thoughts
    return ModelResponse(text=answer, tool_calls=calls, extra=extra, usage=_usage(response),
                         finish_reason=finish_reason(finish, bool(calls)), raw_finish_reason=finish)


def finish_reason(raw: str, called: bool) -> str:
    """Gemini ends a turn with calls in it with STOP too."""
    if not raw or raw == "FINISH_REASON_UNSPECIFIED":
        return ""
    if raw == "STOP":
        return Finish.TOOL_CALLS if called else Finish.STOP
    if raw == "MAX_TOKENS":
        return Finish.LENGTH
    return Finish.BLOCKED if raw in BLOCKED else Finish.OTHER


def _tool_call(call: types.FunctionCall, signature: str | None) -> ModelToolCall:
    extra: dict[str, Any] = {}
    if signature:
        extra[SIGNATURE] = signature
    if call.id:
        extra[CALL_ID] = call.id
    return ModelToolCall(id=call.id or "", name=call.name or "",
                         arguments=json.dumps(call.args or {}, ensure_ascii=False), extra=extra)


def _usage(response: types.GenerateContentResponse) -> Usage:
    if response.usage_metadata is None:
        return Usage()
    return Usage(*_token_counts(response.usage_metadata))


def _token_counts(usage: types.GenerateContentResponseUsageMetadata) -> tuple[int, int]:
    # Thinking is billed as output, so it counts as output here too.
    return usage.prompt_token_count or 0, (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)


def _enum_name(value: Any) -> str:
    return str(getattr(value, "value", value) or "")


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


def transport_error(error: httpx2.TransportError | httpx.TransportError) -> ProviderError:
    """google-genai lets its HTTP library's errors through unwrapped: plain words for them too."""
    if isinstance(error, (httpx2.TimeoutException, httpx.TimeoutException)):
        return ProviderError("Gemini did not answer in time", retryable=True)
    return ProviderError(f"the connection to Gemini failed ({type(error).__name__}: {error})", retryable=True)


def provider_error(error: genai_errors.APIError) -> ProviderError:
    """Plain words for what went wrong, and whether trying again can help."""
    status = error.code
    detail = str(error.message or error.status or error)[:500]
    details = _error_details(error)
    if status in (401, 403) or any(d.get("reason") == "API_KEY_INVALID" for d in details):
        return ProviderError(f"the API key was rejected ({status}): {detail}", status=status)
    if status == 429 and _quota_exhausted(detail, details):
        return ProviderError(f"the quota is used up (429): {detail} Waiting minutes will not help: the quota is "
                             "daily, or this key or model has none; check the plan and billing.", status=status)
    if status == 429:
        return ProviderError(f"rate limited (429): {detail}", retryable=True, retry_after=_retry_hint(error, details),
                             status=status)
    if status == 404:
        return ProviderError(f"not found (404) — is the model name right? {detail}", status=status)
    if status >= 500 or status == 408:
        return ProviderError(f"the provider failed ({status}): {detail}", retryable=True,
                             retry_after=_retry_hint(error, details), status=status)
    if "thought signature" in detail.lower():
        return ProviderError(f"Gemini refused a thought signature replayed from the transcript ({status}): {detail}",
                             status=status)
    return ProviderError(f"the provider refused the request ({status}): {detail}", status=status)


def _error_details(error: genai_errors.APIError) -> list[dict[str, Any]]:
    body = error.details
    inner = body.get("error", body) if isinstance(body, dict) else None
    details = inner.get("details") if isinstance(inner, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _quota_exhausted(message: str, details: list[dict[str, Any]]) -> bool:
    """A 429 that names a daily quota, or a limit of 0 (a model the key's tier may not use)."""
    if _ZERO_LIMIT.search(message):
        return True
    for detail in details:
        if not str(detail.get("@type", "")).endswith("google.rpc.QuotaFailure"):
            continue
        for violation in detail.get("violations") or ():
            if not isinstance(violation, dict):
                continue
            if _DAILY_QUOTA.search(str(violation.get("quotaId", ""))) or str(violation.get("quotaValue")) == "0":
                return True
    return False


def _retry_hint(error: genai_errors.APIError, details: list[dict[str, Any]]) -> float | None:
    """Seconds to wait: Gemini's RetryInfo (`"retryDelay": "2s"`), else a Retry-After header."""
    for detail in details:
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return retry_after(getattr(error.response, "headers", None))
