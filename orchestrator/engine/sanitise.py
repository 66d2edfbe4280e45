"""Model output made safe to store and to act on, whatever a provider hands over.

A model (or a misbehaving server in front of one) can answer with anything JSON can carry and some
things it cannot: NaN, numbers too large for a float, lone surrogates, NUL characters (PostgreSQL
refuses them in text and jsonb), absurd nesting, a number where a name should be, an object where
the arguments string should be, ids of any length, any number of calls. Every value here becomes
text every database accepts, and every call that cannot be run gets a problem the model can read
as its result; the engine records it and asks the model again. Pure functions, no Django.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from typing import Any

from ..providers.base import ModelResponse, ModelToolCall, Usage

# What a call id may look like when it is kept: the providers' own ids are short and plain; any
# other is replaced with one of ours (an id only has to match a call to its result).
CALL_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_NAME_CHARS = 200  # ToolCall.name
# Above the largest argument a built-in tool accepts (a 1 MiB file), with room for JSON escapes.
MAX_ARGUMENT_CHARS = 3_000_000
MAX_ARGUMENT_DEPTH = 64
MAX_FINISH_REASON_CHARS = 100
MAX_TOKENS = 2**53  # usage counts beyond this are nonsense, and JSON readers lose precision there

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# What `unstorable_json` finds, as phrases that follow "contains".
NOT_STORABLE = "a NUL character or an unpaired surrogate"
TOO_DEEP = f"nesting deeper than {MAX_ARGUMENT_DEPTH} levels"
NOT_FINITE = "a number too large to represent"


@dataclass(frozen=True)
class CheckedCall:
    """A call's arguments as parsed, or why the call cannot run."""

    args: Any = None
    problem: str | None = None


def storable(text: str) -> str:
    """`text` without what a database refuses: NUL and unpaired surrogates become U+FFFD."""
    return _UNSTORABLE.sub("\ufffd", text) if _UNSTORABLE.search(text) else text


def as_text(value: Any) -> str:
    """Message content as text: a list of content parts is joined, anything else written as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, list):
        return "".join(_part_text(part) for part in value)
    return storable(_dumps(value))


def _part_text(part: Any) -> str:
    if isinstance(part, dict) and isinstance(part.get("text"), str):
        return storable(part["text"])
    # Written out rather than walked: a part may be nested deeper than the stack goes.
    return storable(part) if isinstance(part, str) else storable(_dumps(part))


def _dumps(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (ValueError, TypeError, RecursionError):
        return f"<unreadable {type(value).__name__}>"


def model_response(response: ModelResponse, *, max_calls: int) -> tuple[ModelResponse, list[CheckedCall]]:
    """A copy of `response` that is safe to store, and for each of its calls the parsed arguments
    or the problem that keeps it from running (the calls past `max_calls` among them)."""
    calls: list[ModelToolCall] = []
    checks: list[CheckedCall] = []
    raw_calls = response.tool_calls if isinstance(response.tool_calls, list) else []
    for position, call in enumerate(raw_calls):
        safe, check = _call(call)
        if check.problem is None and position >= max_calls:
            check = CheckedCall(problem=(
                f"this turn made {len(raw_calls)} tool calls and at most {max_calls} run per turn, so this "
                f"one did not run. Make at most {max_calls} calls at a time."))
        calls.append(safe)
        checks.append(check)
    safe = replace(response, text=as_text(response.text), tool_calls=calls, extra=_extra(response.extra),
                   usage=Usage(_tokens(response.usage, "input_tokens"), _tokens(response.usage, "output_tokens")),
                   finish_reason=storable(str(response.finish_reason or ""))[:MAX_FINISH_REASON_CHARS],
                   raw_finish_reason=storable(str(response.raw_finish_reason or ""))[:MAX_FINISH_REASON_CHARS])
    return safe, checks


def _call(call: Any) -> tuple[ModelToolCall, CheckedCall]:
    if not isinstance(call, ModelToolCall):
        return ModelToolCall("", "", "{}"), CheckedCall(problem="the tool call could not be read")
    call_id = call.id if isinstance(call.id, str) and CALL_ID.fullmatch(call.id) else ""  # "": ours is given
    name = call.name if isinstance(call.name, str) else _dumps(call.name)
    arguments, check = _arguments(call.arguments)
    safe = ModelToolCall(call_id, storable(name)[:MAX_NAME_CHARS], arguments, _extra(call.extra))
    return safe, check


def _arguments(value: Any) -> tuple[str, CheckedCall]:
    """The arguments as stored and replayed, and what they parse to (or why they cannot run)."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        # Some servers send the arguments as an object rather than the JSON text of one.
        try:
            value = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (ValueError, TypeError, RecursionError):
            return "{}", CheckedCall(problem="the arguments are not a JSON object (numbers must be finite)")
    if len(value) > MAX_ARGUMENT_CHARS:
        return "{}", CheckedCall(problem=(f"the arguments are {len(value)} characters long; "
                                          f"the limit is {MAX_ARGUMENT_CHARS}"))
    return storable(value), parse_arguments(value)


def parse_arguments(text: str) -> CheckedCall:
    """Arguments as JSON that every database stores as written, else the problem with them."""
    if not text.strip():
        return CheckedCall(args={})
    try:
        parsed = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        return CheckedCall(problem=f"the arguments are not valid JSON ({error.msg} at position {error.pos})")
    except RecursionError:
        return CheckedCall(problem=f"the arguments contain {TOO_DEEP}")
    except ValueError as error:  # NaN or Infinity, or an integer of thousands of digits
        return CheckedCall(problem=f"the arguments are not valid JSON ({error})")
    problem = unstorable_json(parsed)
    return CheckedCall(problem=f"the arguments contain {problem}") if problem else CheckedCall(args=parsed)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def unstorable_json(value: Any) -> str | None:
    """What in a parsed JSON value keeps a database from storing it as it is (NOT_STORABLE,
    TOO_DEEP or NOT_FINITE), if anything does. Iterative: no nesting can exhaust the stack."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_ARGUMENT_DEPTH:
            return TOO_DEEP
        if isinstance(item, dict):
            for key, inner in item.items():
                if _UNSTORABLE.search(key):
                    return NOT_STORABLE
                pending.append((inner, depth + 1))
        elif isinstance(item, list):
            pending.extend((inner, depth + 1) for inner in item)
        elif isinstance(item, str):
            if _UNSTORABLE.search(item):
                return NOT_STORABLE
        elif isinstance(item, float) and not math.isfinite(item):
            return NOT_FINITE
    return None


def _extra(value: Any) -> dict[str, Any]:
    """What a provider keeps with a message to replay it: kept if it can be stored as it is."""
    if not isinstance(value, dict) or not value:
        return {}
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return {}
    return value if unstorable_json(value) is None else {}


def _tokens(usage: Any, name: str) -> int:
    value = getattr(usage, name, 0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if isinstance(value, float) and not math.isfinite(value):
        return 0
    return min(max(int(value), 0), MAX_TOKENS)
