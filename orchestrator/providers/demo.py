"""An offline, deterministic model that shows the whole flow without an API key.

It reads the task, calls one tool when the task asks for something a tool does, and then answers
from the tool's result. Everything it writes says that it is the demo model.
"""

from __future__ import annotations

import json
import re

from ..context import FINAL_SUMMARY_HEADING
from . import LABELS
from .base import CHECK_TIMEOUT, DeltaCallback, Finish, ModelRequest, ModelResponse, ModelToolCall, Usage

LABEL = LABELS["demo"]
ARITHMETIC = re.compile(r"(?<![\w.])(\(?-?\d[\d.\s()+\-*/%^]*[+\-*/%^][\d.\s()+\-*/%^]*\d\)?)")


class DemoProvider:
    name = "demo"

    def label(self, model: str) -> str:
        return LABEL

    async def check(self, model: str, *, timeout: float = CHECK_TIMEOUT) -> str:
        return "The demo model runs inside Cortex: there is nothing to connect to, and any model name works."

    async def complete(self, request: ModelRequest, *, on_delta: DeltaCallback | None = None) -> ModelResponse:
        task, results = _task_and_results(request.messages)
        offered = {tool["name"] for tool in request.tools}
        if request.purpose == "final":
            text = _final_answer(task)
        elif results:
            text = _answer_from(results)
        else:
            call = _choose_call(task, offered)
            if call is not None:
                return ModelResponse(text="", tool_calls=[call], usage=_usage(request, 12),
                                     finish_reason=Finish.TOOL_CALLS)
            text = _introduction(task)
        if on_delta is not None:
            for piece in re.findall(r"\S+\s*", text):
                await on_delta(piece)
        return ModelResponse(text=text, usage=_usage(request, len(text.split())), finish_reason=Finish.STOP)


def _task_and_results(messages: list[dict]) -> tuple[str, list[dict]]:
    """The last thing the person asked, and the tool results that came after it."""
    task, results = "", []
    for message in messages:
        if message["role"] == "user":
            task, results = message.get("content") or "", []
        elif message["role"] == "tool":
            results.append(message)
    return task, results


def _choose_call(task: str, offered: set[str]) -> ModelToolCall | None:
    lowered = task.lower()
    if re.search(r"\b(time|date|clock|today|day is it)\b", lowered) and "current_time" in offered:
        return ModelToolCall(id="demo_call_1", name="current_time", arguments=json.dumps({"timezone": "UTC"}))
    expression = ARITHMETIC.search(task)
    if expression and "calculator" in offered:
        cleaned = expression.group(1).strip().replace("^", "**")
        return ModelToolCall(id="demo_call_1", name="calculator", arguments=json.dumps({"expression": cleaned}))
    note = re.search(r"\b(?:write|save|note)\b[^:]*:\s*(.+)", task, re.IGNORECASE | re.DOTALL)
    if note and "workspace_write" in offered:
        return ModelToolCall(id="demo_call_1", name="workspace_write",
                             arguments=json.dumps({"path": "notes/demo-note.txt", "content": note.group(1).strip()}))
    return None


def _answer_from(results: list[dict]) -> str:
    lines = [f"({LABEL}) Here is what the tools said:"]
    for result in results:
        outcome = "failed or was not allowed" if result.get("is_error") else "returned"
        lines.append(f"- `{result.get('name')}` {outcome}: {str(result.get('content'))[:500]}")
    return "\n".join(lines)


def _final_answer(brief: str) -> str:
    """The chat-role answer: the demo cannot write, so it hands over what the tool loop concluded."""
    _, _, summary = brief.partition(FINAL_SUMMARY_HEADING)
    summary = summary.split("\n\nWrite the final answer", 1)[0].strip()
    return f"**Final answer** ({LABEL}, as the chat model):\n\n{summary or 'Nothing to report.'}"


def _introduction(task: str) -> str:
    return (f"({LABEL}) I received your task ({len(task)} characters). I am the offline demo model: "
            "I don't understand language, but I can show how Cortex works. Try \"What time is it?\" "
            "(runs a low-risk tool), \"Calculate (2+3)*7\" (another), or \"Write a note: buy milk\" "
            "(a medium-risk tool that waits for your confirmation).")


def _usage(request: ModelRequest, output_tokens: int) -> Usage:
    size = len(request.system) + sum(len(str(m.get("content") or "")) for m in request.messages)
    return Usage(input_tokens=size // 4, output_tokens=output_tokens)
