"""The executor's tick that fires due schedules (see `engine.periodic`)."""

from __future__ import annotations

from django.conf import settings

from ..engine import periodic
from . import services


@periodic.every(settings.CORTEX_SCHEDULE_TICK_SECONDS, name="triggers.schedules")
def fire_due_schedules(owner: str) -> None:
    services.schedules_fire_due(owner=owner)
