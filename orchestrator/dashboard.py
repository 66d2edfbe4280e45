"""The activity dashboard's figures: jobs per day by outcome, tokens per day by model, tool calls by
tool and decision, and how long confirmations waited. Every figure is about the jobs submitted in
the period (by `Job.created_at`, in the current time zone) or about the tool calls made in it (by
`ToolCall.created_at`), and is aggregated in the database over the jobs and calls of the
person's `selectors.activity_scope`; this module never widens that scope. A day whose figures can
no longer change is counted once and stored (`ActivityDay`), so a long period reads a row per day
rather than every job."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, transaction
from django.db.models import Case, CharField, Count, F, FloatField, Func, Q, QuerySet, Sum, UUIDField, Value, When
from django.db.models.functions import TruncDate
from django.utils import timezone

from . import selectors
from .models import ACTIVE_STATUSES, FINISHED_STATUSES, ActivityDay, Job, JobStatus, ToolCall, ToolCallStatus
from .selectors import COMPLETE_WITH_PROBLEMS

logger = logging.getLogger(__name__)

PERIODS = (7, 30, 90)
DEFAULT_PERIOD = 30

# The outcomes of a finished job, as the badges show them.
JOB_OUTCOMES = (
    (JobStatus.COMPLETE, "Complete"),
    (COMPLETE_WITH_PROBLEMS, "Complete, calls denied or failed"),
    (JobStatus.ERROR, "Error"),
    (JobStatus.CANCELLED, "Cancelled"),
)

# What became of a tool call.
RAN = "ran"
APPROVED = "approved"
EDITED = "edited"
DENIED = "denied"
EXPIRED = "expired"
REFUSED_OR_FAILED = "refused_or_failed"
UNDECIDED = "undecided"
CALL_DECISIONS = (
    (RAN, "Ran without asking"),
    (APPROVED, "Approved"),
    (EDITED, "Edited, then approved"),
    (DENIED, "Denied"),
    (EXPIRED, "Expired (nobody decided)"),
    (REFUSED_OR_FAILED, "Refused or failed"),
    (UNDECIDED, "Not decided"),
)
# The stylesheet's series colour of each: green for approved, amber for edited, red for denied,
# dark red for expired.
CALL_DECISION_COLOURS = (4, 0, 1, 2, 6, 3, 5)


def parse_period(value: Any) -> int:
    """The period in days a GET parameter asks for; anything else is the default."""
    try:
        days = int(value)
    except (TypeError, ValueError):
        return DEFAULT_PERIOD
    return days if days in PERIODS else DEFAULT_PERIOD


@dataclass(frozen=True)
class Period:
    days: int
    first_day: dt.date
    start: dt.datetime  # the first day's midnight, in the current time zone

    @classmethod
    def ending_today(cls, days: int, *, now: dt.datetime | None = None) -> Period:
        today = timezone.localdate(now or timezone.now())
        first_day = today - dt.timedelta(days=days - 1)
        return cls(days=days, first_day=first_day, start=cls.midnight(first_day))

    @staticmethod
    def midnight(date: dt.date) -> dt.datetime:
        """The moment `date` begins in the current time zone."""
        return timezone.make_aware(dt.datetime.combine(date, dt.time()))

    def within(self, dates: list[dt.date], field: str) -> Q:
        """`field`'s moment falls on one of `dates`, days in order: one range per run of days."""
        runs: list[list[dt.date]] = []
        for date in dates:
            if runs and runs[-1][1] + dt.timedelta(days=1) == date:
                runs[-1][1] = date
            else:
                runs.append([date, date])
        ranges = Q()
        for first, last in runs:
            ranges |= Q(**{f"{field}__gte": self.midnight(first),
                           f"{field}__lt": self.midnight(last + dt.timedelta(days=1))})
        return ranges

    @property
    def dates(self) -> list[dt.date]:
        return [self.first_day + dt.timedelta(days=n) for n in range(self.days)]

    def fixed_utc_offset(self) -> dt.timedelta | None:
        """The current time zone's offset from UTC when it is the same all through the period
        (always, in UTC), else None."""
        zone = timezone.get_current_timezone()
        offsets = {zone.utcoffset(dt.datetime.combine(day, dt.time()))
                   for day in [*self.dates, self.first_day + dt.timedelta(days=self.days)]}
        return offsets.pop() if len(offsets) == 1 else None


class LocalDate(TruncDate):
    """`TruncDate` in the current time zone. On SQLite Django computes that with a Python function
    called for every row, far too slow for 100,000 jobs; when the zone's offset does not change in
    the period (always in UTC, the default), SQLite's own `date()` shifted by the offset gives the
    same day. In UTC it is the stored text's first ten characters (`YYYY-MM-DD`), which costs
    less than parsing every timestamp."""

    def __init__(self, expression: Any, *, fixed_offset: dt.timedelta | None, **extra: Any) -> None:
        self.fixed_offset = fixed_offset
        super().__init__(expression, **extra)

    def as_sqlite(self, compiler: Any, connection: Any, **extra_context: Any) -> tuple[str, list[Any]]:
        if self.fixed_offset is None:
            return super().as_sql(compiler, connection, **extra_context)
        sql, params = compiler.compile(self.lhs)
        if not self.fixed_offset:
            return f"substr({sql}, 1, 10)", params
        return f"date({sql}, %s)", [*params, f"{int(self.fixed_offset.total_seconds()):+d} seconds"]


class NotForIndex(Func):
    """A column as it is, but one SQLite's planner will not pick an index for. Without statistics it
    guesses: grouped by `status`, it would walk the whole status index, a row lookup for each job,
    rather than the period's slice of the covering `job_activity` index."""

    template = "%(expressions)s"

    def __init__(self, column: str, **extra: Any) -> None:
        super().__init__(F(column), **extra)

    def as_sqlite(self, compiler: Any, connection: Any, **extra_context: Any) -> tuple[str, list[Any]]:
        return self.as_sql(compiler, connection, template="+%(expressions)s", **extra_context)


@dataclass
class Activity:
    period: Period
    jobs_by_day: dict[dt.date, dict[str, int]]
    tokens_by_day: dict[dt.date, dict[str, int]]
    models: list[str]
    calls_by_tool: dict[str, dict[str, int]]
    median_wait: dt.timedelta | None
    decided_confirmations: int
    totals: dict[str, int] = field(default_factory=dict)


# A day's figures are stored once it ended this long ago: a job stamped just before midnight may
# commit after it, and another process's clock may be a little behind.
SETTLE_MARGIN = dt.timedelta(hours=1)


@dataclass
class DayFigures:
    """A day's jobs: the finished ones by outcome, their tokens by model, and the ids of those that
    had not finished when the day was counted (`pending`), whose figures are read afresh."""

    jobs: dict[str, int]
    tokens: dict[str, int]
    pending: list[str]

    def settle(self, finished: dict[str, tuple[str, str, int]]) -> bool:
        """Count the pending jobs that have finished since (outcome, model and tokens by id) with the
        finished ones; whether there were any."""
        done = [job for job in self.pending if job in finished]
        for job in done:
            outcome, model, tokens = finished[job]
            self.jobs[outcome] += 1
            if tokens:
                self.tokens[model] = self.tokens.get(model, 0) + tokens
        self.pending = [job for job in self.pending if job not in finished]
        return bool(done)


def jobs_and_tokens_by_day(scope: selectors.ActivityScope, period: Period, *, now: dt.datetime
                           ) -> tuple[dict[dt.date, dict[str, int]], dict[dt.date, dict[str, int]], list[str]]:
    """Jobs by day and outcome, and tokens by day and model.

    A day that has ended is counted from its jobs once (`count_days`) and its figures are stored
    (`ActivityDay`); after that they are read back, and only the day's jobs that were still running
    or waiting then are looked at again (`pending_jobs`). Today is always counted.

    Tokens are input plus output (`Job.tokens`, from `Job.usage`) of every job, whatever its
    outcome, by the job's orchestrator model (usage is recorded per job, not per model, so a chat
    model's answer counts under the job's orchestrator model). Models with the most tokens first."""
    zone = timezone.get_current_timezone_name()
    stored = {row.day: row for row in scope.days.filter(zone=zone, day__gte=period.first_day,
                                                        day__lte=period.dates[-1])}
    figures = {date: DayFigures(row.jobs, row.tokens, row.pending) for date, row in stored.items()}
    counted = count_days(scope, period, [date for date in period.dates if date not in stored])
    figures.update(counted)
    finished, unfinished = pending_jobs(scope, period, [job for day in figures.values() for job in day.pending])
    changed = {date for date, day in figures.items() if day.settle(finished)}
    _store(scope, zone, new={date: day for date, day in counted.items()
                             if period.midnight(date + dt.timedelta(days=1)) + SETTLE_MARGIN <= now},
           changed=[row for date, row in stored.items() if date in changed], figures=figures)

    by_outcome = {date: {outcome: figures[date].jobs.get(outcome, 0) for outcome, _ in JOB_OUTCOMES}
                  for date in period.dates}
    tokens_by_day = {date: dict(day.tokens) for date, day in figures.items()}
    for date, day in figures.items():
        for model, tokens in (unfinished[job] for job in day.pending if job in unfinished):
            tokens_by_day[date][model] = tokens_by_day[date].get(model, 0) + tokens
    per_model: dict[str, int] = {}
    for tokens in tokens_by_day.values():
        for model, number in tokens.items():
            per_model[model] = per_model.get(model, 0) + number
    models = sorted((model for model, number in per_model.items() if number),
                    key=lambda model: (-per_model[model], model))
    return by_outcome, {date: {model: tokens_by_day[date].get(model, 0) for model in models}
                        for date in period.dates}, models


def count_days(scope: selectors.ActivityScope, period: Period, dates: list[dt.date]) -> dict[dt.date, DayFigures]:
    """The figures of `dates` (days of `period`) counted from their jobs, in one statement, so that
    each job is either finished (and counted) or pending, never both nor neither.

    A complete job with any call that ended in an error (`ToolCall.is_error`: denied, refused,
    failed, interrupted) is COMPLETE_WITH_PROBLEMS; those are found from the error calls (a few)
    rather than with a subquery per job."""
    if not dates:
        return {}
    fixed_offset = period.fixed_utc_offset()
    figures = {date: DayFigures({outcome: 0 for outcome, _ in JOB_OUTCOMES}, {}, []) for date in dates}
    rows = (scope.jobs.filter(period.within(dates, "created_at")).order_by()
            .annotate(day=LocalDate("created_at", fixed_offset=fixed_offset), outcome=NotForIndex("status"),
                      pending=Case(When(status__in=FINISHED_STATUSES, then=Value(None)), default=F("pk"),
                                   output_field=UUIDField()))
            .values("day", "outcome", "orchestrator_model", "pending")
            .annotate(number=Count("pk"), tokens=Sum("tokens"))
            .values_list("day", "outcome", "orchestrator_model", "pending", "number", "tokens"))
    for date, status, model, pending, number, tokens in rows:
        if (day := figures.get(date)) is None:
            continue
        if pending:
            day.pending.append(str(pending))
            continue
        day.jobs[status] += number
        if tokens:
            day.tokens[model] = day.tokens.get(model, 0) + tokens
    pending = {job for day in figures.values() for job in day.pending}
    # The database starts from the error calls (index `tool_call_errors`), not from every complete job.
    troubled = (scope.calls.filter(period.within(dates, "job__created_at"), is_error=True).order_by()
                .annotate(day=LocalDate("job__created_at", fixed_offset=fixed_offset))
                .values_list("day", "job_id", "job__status").distinct())
    for date, job, status in troubled:
        if (day := figures.get(date)) is not None and status == JobStatus.COMPLETE and str(job) not in pending:
            day.jobs[JobStatus.COMPLETE] -= 1
            day.jobs[COMPLETE_WITH_PROBLEMS] += 1
    return figures


def pending_jobs(scope: selectors.ActivityScope, period: Period, ids: list[str]
                 ) -> tuple[dict[str, tuple[str, str, int]], dict[str, tuple[str, int]]]:
    """Of the jobs `ids` (submitted in `period`), those finished by now (their outcome, model and
    tokens) and the others (their model and tokens so far). A deleted one is in neither.

    The period's unfinished jobs are few and indexed by status, so they are read whole; only the
    pending jobs not among them, which have finished since they were last looked at (and are then
    counted in for good), are read by id."""
    if not ids:
        return {}, {}
    wanted = set(ids)
    unfinished = {str(pk): (model, tokens or 0) for pk, model, tokens in
                  scope.jobs.filter(status__in=ACTIVE_STATUSES, created_at__gte=period.start)
                  .values_list("pk", "orchestrator_model", "tokens") if str(pk) in wanted}
    finished: dict[str, tuple[str, str, int]] = {}
    rest = [job for job in ids if job not in unfinished]
    for chunk in (rest[start:start + 500] for start in range(0, len(rest), 500)):
        rows = [row for row in scope.jobs.filter(pk__in=chunk).values_list("pk", "status", "orchestrator_model", "tokens")
                if row[1] in FINISHED_STATUSES]
        troubled = set(scope.calls.filter(job_id__in=[pk for pk, *_ in rows], is_error=True)
                       .values_list("job_id", flat=True))
        for pk, status, model, tokens in rows:
            outcome = COMPLETE_WITH_PROBLEMS if status == JobStatus.COMPLETE and pk in troubled else status
            finished[str(pk)] = (outcome, model, tokens or 0)
    return finished, unfinished


def _store(scope: selectors.ActivityScope, zone: str, *, new: dict[dt.date, DayFigures],
           changed: list[ActivityDay], figures: dict[dt.date, DayFigures]) -> None:
    """Store the figures of days counted for the first time, and of stored days whose pending jobs
    have finished since. Two requests storing the same day store the same figures; a day not
    stored (the database busy) is counted again the next time, so a failure here costs time, not
    the page."""
    for row in changed:
        day = figures[row.day]
        row.jobs, row.tokens, row.pending = day.jobs, day.tokens, day.pending
    if not new and not changed:
        return
    try:
        with transaction.atomic():
            ActivityDay.objects.bulk_create(
                [ActivityDay(zone=zone, owner=scope.owner, day=date, jobs=day.jobs, tokens=day.tokens,
                             pending=day.pending) for date, day in new.items()], ignore_conflicts=True)
            ActivityDay.objects.bulk_update(changed, ["jobs", "tokens", "pending"])
    except DatabaseError:
        logger.warning("the activity of %d days was not stored", len(new) + len(changed), exc_info=True)


def forget_days_of(sender: type[Job], instance: Job, **kwargs: Any) -> None:
    """When a job is deleted (`post_delete`), the stored figures of every day it may belong to, in any
    time zone and scope, no longer hold: they are counted again the next time."""
    utc_day = instance.created_at.astimezone(dt.UTC).date()
    ActivityDay.objects.filter(day__range=(utc_day - dt.timedelta(days=1), utc_day + dt.timedelta(days=1))).delete()


def _call_decision() -> Case:
    """What became of a call, from its fields: the person's `decision` first (a denial by nobody is
    the system's, when the call waited past its deadline: `services.confirmation_expire`), then the
    policy's `verdict` and the call's `status`."""
    return Case(
        When(decision=ToolCall.Decision.DENIED, decided_by__isnull=True, then=Value(EXPIRED)),
        When(decision=ToolCall.Decision.DENIED, then=Value(DENIED)),
        When(Q(verdict=ToolCall.Verdict.REFUSE) | Q(status__in=(ToolCallStatus.REFUSED, ToolCallStatus.FAILED)),
             then=Value(REFUSED_OR_FAILED)),
        When(decision=ToolCall.Decision.EDITED, then=Value(EDITED)),
        When(decision=ToolCall.Decision.APPROVED, then=Value(APPROVED)),
        When(verdict=ToolCall.Verdict.RUN, then=Value(RAN)),
        default=Value(UNDECIDED),
        output_field=CharField(),
    )


def _decided_confirmation() -> Q:
    return Q(verdict=ToolCall.Verdict.ASK, decided_at__isnull=False)


def calls_by_tool(calls: QuerySet[ToolCall], period: Period) -> tuple[dict[str, dict[str, int]], int]:
    """The calls made in the period by tool name and what became of them (see `_call_decision`),
    tools with the most calls first; and, from the same pass, how many of them were confirmations
    that were decided. A call approved or ran that then failed counts as failed."""
    # The period's slice of the covering index `tool_call_activity`, without a look at the jobs.
    rows = (calls.filter(created_at__gte=period.start).order_by()
            .annotate(decided=_call_decision())
            .values("name", "decided").annotate(number=Count("pk"), waited=Count("pk", filter=_decided_confirmation()))
            .values_list("name", "decided", "number", "waited"))
    by_tool: dict[str, dict[str, int]] = {}
    confirmations = 0
    for name, decided, number, waited in rows:
        by_tool.setdefault(name, {key: 0 for key, _ in CALL_DECISIONS})[decided] += number
        confirmations += waited
    return dict(sorted(by_tool.items(), key=lambda item: (-sum(item[1].values()), item[0]))), confirmations


class SecondsBetween(Func):
    """`end - start` in seconds, as a float computed by the database itself (Django's own
    subtraction calls a Python function per row on SQLite)."""

    output_field = FloatField()

    def as_sqlite(self, compiler: Any, connection: Any, **extra_context: Any) -> tuple[str, list[Any]]:
        return self.as_sql(compiler, connection, template="((julianday(%(expressions)s)) * 86400.0)",
                           arg_joiner=") - julianday(", **extra_context)

    def as_postgresql(self, compiler: Any, connection: Any, **extra_context: Any) -> tuple[str, list[Any]]:
        return self.as_sql(compiler, connection, template="EXTRACT(EPOCH FROM (%(expressions)s))::float",
                           arg_joiner=" - ", **extra_context)


def median_confirmation_wait(calls: QuerySet[ToolCall], period: Period, *, decided: int) -> dt.timedelta | None:
    """The median time a confirmation waited, among the `decided` ones (see `calls_by_tool`).

    A call the policy asks about is recorded with status `awaiting` when the model makes it, so
    its `created_at` is when it started waiting; `decided_at` is when the person approved, edited
    or denied it, or when it expired. The decided calls made in the period count. The median is found
    in the database (index `tool_call_decided`): the waits in order, of which only the middle one
    (or two) are read."""
    if not decided:
        return None
    middle = list(calls.filter(_decided_confirmation(), created_at__gte=period.start)
                  .annotate(wait=SecondsBetween("decided_at", "created_at")).order_by("wait")
                  .values_list("wait", flat=True)[(decided - 1) // 2: decided // 2 + 1])
    return dt.timedelta(seconds=round(sum(middle) / len(middle), 3))


def activity(scope: selectors.ActivityScope, *, days: int, now: dt.datetime | None = None) -> Activity:
    now = now or timezone.now()
    period = Period.ending_today(days, now=now)
    by_day, tokens, models = jobs_and_tokens_by_day(scope, period, now=now)
    by_tool, decided = calls_by_tool(scope.calls, period)
    median_wait = median_confirmation_wait(scope.calls, period, decided=decided)
    totals = {outcome: sum(day[outcome] for day in by_day.values()) for outcome, _ in JOB_OUTCOMES}
    totals["jobs"] = sum(totals.values())
    totals["tokens"] = sum(sum(day.values()) for day in tokens.values())
    totals["calls"] = sum(sum(tool.values()) for tool in by_tool.values())
    return Activity(period=period, jobs_by_day=by_day, tokens_by_day=tokens, models=models,
                    calls_by_tool=by_tool, median_wait=median_wait, decided_confirmations=decided,
                    totals=totals)


def csv_rows(data: Activity) -> list[list[Any]]:
    """Every figure of the page as rows of one CSV file, the first row naming the columns."""
    rows: list[list[Any]] = [["series", "day", "name", "category", "value"]]
    for date, outcomes in data.jobs_by_day.items():
        rows.extend(["jobs", date.isoformat(), "", outcome, number] for outcome, number in outcomes.items())
    for date, by_model in data.tokens_by_day.items():
        rows.extend(["tokens", date.isoformat(), model, "input_and_output", number]
                    for model, number in by_model.items())
    for name, decisions in data.calls_by_tool.items():
        rows.extend(["tool_calls", "", name, decided, number] for decided, number in decisions.items())
    if data.median_wait is not None:
        rows.append(["confirmation_wait", "", "", "median_seconds", round(data.median_wait.total_seconds(), 3)])
    rows.append(["confirmation_wait", "", "", "decided", data.decided_confirmations])
    return rows
