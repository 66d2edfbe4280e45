"""`manage.py schedules add USER CRON TIME_ZONE TASK | list | run ID | remove ID`."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ....services import ServiceError
from ... import services
from ...models import Schedule


class Command(BaseCommand):
    help = "Add, list, run or remove schedules."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        add = actions.add_parser("add", help="add a schedule for a user")
        add.add_argument("user")
        add.add_argument("cron", help='five fields, e.g. "0 9 * * 1-5"')
        add.add_argument("time_zone", help="e.g. Europe/Berlin or UTC")
        add.add_argument("task", help="{date}, {time} and {weekday} are filled in")
        add.add_argument("--name", default="", help="default: the task's beginning")
        add.add_argument("--max-risk", default="low", choices=["low", "medium", "high"])
        add.add_argument("--persona", default=None)
        add_follow_up_arguments(add)
        add.add_argument("--disabled", action="store_true")
        listing = actions.add_parser("list", help="list schedules (each with its id)")
        listing.add_argument("--user", default=None)
        run = actions.add_parser("run", help="run a schedule now")
        run.add_argument("id", type=int)
        remove = actions.add_parser("remove", help="remove a schedule")
        remove.add_argument("id", type=int)

    def handle(self, *args, action: str, **options) -> None:
        try:
            getattr(self, f"_{action}")(**options)
        except ServiceError as error:
            raise CommandError(error.message) from None

    def _add(self, *, user: str, cron: str, time_zone: str, task: str, name: str, max_risk: str,
             persona: str | None, disabled: bool, **options) -> None:
        owner = _user(user)
        schedule = services.schedule_save(user=owner, name=name or task[:60], cron_expression=cron,
                                          time_zone=time_zone, task=task, options={"persona": persona},
                                          max_risk=max_risk, enabled=not disabled, **follow_up(options))
        self.stdout.write(f"schedule {schedule.pk} added; next run {_when(schedule)}")

    def _list(self, *, user: str | None, **_) -> None:
        schedules = Schedule.objects.select_related("user").order_by("pk")
        if user:
            schedules = schedules.filter(user=_user(user))
        for schedule in schedules:
            state = "enabled" if schedule.enabled else "disabled"
            self.stdout.write(f"{schedule.pk}\t{schedule.user.get_username()}\t{schedule.cron}\t{schedule.time_zone}\t"
                              f"{state}\tnext {_when(schedule)}\t{schedule.name}")

    def _run(self, *, id: int, **_) -> None:
        schedule = _schedule(id)
        run = services.schedule_run_now(user=schedule.user, schedule_id=schedule.pk)
        if run.job_id is None:
            raise CommandError(f"schedule {schedule.pk} started no job: {run.error}")
        self.stdout.write(f"schedule {schedule.pk} ran: job {run.job_id}")

    def _remove(self, *, id: int, **_) -> None:
        schedule = _schedule(id)
        services.schedule_delete(user=schedule.user, schedule_id=schedule.pk)
        self.stdout.write(f"schedule {id} removed")


def add_follow_up_arguments(add: ArgumentParser) -> None:
    add.add_argument("--callback-url", default="",
                     help="POST each job's JSON here when it ends, signed with the user's callback secret")
    add.add_argument("--callback-on-confirmation", action="store_true",
                     help="also POST when a job starts waiting for a confirmation")
    add.add_argument("--confirmation-ttl", type=int, default=None, metavar="SECONDS",
                     help="deny a call of its jobs as expired after it waited this long for a confirmation")


def follow_up(options: dict[str, Any]) -> dict[str, Any]:
    return {"callback_url": options["callback_url"], "callback_on_confirmation": options["callback_on_confirmation"],
            "confirmation_ttl": options["confirmation_ttl"]}


def _user(username: str):
    user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: username}).first()
    if user is None:
        raise CommandError(f"no user {username!r}")
    return user


def _schedule(schedule_id: int) -> Schedule:
    schedule = Schedule.objects.select_related("user").filter(pk=schedule_id).first()
    if schedule is None:
        raise CommandError(f"no schedule {schedule_id}")
    return schedule


def _when(schedule: Schedule) -> str:
    return schedule.next_run_at.isoformat() if schedule.enabled and schedule.next_run_at else "—"
