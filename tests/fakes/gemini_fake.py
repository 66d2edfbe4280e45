"""Fake Gemini API (Google AI, api-key flavour) as google-genai calls it.

Serves `POST /{version}/models/{model}:generateContent`,
`:streamGenerateContent?alt=sse` and `:countTokens`, plus `GET /{version}/models`
and `GET /{version}/models/{model}` for connection checks. Any `v1*` version
segment is accepted because the SDK's default version moves between releases.

Thought signatures behave like Gemini 3: the first functionCall part of each
answer carries a unique `thoughtSignature` (parallel calls after it carry none);
a later request replaying that part must carry the same signature, and any
signature replayed must be the one issued for that call, or the request is
refused with HTTP 400.

Function calling behaves like Gemini's: with `toolConfig.functionCallingConfig`
mode NONE the model answers in text instead of calling; with no tools declared a
call ends the answer with finish reason UNEXPECTED_TOOL_CALL and no content.
`generationConfig.maxOutputTokens` is honoured: a longer answer is cut off with
finish reason MAX_TOKENS.

    with GeminiFake() as fake:
        client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=fake.base_url))
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import os
import re
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
    sse,
)

__all__ = ["GeminiFake", "SKIP_SIGNATURE_VALUES", "quota_exceeded"]

_CALL_PATH = re.compile(r"^/(v1[a-z0-9]*)/((?:models|tunedModels)/[^/:]+):([A-Za-z]+)$")
_MODEL_PATH = re.compile(r"^/(v1[a-z0-9]*)/models/([^/:]+)$")
_LIST_PATH = re.compile(r"^/(v1[a-z0-9]*)/(models|tunedModels)$")

#: Signature values the real service documents as "skip validation" escape hatches.
SKIP_SIGNATURE_VALUES = frozenset({b"skip_thought_signature_validator", b"context_engineering_is_the_way_to_go"})

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_DEFAULT_MESSAGES = {
    400: "Request contains an invalid argument.",
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}
_SIGNATURE_MAGIC = b"\x12\x0a"
_SIGNATURE_DOCS = "Learn more: https://ai.google.dev/gemini-api/docs/thought-signatures"


class GeminiFake(ProviderFake):
    """Fake Gemini generateContent API with thought-signature enforcement."""

    api_prefix: ClassVar[str] = ""
    default_model: ClassVar[str] = "gemini-3-pro-preview"

    def __init__(
        self,
        *,
        models: tuple[str, ...] = ("gemini-3-pro-preview", "gemini-2.5-flash"),
        check_signatures: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.models = models
        self.check_signatures = check_signatures
        #: Signatures handed out (bytes -> function name, canonical args), kept when `record` is on.
        #: Verification itself is stateless (keyed MAC), so a long benchmark does not grow memory.
        self.signatures: dict[bytes, tuple[str, str]] = {}
        self._signing_key = os.urandom(32)
        self._issued = 0

    def reset(self) -> None:
        super().reset()
        self.signatures.clear()

    def check_turn(self, turn: Turn) -> None:
        for call in turn.tool_calls:
            call.arguments_object()

    # -- routing ------------------------------------------------------------ #

    def is_generation_path(self, path: str) -> bool:
        match = _CALL_PATH.match(path)
        return match is not None and match.group(3) in ("generateContent", "streamGenerateContent")

    async def route(self, request: Request, body: Any) -> Reply:
        if request.method == "POST" and (match := _CALL_PATH.match(request.path)):
            model, method = match.group(2).split("/", 1)[1], match.group(3)
            if method == "generateContent":
                return await self.generate(request, body, stream=False, model=model)
            if method == "streamGenerateContent":
                return await self.generate(request, body, stream=True, model=model)
            if method == "countTokens":
                return self._count_tokens(request)
        if request.method == "GET":
            if match := _LIST_PATH.match(request.path):
                return self._list(request, match.group(2))
            if match := _MODEL_PATH.match(request.path):
                return self._model(request, match.group(2))
        return self.error_response(ErrorReply(404, f"Method not found: {request.method} {request.path}"))

    def _list(self, request: Request, kind: str) -> Response:
        auth = self.auth_error(request)
        if auth is not None:
            return self.error_response(auth)
        if kind == "tunedModels":
            return json_response({})
        return json_response({"models": [_model_info(m) for m in self.models]})

    def _model(self, request: Request, model: str) -> Response:
        auth = self.auth_error(request)
        if auth is not None:
            return self.error_response(auth)
        if model not in self.models:
            return self.error_response(ErrorReply(404, f"models/{model} is not found for API version v1beta."))
        return json_response(_model_info(model))

    def _count_tokens(self, request: Request) -> Response:
        auth = self.auth_error(request)
        if auth is not None:
            return self.error_response(auth)
        tokens = self.request_tokens(request)
        return json_response({"totalTokens": tokens, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": tokens}]})

    # -- auth and validation --------------------------------------------------- #

    def auth_error(self, request: Request) -> ErrorReply | None:
        if self.expect_key is None:
            return None
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            message = (
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API."
            )
            return ErrorReply(403, message)
        if key != self.expect_key:
            details = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ]
            return ErrorReply(400, body=_error_body(400, "API key not valid. Please pass a valid API key.", details))
        return None

    def validate(self, body: Mapping[str, Any]) -> ErrorReply | None:
        contents = body.get("contents")
        if self.strict and (not isinstance(contents, list) or not contents):
            return ErrorReply(400, "* GenerateContentRequest.contents: contents is not specified\n")
        if not isinstance(contents, list):
            return None
        if self.check_signatures:
            problem = self._signature_problem(contents)
            if problem is not None:
                return problem
        if self.strict:
            return _function_response_problem(contents)
        return None

    def _signature_problem(self, contents: list[Any]) -> ErrorReply | None:
        for index, content in enumerate(contents):
            if not isinstance(content, dict) or content.get("role") != "model":
                continue
            calls = [p for p in content.get("parts") or () if isinstance(p, dict) and p.get("functionCall") is not None]
            for position, part in enumerate(calls):
                # Only the first of parallel calls was signed; a signature on any call must be its own.
                required = position == 0
                problem = self._check_signature(index, part["functionCall"], part.get("thoughtSignature"), required)
                if problem is not None:
                    return ErrorReply(400, problem)
        return None

    def _check_signature(self, index: int, call: Mapping[str, Any], signature: Any, required: bool) -> str | None:
        name = call.get("name")
        where = f"function call `{name}` in the {index + 1}. content block"
        if not signature:
            if not required:
                return None
            return f"Unable to submit request because {where} is missing a thought signature (`thought_signature`). {_SIGNATURE_DOCS}"
        raw = _decode_signature(signature)
        if raw in SKIP_SIGNATURE_VALUES:
            return None
        if raw is None or not self._signature_matches(raw, str(name), call.get("args") or {}):
            return f"Unable to submit request because the thought signature of {where} is not valid. {_SIGNATURE_DOCS}"
        return None

    def _sign(self, name: str, args: Mapping[str, Any]) -> bytes:
        # Unique (counter + random nonce) and bound to the exact call it was issued for.
        self._issued += 1
        nonce = self._issued.to_bytes(8, "big") + os.urandom(8)
        return _SIGNATURE_MAGIC + nonce + self._mac(nonce, name, args)

    def _signature_matches(self, raw: bytes, name: str, args: Mapping[str, Any]) -> bool:
        head = len(_SIGNATURE_MAGIC)
        if len(raw) != head + 16 + 32 or not raw.startswith(_SIGNATURE_MAGIC):
            return False
        nonce, mac = raw[head : head + 16], raw[head + 16 :]
        return hmac.compare_digest(mac, self._mac(nonce, name, args))

    def _mac(self, nonce: bytes, name: str, args: Mapping[str, Any]) -> bytes:
        message = nonce + name.encode() + b"\0" + _canonical(args).encode()
        return hmac.digest(self._signing_key, message, hashlib.sha256)

    def count_tool_results(self, body: Mapping[str, Any]) -> int:
        count = 0
        for content in body.get("contents") or ():
            if isinstance(content, dict):
                count += sum(1 for p in content.get("parts") or () if isinstance(p, dict) and "functionResponse" in p)
        return count

    def offers_tools(self, body: Mapping[str, Any]) -> bool:
        return any(isinstance(tool, dict) and tool.get("functionDeclarations") for tool in body.get("tools") or ())

    # -- answers ------------------------------------------------------------ #

    length_reason = "MAX_TOKENS"

    def output_limit(self, body: Mapping[str, Any]) -> Any:
        config = body.get("generationConfig") or {}
        return config.get("maxOutputTokens") if isinstance(config, dict) else None

    def stream_error_event(self) -> bytes:
        return sse(_error_body(503, _DEFAULT_MESSAGES[503]))

    def error_response(self, error: ErrorReply) -> Response:
        body = error.body
        if body is None:
            details = []
            if error.retry_after is not None:
                details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{error.retry_after:g}s"})
            message = error.message or _DEFAULT_MESSAGES.get(error.status, "Error.")
            body = _error_body(error.status, message, details)
        return json_response(body, error.status, error_headers(error))

    def answer(self, request: Request, body: Mapping[str, Any], turn: Turn, *, stream: bool, model: str) -> Reply:
        prompt = turn.input_tokens if turn.input_tokens is not None else self.request_tokens(request)
        output = self.output_tokens(turn)
        thoughts = 16 * len(turn.tool_calls)
        usage = _usage(prompt, output, thoughts)
        response_id = new_id("", 22)
        if turn.tool_calls and _calling_forbidden(body):
            # Told not to call, the model writes its answer instead.
            turn = dataclasses.replace(turn, tool_calls=(), text=turn.text or self.final_text, chunks=None)
        if turn.tool_calls and not body.get("tools"):
            answer = _response(None, "UNEXPECTED_TOOL_CALL", _usage(prompt, 0, thoughts), model, response_id)
            if not stream:
                return json_response(answer)
            return json_response([answer]) if request.query.get("alt") != "sse" else self.streaming(
                request, turn, [sse(answer)])
        finish = turn.finish_reason or "STOP"
        call_parts = [self._call_part(call.name, call.arguments_object(), call.id, signed=position == 0)
                      for position, call in enumerate(turn.tool_calls)]
        if not stream:
            parts = ([{"text": turn.full_text}] if turn.full_text or not call_parts else []) + call_parts
            return json_response(_response(parts, finish, usage, model, response_id))
        chunks = list(_stream_chunks(turn, call_parts, finish, usage, model, response_id))
        if request.query.get("alt") != "sse":
            # Without alt=sse the service streams one JSON array.
            return json_response(chunks)
        return self.streaming(request, turn, [sse(chunk) for chunk in chunks])

    def _call_part(self, name: str, args: dict[str, Any], call_id: str | None, *, signed: bool) -> dict[str, Any]:
        call: dict[str, Any] = {"name": name, "args": args}
        if call_id is not None:
            call["id"] = call_id
        if not signed:
            return {"functionCall": call}
        raw = self._sign(name, args)
        if self.record:
            self.signatures[raw] = (name, _canonical(args))
        return {"functionCall": call, "thoughtSignature": base64.b64encode(raw).decode("ascii")}


# --------------------------------------------------------------------------- #
# Wire format helpers
# --------------------------------------------------------------------------- #


def _calling_forbidden(body: Mapping[str, Any]) -> bool:
    config = body.get("toolConfig") or {}
    calling = config.get("functionCallingConfig") or {} if isinstance(config, dict) else {}
    return isinstance(calling, dict) and calling.get("mode") == "NONE"


def quota_exceeded(*, per_day: bool = True, model: str = "gemini-2.5-pro") -> ErrorReply:
    """Gemini's 429 for a spent quota: a daily one, or (`per_day=False`) a per-minute one."""
    quota_id = ("GenerateRequestsPerDayPerProjectPerModel-FreeTier" if per_day
                else "GenerateRequestsPerMinutePerProjectPerModel-FreeTier")
    details = [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": quota_id, "quotaDimensions": {"location": "global", "model": model},
            "quotaValue": "50" if per_day else "15"}]},
        {"@type": "type.googleapis.com/google.rpc.Help",
         "links": [{"description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "27s"},
    ]
    message = ("You exceeded your current quota, please check your plan and billing details. For more information "
               "on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.")
    return ErrorReply(429, body=_error_body(429, message, details))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _decode_signature(value: Any) -> bytes | None:
    """Bytes of a signature sent in either base64 alphabet (the SDK sends URL-safe)."""
    if not isinstance(value, str):
        return None
    text = value.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _error_body(status: int, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": status, "message": message, "status": _STATUS_NAMES.get(status, "UNKNOWN")}
    if details:
        error["details"] = details
    return {"error": error}


def _function_response_problem(contents: list[Any]) -> ErrorReply | None:
    """The real API refuses a function-call turn not answered part for part."""
    for index, content in enumerate(contents[:-1]):
        if not isinstance(content, dict) or content.get("role") != "model":
            continue
        calls = sum(1 for p in content.get("parts") or () if isinstance(p, dict) and "functionCall" in p)
        if not calls:
            continue
        following = contents[index + 1]
        parts = following.get("parts") or () if isinstance(following, dict) else ()
        responses = sum(1 for p in parts if isinstance(p, dict) and "functionResponse" in p)
        if responses != calls:
            return ErrorReply(
                400,
                "Please ensure that the number of function response parts is equal to the number of "
                "function call parts of the function call turn.",
            )
    return None


def _model_info(model: str) -> dict[str, Any]:
    return {
        "name": f"models/{model}",
        "version": "001",
        "displayName": model.replace("-", " ").title(),
        "description": f"Fake {model}",
        "inputTokenLimit": 1048576,
        "outputTokenLimit": 65536,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
        "temperature": 1,
        "topP": 0.95,
        "topK": 64,
        "thinking": True,
    }


def _usage(prompt: int, output: int, thoughts: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": output,
        "totalTokenCount": prompt + output + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def _response(
    parts: list[dict[str, Any]] | None,
    finish: str | None,
    usage: dict[str, Any],
    model: str,
    response_id: str,
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"index": 0}
    if parts is not None:
        candidate["content"] = {"parts": parts, "role": "model"}
    if finish is not None:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": response_id}


def _stream_chunks(
    turn: Turn,
    call_parts: list[dict[str, Any]],
    finish: str,
    usage: dict[str, Any],
    model: str,
    response_id: str,
) -> Iterator[dict[str, Any]]:
    """Text deltas one per chunk, all function calls in one chunk, usage totals on the last."""
    pieces: list[list[dict[str, Any]]] = [[{"text": d}] for d in turn.deltas()]
    if call_parts:
        pieces.append(call_parts)
    if not pieces:
        pieces.append([{"text": ""}])
    partial_usage = {"promptTokenCount": usage["promptTokenCount"], "totalTokenCount": usage["promptTokenCount"]}
    for position, parts in enumerate(pieces):
        last = position == len(pieces) - 1
        yield _response(parts, finish if last else None, usage if last else partial_usage, model, response_id)


if __name__ == "__main__":
    run_cli(GeminiFake)
