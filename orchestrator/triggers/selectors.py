"""Reads of schedules and hooks, scoped to their owner: another person's is a 404."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet
from django.http import Http404

from .. import selectors as core_selectors
from ..policy import Decision, decide_all
from ..tools.registry import registry
from .models import Hook, HookDelivery, Schedule, ScheduleRun

RECENT_RUNS = 10
RECENT_DELIVERIES = 50


def offered_under(user: AbstractBaseUser, max_risk: str) -> list[Decision]:
    """What a job of this owner started under this ceiling is offered: the very decisions the engine
    makes for it (`policy.decide` with the origin's ceiling), for the page to show."""
    context = replace(core_selectors.policy_context_for_user(user), origin_max_risk=max_risk)
    return [decision for decision in decide_all(list(registry), context) if decision.offered]


def schedules_for_user(user: AbstractBaseUser) -> QuerySet[Schedule]:
    return Schedule.objects.filter(user=user)


def schedule_for_user(user: AbstractBaseUser, schedule_id: Any) -> Schedule:
    schedule = Schedule.objects.filter(user=user, pk=schedule_id).first() if str(schedule_id).isdigit() else None
    if schedule is None:
        raise Http404("schedule not found")
    return schedule


def runs_of(schedule: Schedule, limit: int = RECENT_RUNS) -> list[ScheduleRun]:
    return list(schedule.runs.select_related("job")[:limit])


def hooks_for_user(user: AbstractBaseUser) -> QuerySet[Hook]:
    return Hook.objects.filter(user=user)


def hook_for_user(user: AbstractBaseUser, slug: str) -> Hook:
    hook = Hook.objects.filter(user=user, slug=slug).first()
    if hook is None:
        raise Http404("hook not found")
    return hook


def deliveries_of(hook: Hook, limit: int = RECENT_DELIVERIES) -> list[HookDelivery]:
    return list(hook.deliveries.select_related("job")[:limit])
