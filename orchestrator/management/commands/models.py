"""List and set model profiles and role assignments from scripts.

    manage.py models list [--user NAME]
    manage.py models add-profile NAME --provider openai --model gpt-4o-mini [--base-url URL]
                                 [--api-key-env VAR] [--user NAME] [--max-rounds N] [--timeout S]
    manage.py models assign ROLE PROFILE [--user NAME] [--system-append TEXT] [--no-datetime] [--no-mode]
                                 [--tools a,b] [--max-output-tokens N]
    manage.py models unassign ROLE [--user NAME]

The operator at the command line may change every profile and role (`by=None` in the services).
Keys are read from an environment variable, never from the command line (it would land in the
shell history and the process list).
"""

from __future__ import annotations

import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from orchestrator import roles, services
from orchestrator.models import ModelProfile, RoleAssignment


class Command(BaseCommand):
    help = "List and set model profiles and role assignments (site-wide, or a user's with --user)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list")
        listing.add_argument("--user")
        add = sub.add_parser("add-profile")
        add.add_argument("name")
        add.add_argument("--provider", required=True)
        add.add_argument("--model", required=True)
        add.add_argument("--base-url", default="")
        add.add_argument("--api-key-env", help="name of the environment variable holding the key")
        add.add_argument("--max-rounds", type=int)
        add.add_argument("--timeout", type=float)
        add.add_argument("--temperature", type=float)
        add.add_argument("--user")
        assign = sub.add_parser("assign")
        assign.add_argument("role")
        assign.add_argument("profile", help="profile name, or 'default' for the environment's model")
        assign.add_argument("--user")
        assign.add_argument("--system-append", default="")
        assign.add_argument("--no-datetime", action="store_true")
        assign.add_argument("--no-mode", action="store_true")
        assign.add_argument("--tools", default="", help="comma-separated allow-list of tools")
        assign.add_argument("--max-output-tokens", type=int,
                            help="the longest answer in tokens (default: the provider's)")
        unassign = sub.add_parser("unassign")
        unassign.add_argument("role")
        unassign.add_argument("--user")

    def handle(self, *args, action: str, **options):
        owner = self._user(options.get("user"))
        try:
            getattr(self, action.replace("-", "_"))(owner, **options)
        except services.ServiceError as error:
            raise CommandError(error.message) from None

    def _user(self, username: str | None):
        if not username:
            return None
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        return user

    def list(self, owner, **options):
        self.stdout.write(f"Profiles ({owner.get_username() + ' and ' if owner else ''}site-wide):")
        profiles = roles.profiles_for_user(owner) if owner else ModelProfile.objects.filter(owner=None)
        for profile in profiles:
            where = "site-wide" if profile.owner_id is None else "yours"
            key = "key set" if profile.has_api_key else "no key"
            self.stdout.write(f"  {profile.name:<20} {profile.model_string:<40} {profile.base_url or '-':<30} "
                              f"{key} ({where})")
        self.stdout.write("Roles:")
        names = set(RoleAssignment.objects.filter(owner=owner).values_list("role", flat=True)) | {
            roles.ORCHESTRATOR, roles.CHAT}
        if owner:
            names |= set(RoleAssignment.objects.filter(owner=None).values_list("role", flat=True))
        for name in sorted(names):
            config = roles.role_config(owner, name)
            self.stdout.write(f"  {name:<14} {config.model:<40} from {config.label_source}"
                              + (f" (profile {config.profile_name})" if config.profile_name else "")
                              + (f", at most {config.max_output_tokens} output tokens"
                                 if config.max_output_tokens else ""))

    def add_profile(self, owner, *, name, provider, model, base_url, api_key_env, max_rounds, timeout,
                    temperature, **options):
        api_key = None
        if api_key_env:
            api_key = os.environ.get(api_key_env)
            if api_key is None:
                raise CommandError(f"the environment variable {api_key_env} is not set")
        existing = ModelProfile.objects.filter(owner=owner, name=name).first()
        profile = services.profile_save(by=None, owner=owner, name=name, provider=provider, model=model,
                                        base_url=base_url, api_key=api_key, max_rounds=max_rounds,
                                        timeout_seconds=timeout, temperature=temperature,
                                        profile_id=existing.pk if existing else None)
        self.stdout.write(f"{'Updated' if existing else 'Created'} profile {profile.name} ({profile.model_string})")

    def assign(self, owner, *, role, profile, system_append, no_datetime, no_mode, tools, max_output_tokens,
               **options):
        profile_id = None
        if profile != "default":
            found = (ModelProfile.objects.filter(owner=owner, name=profile).first()
                     or ModelProfile.objects.filter(owner=None, name=profile).first())
            if found is None:
                raise CommandError(f"no profile named {profile!r}")
            profile_id = found.pk
        services.role_assign(by=None, owner=owner, role=role, profile_id=profile_id, system_append=system_append,
                             inject_datetime=not no_datetime, inject_mode=not no_mode,
                             tools=[t.strip() for t in tools.split(",") if t.strip()],
                             max_output_tokens=max_output_tokens)
        self.stdout.write(f"Role {role} now uses {profile}")

    def unassign(self, owner, *, role, **options):
        services.role_unassign(by=None, owner=owner, role=role)
        self.stdout.write(f"Role {role} falls back to the default")

