"""What the job page and the confirmation inbox show, built the same way for the first render and for
the live stream, so a page that is reloaded looks exactly like one that was watched."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.paginator import Paginator
from django.utils import timezone

from . import selectors, timeline
from .delivery import selectors as delivery_selectors
from .forms import ArgumentsForm
from .models import Job, JobEvent, JobStatus, ToolCall, ToolCallStatus
from .tools.registry import Tool, registry

JOBS_PER_PAGE = 20
OUTCOME_FILTERS = [("", "All"), (JobStatus.AWAITING_CONFIRMATION, "Waiting for you"), (JobStatus.RUNNING, "Running"),
                   (JobStatus.QUEUED, "Queued"), (JobStatus.COMPLETE, "Complete"),
                   (selectors.COMPLETE_WITH_PROBLEMS, "Calls denied or failed"), (JobStatus.ERROR, "Error"),
                   (JobStatus.CANCELLED, "Cancelled")]
# Events after which the answer panel may read differently.
ANSWER_EVENTS = frozenset({"answer.delta", "answer.reset", "model.turn", "job.status"})
# How long a decided card keeps its place (in the inbox and on the job page), showing the decision, before the cards
# below move up: long enough that a second click meant for it cannot land on the next card.
DECIDED_CARD_SECONDS = 6


@dataclass
class Card:
    """One tool call that waits for a person, with the form to edit its arguments."""

    job: Job
    call: ToolCall
    tool: Tool | None
    form: ArgumentsForm | None

    @property
    def decided(self) -> bool:
        return self.call.status != ToolCallStatus.AWAITING


def card_for(job: Job, call: ToolCall, form: ArgumentsForm | None = None) -> Card:
    tool = registry.get(call.name)
    if form is None and tool is not None:
        form = ArgumentsForm(tool=tool, current=call.args, prefix=form_prefix(call))
    return Card(job=job, call=call, tool=tool, form=form)


def form_prefix(call: ToolCall) -> str:
    return f"call-{call.pk}"


def cards_for_calls(calls: Iterable[ToolCall]) -> list[Card]:
    return [card_for(call.job, call) for call in calls]


@dataclass
class Inbox:
    """The inbox: the calls that wait, and those decided in the last few seconds in their places."""

    calls: list[ToolCall]
    until: datetime | None  # when the first decided card leaves; None without one

    @property
    def signature(self) -> str:
        """What the page shows, for the stream to tell whether it changed: pks, decided ones marked."""
        return ",".join(f"{call.pk}{'' if call.status == ToolCallStatus.AWAITING else 'd'}" for call in self.calls)

    @property
    def cards(self) -> list[Card]:
        return cards_for_calls(self.calls)


def _decided_since() -> datetime:
    return timezone.now() - timedelta(seconds=DECIDED_CARD_SECONDS)


def _first_to_leave(calls: list[ToolCall], since: datetime) -> datetime | None:
    """When the first decided card among `calls` leaves; None without one."""
    decided = [call.decided_at or call.finished_at or since for call in calls
               if call.status != ToolCallStatus.AWAITING]
    return min(decided) + timedelta(seconds=DECIDED_CARD_SECONDS) if decided else None


def inbox_for(user: AbstractBaseUser) -> Inbox:
    since = _decided_since()
    calls = selectors.inbox_calls_for_user(user, decided_since=since)
    return Inbox(calls=calls, until=_first_to_leave(calls, since))


def cards_change_at(job: Job) -> datetime | None:
    """When the first of the job page's decided cards leaves; None without one."""
    since = _decided_since()
    return _first_to_leave(selectors.confirmation_calls_of_job(job, decided_since=since), since)


def state_context(job: Job, *, edit_forms: dict[int, ArgumentsForm] | None = None) -> dict[str, Any]:
    """The parts of the job page that show the job's current state rather than its history. Its
    decided cards keep their places for a few seconds, as in the inbox; `cards_change_at` says when
    the first of them leaves."""
    edit_forms = edit_forms or {}
    job.problem_calls = selectors.problem_call_count(job)  # what its badge says (see `outcome`)
    since = _decided_since()
    # A finished job waits for nobody: no card, not even one decided a moment ago.
    calls = [] if job.is_finished else selectors.confirmation_calls_of_job(job, decided_since=since)
    answer, streaming = job.response or "", False
    if not answer and not job.is_finished:
        answer = selectors.job_answer_deltas(job)
        streaming = bool(answer)
    return {
        "job": job,
        "cards": [card_for(job, call, edit_forms.get(call.pk)) for call in calls],
        "cards_change_at": _first_to_leave(calls, since),
        "answer": answer,
        "streaming": streaming,
    }


def page_context(job: Job, events: Sequence[timeline.Step], **state: Any) -> dict[str, Any]:
    """The whole job page: its history up to a cursor, and its state.

    `job` must have been read after `events`, so the state shown is never older than the history.
    """
    return {
        **state_context(job, **state),
        "deliveries": list(delivery_selectors.deliveries_for_job(job.user, job)),
        "timeline": timeline.entries(events),
        "cursor": events[-1].seq if events else 0,
    }


def job_list_context(user: AbstractBaseUser, *, status: str, page_number: Any) -> dict[str, Any]:
    """The job list as filtered (by outcome, under the name `status` the addresses have always
    used) and paged, with each filter's count, and a signature of all of it that changes when
    anything the list shows changes: the stream sends the list again only then."""
    if status not in selectors.OUTCOMES:
        status = ""
    jobs = selectors.jobs_for_user(user, outcome=status or None).select_related("session")
    page = Paginator(jobs, JOBS_PER_PAGE).get_page(page_number)
    counts = selectors.job_outcome_counts(user)
    filters = [{"value": value, "label": label, "count": counts.get(value, 0) if value else sum(counts.values()),
                "current": value == status} for value, label in OUTCOME_FILTERS]
    shown = [status, page.number, page.paginator.num_pages, [f["count"] for f in filters],
             [(str(job.id), job.status, job.problem_calls) for job in page]]
    signature = hashlib.blake2b(repr(shown).encode(), digest_size=8).hexdigest()
    return {"page": page, "status": status, "filters": filters, "list_signature": signature}
