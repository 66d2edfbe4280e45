"""The schedules in the JSON API, under /schedules, with the same Bearer tokens as /orchestrate."""

from __future__ import annotations

from datetime import UTC
from typing import Any, Literal

from django.http import HttpRequest
from ninja import Router, Schema
from ninja.responses import Status
from pydantic import ConfigDict, Field

from ..api import ERRORS, Detail, Text
from ..services import MAX_CONFIRMATION_TTL
from . import selectors, services
from .models import Schedule, ScheduleRun

router = Router(tags=["schedules"])

Risk = Literal["low", "medium", "high"]


class ScheduleIn(Schema):
    model_config = ConfigDict(extra="forbid")

    name: Text = Field(max_length=100)
    cron: Text = Field(description="Five fields: minute hour day-of-month month day-of-week.", max_length=200)
    time_zone: Text = Field("UTC", description="An IANA time zone such as Europe/Berlin.", max_length=64)
    task: Text = Field(description="What to do; {date}, {time} and {weekday} are filled in with the due time.")
    max_risk: Risk = Field("low", description="The highest tool risk its jobs are offered, on top of your policy.")
    enabled: bool = True
    persona: Text | None = None
    tier: int | None = Field(None, ge=1, le=3)
    chat_role: Text | None = Field(None, max_length=64)
    session_id: Text | None = Field(None, description="Continue this conversation each time.")
    respond_with_final: bool | None = Field(None, description="Have the chat-role model write the final answer.")
    respond_with_claude: bool | None = Field(None, description="Alias of respond_with_final.")
    include_long: bool | None = None
    include_mid: bool | None = None
    include_short: bool | None = None
    off_record: bool | None = None
    callback_url: Text | None = Field(
        None, max_length=500, description="Each job's JSON is POSTed here when it ends, signed with your callback "
                                          "secret, as for POST /orchestrate.")
    callback_on_confirmation: bool = Field(
        False, description="Also POST to callback_url when a job starts waiting for a confirmation.")
    confirmation_ttl: int | None = Field(
        None, ge=1, le=MAX_CONFIRMATION_TTL,
        description="Seconds a call of its jobs may wait for a confirmation before it is denied as expired; the "
                    "shorter of it and the site's or the tool's limit applies.")

    def options(self) -> dict[str, Any]:
        respond = self.respond_with_final if self.respond_with_final is not None else self.respond_with_claude
        return {"persona": self.persona, "tier": self.tier, "chat_role": self.chat_role,
                "session_id": self.session_id, "respond_with_final": respond, "include_long": self.include_long,
                "include_mid": self.include_mid, "include_short": self.include_short, "off_record": self.off_record}


class RunOut(Schema):
    id: int
    due_at: str
    fired_at: str
    late: bool
    missed: int
    manual: bool
    job_id: str | None
    error: str | None


class ScheduleOut(Schema):
    id: int
    name: str
    cron: str
    time_zone: str
    task: str
    max_risk: str
    enabled: bool
    options: dict[str, Any]
    callback_url: str | None
    callback_on_confirmation: bool
    confirmation_ttl: int | None
    next_run_at: str | None
    last_runs: list[RunOut]


def _run(run: ScheduleRun) -> dict[str, Any]:
    return {"id": run.pk, "due_at": run.due_at.astimezone(UTC).isoformat(),
            "fired_at": run.fired_at.astimezone(UTC).isoformat(), "late": run.late,
            "missed": run.missed, "manual": run.manual, "job_id": str(run.job_id) if run.job_id else None,
            "error": run.error or None}


def _schedule(schedule: Schedule) -> dict[str, Any]:
    return {"id": schedule.pk, "name": schedule.name, "cron": schedule.cron, "time_zone": schedule.time_zone,
            "task": schedule.task, "max_risk": schedule.max_risk, "enabled": schedule.enabled,
            "options": schedule.options, "callback_url": schedule.callback_url or None,
            "callback_on_confirmation": schedule.callback_on_confirmation,
            "confirmation_ttl": schedule.confirmation_ttl,
            "next_run_at": schedule.next_run_at.astimezone(UTC).isoformat() if schedule.next_run_at else None,
            "last_runs": [_run(run) for run in selectors.runs_of(schedule)]}


def _save(request: HttpRequest, payload: ScheduleIn, schedule_id: int | None = None) -> Schedule:
    return services.schedule_save(user=request.user, name=payload.name, cron_expression=payload.cron,
                                  time_zone=payload.time_zone, task=payload.task, options=payload.options(),
                                  max_risk=payload.max_risk, enabled=payload.enabled, schedule_id=schedule_id,
                                  callback_url=payload.callback_url,
                                  callback_on_confirmation=payload.callback_on_confirmation,
                                  confirmation_ttl=payload.confirmation_ttl)


@router.get("", response={200: list[ScheduleOut], **ERRORS}, summary="Your schedules")
def schedule_list(request: HttpRequest):
    return [_schedule(schedule) for schedule in selectors.schedules_for_user(request.user)]


@router.post("", response={201: ScheduleOut, 413: Detail, **ERRORS}, summary="Create a schedule")
def schedule_create(request: HttpRequest, payload: ScheduleIn):
    return Status(201, _schedule(_save(request, payload)))


@router.get("/{schedule_id}", response={200: ScheduleOut, **ERRORS}, summary="A schedule and its last runs")
def schedule_get(request: HttpRequest, schedule_id: int):
    return _schedule(selectors.schedule_for_user(request.user, schedule_id))


@router.put("/{schedule_id}", response={200: ScheduleOut, 413: Detail, **ERRORS}, summary="Replace a schedule")
def schedule_update(request: HttpRequest, schedule_id: int, payload: ScheduleIn):
    selectors.schedule_for_user(request.user, schedule_id)
    return _schedule(_save(request, payload, schedule_id))


@router.delete("/{schedule_id}", response={204: None, **ERRORS}, summary="Delete a schedule")
def schedule_delete(request: HttpRequest, schedule_id: int):
    services.schedule_delete(user=request.user, schedule_id=schedule_id)
    return Status(204, None)


@router.post("/{schedule_id}/run", response={202: RunOut, **ERRORS}, summary="Run a schedule now")
def schedule_run(request: HttpRequest, schedule_id: int):
    return Status(202, _run(services.schedule_run_now(user=request.user, schedule_id=schedule_id)))
