"""What the job page and the confirmation inbox show, built the same way for the first render and for
the live stream, so a page that is reloaded looks exactly like one that was watched."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import selectors
from .forms import ArgumentsForm
from .models import Job, JobEvent, ToolCall
from .tools.registry import Tool, registry

# Streamed answer text updates the answer panel; it is not a step worth a timeline entry.
NOT_IN_TIMELINE = frozenset({"answer.delta", "answer.reset"})
# Events after which the answer panel may read differently.
ANSWER_EVENTS = frozenset({"answer.delta", "answer.reset", "model.turn", "job.status"})


@dataclass
class Card:
    """One tool call that waits for a person, with the form to edit its arguments."""

    job: Job
    call: ToolCall
    tool: Tool | None
    form: ArgumentsForm | None


def card_for(job: Job, call: ToolCall, form: ArgumentsForm | None = None) -> Card:
    tool = registry.get(call.name)
    if form is None and tool is not None:
        form = ArgumentsForm(tool=tool, current=call.args, prefix=form_prefix(call))
    return Card(job=job, call=call, tool=tool, form=form)


def form_prefix(call: ToolCall) -> str:
    return f"call-{call.pk}"


def cards_for_calls(calls: Iterable[ToolCall]) -> list[Card]:
    return [card_for(call.job, call) for call in calls]


def state_context(job: Job, *, edit_forms: dict[int, ArgumentsForm] | None = None) -> dict[str, Any]:
    """The parts of the job page that show the job's current state rather than its history."""
    edit_forms = edit_forms or {}
    calls = selectors.awaiting_calls_of_job(job)
    answer, streaming = job.response or "", False
    if not answer and not job.is_finished:
        answer = selectors.job_answer_deltas(job)
        streaming = bool(answer)
    return {
        "job": job,
        "cards": [card_for(job, call, edit_forms.get(call.pk)) for call in calls],
        "answer": answer,
        "streaming": streaming,
    }


def page_context(job: Job, events: list[JobEvent], **state: Any) -> dict[str, Any]:
    """The whole job page: its history up to a cursor, and its state.

    `job` must have been read after `events`, so the state shown is never older than the history.
    """
    return {
        **state_context(job, **state),
        "timeline": [event for event in events if event.type not in NOT_IN_TIMELINE],
        "cursor": events[-1].seq if events else 0,
    }
