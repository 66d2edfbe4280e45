"""The sanitiser over arbitrary model output: whatever a provider hands over, what the engine keeps
is storable by every database, and every call either has arguments that are or a problem to report."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.engine import sanitise
from orchestrator.providers.base import ModelResponse, ModelToolCall, Usage

# Any code point, lone surrogates and NUL included.
TEXT = st.text(st.characters(codec=None), max_size=12)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                      max_leaves=12)
ARGUMENTS = st.one_of(VALUES, TEXT, VALUES.map(lambda v: json.dumps(v)), st.just('{"a": NaN}'),
                      st.just("[" * 5000 + "]" * 5000), st.just('{"timezone": "UTC"}'))
CALLS = st.builds(ModelToolCall, id=st.one_of(VALUES, st.text(max_size=300)),
                  name=st.one_of(VALUES, st.sampled_from(["current_time", "calculator", ""])),
                  arguments=ARGUMENTS, extra=VALUES)
RESPONSES = st.builds(ModelResponse, text=VALUES, tool_calls=st.lists(CALLS, max_size=8), extra=VALUES,
                      usage=st.builds(Usage, VALUES, VALUES), finish_reason=VALUES)


def assert_storable(value: Any) -> None:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            assert "\x00" not in item and not any("\ud800" <= ch <= "\udfff" for ch in item), repr(item)
        elif isinstance(item, float):
            assert math.isfinite(item)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        else:
            assert item is None or isinstance(item, bool | int), repr(item)


@settings(max_examples=200, deadline=None)
@given(response=RESPONSES, cap=st.integers(1, 8))
def test_whatever_a_model_answers_is_kept_storable_and_each_call_checked(response, cap):
    safe, checks = sanitise.model_response(response, max_calls=cap)

    message = safe.as_message()
    assert_storable(message)
    json.dumps(message, allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert isinstance(safe.text, str) and isinstance(safe.finish_reason, str)
    assert isinstance(safe.usage.input_tokens, int) and isinstance(safe.usage.output_tokens, int)
    assert len(checks) == len(safe.tool_calls) == len(response.tool_calls)
    for position, (call, check) in enumerate(zip(safe.tool_calls, checks)):
        assert call.id == "" or sanitise.CALL_ID.fullmatch(call.id)
        assert isinstance(call.name, str) and len(call.name) <= sanitise.MAX_NAME_CHARS
        assert isinstance(call.arguments, str)
        if position >= cap:
            assert check.problem is not None
        if check.problem is None:
            assert_storable(check.args)
            json.dumps(check.args, allow_nan=False)
        else:
            assert check.args is None and check.problem


def test_calls_past_the_cap_are_told_why_they_did_not_run():
    calls = [ModelToolCall(f"c{n}", "current_time", "{}") for n in range(5)]
    _, checks = sanitise.model_response(ModelResponse(text="", tool_calls=calls), max_calls=2)
    assert [check.problem is None for check in checks] == [True, True, False, False, False]
    assert checks[2].problem.startswith("this turn made 5 tool calls and at most 2 run per turn")


def test_a_plain_answer_is_kept_as_it_is():
    call = ModelToolCall("call_abc", "calculator", '{"expression": "6*7"}', {"signature": "c2ln"})
    response = ModelResponse(text="Working on it.", tool_calls=[call], usage=Usage(12, 7), finish_reason="tool_calls")
    safe, [check] = sanitise.model_response(response, max_calls=16)
    assert safe == response and check == sanitise.CheckedCall(args={"expression": "6*7"})
