"""When a schedule is due, and what its task says then. Pure functions over plain data (croniter
does the calendar arithmetic, zoneinfo the time zones, daylight saving included)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterError, croniter

# Catching up after downtime looks at most this many missed times; past it the schedule fires
# once for the latest due time all the same (a cron of every minute down for a year is no reason
# to walk half a million times).
MAX_MISSED_WALK = 10_000


class CronInvalid(ValueError):
    """A cron expression or time zone that cannot be used."""


def zone(name: str) -> ZoneInfo:
    if not name or name not in available_timezones():
        raise CronInvalid(f"unknown time zone {name!r} (use a name like Europe/Berlin or UTC)")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronInvalid(f"unknown time zone {name!r}") from None


def check(expression: str, time_zone: str) -> None:
    """Raise CronInvalid unless `expression` is a five-field cron expression and `time_zone` known."""
    zone(time_zone)
    fields = (expression or "").split()
    if len(fields) != 5 or not croniter.is_valid(" ".join(fields)):
        raise CronInvalid(f"{expression!r} is not a cron expression of five fields "
                          "(minute hour day-of-month month day-of-week), e.g. 0 9 * * 1-5")


def next_times(expression: str, time_zone: str, after: datetime, count: int = 1) -> list[datetime]:
    """The next `count` due times strictly after `after`, in the schedule's time zone."""
    check(expression, time_zone)
    walk = croniter(" ".join(expression.split()), after.astimezone(zone(time_zone)))
    return [_next(walk, expression) for _ in range(count)]


def _next(walk: croniter, expression: str) -> datetime:
    try:
        return walk.get_next(datetime)
    except CroniterError:  # a date that never comes, such as 30 February
        raise CronInvalid(f"{expression!r} names a time that never comes") from None


@dataclass(frozen=True)
class Due:
    """What a schedule whose next time has come should do: fire once for `at` (the latest due time
    not after now), standing for `missed` due times (1 when on time)."""

    at: datetime
    missed: int
    following: datetime  # the next due time after `at`


def due(expression: str, time_zone: str, next_run_at: datetime, now: datetime) -> Due | None:
    """None while `next_run_at` is still ahead; else the one firing that covers every time missed."""
    if next_run_at > now:
        return None
    at, missed = next_run_at, 1
    walk = croniter(" ".join(expression.split()), next_run_at.astimezone(zone(time_zone)))
    following = _next(walk, expression)
    while following <= now and missed < MAX_MISSED_WALK:
        at, missed = following, missed + 1
        following = _next(walk, expression)
    if following <= now:  # gave up walking: jump straight to the times after now
        at, following = now, next_times(expression, time_zone, now)[0]
    return Due(at=at, missed=missed, following=following)


def task_for(template: str, when: datetime) -> str:
    """A schedule's task with `{date}`, `{time}` and `{weekday}` filled in for its due time (in its
    zone). Other braces are left as written."""
    return (template.replace("{date}", when.strftime("%Y-%m-%d"))
            .replace("{time}", when.strftime("%H:%M"))
            .replace("{weekday}", when.strftime("%A")))
