"""`manage.py hooks add USER SLUG --task TEMPLATE | list | remove SLUG`."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ....services import ServiceError
from ... import services
from ...models import Hook
from .schedules import _user, add_follow_up_arguments, follow_up


class Command(BaseCommand):
    help = "Add, list or remove inbound webhooks."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        add = actions.add_parser("add", help="add a hook; prints its secret once")
        add.add_argument("user")
        add.add_argument("slug")
        add.add_argument("--task", required=True, help="the task template: {payload}, {payload.a.b}")
        add.add_argument("--max-risk", default="low", choices=["low", "medium", "high"])
        add.add_argument("--persona", default=None)
        add_follow_up_arguments(add)
        listing = actions.add_parser("list", help="list hooks")
        listing.add_argument("--user", default=None)
        remove = actions.add_parser("remove", help="remove a hook")
        remove.add_argument("slug")

    def handle(self, *args, action: str, **options) -> None:
        try:
            getattr(self, f"_{action}")(**options)
        except ServiceError as error:
            raise CommandError(error.message) from None

    def _add(self, *, user: str, slug: str, task: str, max_risk: str, persona: str | None, **options) -> None:
        hook, secret = services.hook_create(user=_user(user), slug=slug, task_template=task,
                                            options={"persona": persona}, max_risk=max_risk, **follow_up(options))
        self.stdout.write(f"hook {hook.slug} added: POST /hooks/{hook.slug}")
        self.stdout.write(f"secret (shown once): {secret}")

    def _list(self, *, user: str | None, **_) -> None:
        hooks = Hook.objects.select_related("user").order_by("slug")
        if user:
            hooks = hooks.filter(user=_user(user))
        for hook in hooks:
            state = "enabled" if hook.enabled else "disabled"
            self.stdout.write(f"{hook.slug}\t{hook.user.get_username()}\t{state}\tmax_risk {hook.max_risk}\t"
                              f"{hook.task_template[:60]}")

    def _remove(self, *, slug: str, **_) -> None:
        hook = Hook.objects.select_related("user").filter(slug=slug).first()
        if hook is None:
            raise CommandError(f"no hook {slug!r}")
        services.hook_delete(user=hook.user, slug=slug)
        self.stdout.write(f"hook {slug} removed")
