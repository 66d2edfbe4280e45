"""Which model plays which role for a user, and with what prompt settings.

A user's own assignment wins; else the site-wide one; else the environment defaults
(CORTEX_ORCHESTRATOR_MODEL for `orchestrator`, CORTEX_CHAT_MODEL for every chat role).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q

from . import crypto, rows
from .models import ModelProfile, RoleAssignment

ORCHESTRATOR = "orchestrator"
CHAT = "chat"


@dataclass(frozen=True)
class RoleConfig:
    role: str
    model: str  # provider:model
    label_source: str  # "yours", "site-wide" or "environment"
    profile_id: int | None = None
    profile_name: str = ""
    base_url: str = ""
    max_rounds: int | None = None
    timeout: float | None = None
    temperature: float | None = None
    system_append: str = ""
    inject_datetime: bool = True
    inject_mode: bool = True
    tools: tuple[str, ...] = field(default_factory=tuple)
    max_output_tokens: int | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tools"] = list(self.tools)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoleConfig:
        return cls(**{**data, "tools": tuple(data.get("tools") or ())})


def assignments_for(user: AbstractBaseUser | None, role_names: Iterable[str]) -> dict[str, RoleAssignment]:
    """Each role's assignment: the user's own, else the site-wide one (the only one when `user` is
    None). Roles with neither are left out."""
    owners = (user.pk, None) if user is not None else None
    # All in one read: for each role, the user's own, if any, sorts first. Through a statement
    # built once (a submission reads this each time), as
    # `select_related("profile").filter(owner in owners, role__in=…).order_by(F("owner").asc(nulls_last=True))`.
    found: dict[str, RoleAssignment] = {}
    for assignment in rows.instances(RoleAssignment, {"owner": owners, "role": tuple(set(role_names))},
                                     order_by=("owner nulls last",), related=("profile",)):
        found.setdefault(assignment.role, assignment)
    return found


def role_configs(user: AbstractBaseUser | None, *role_names: str) -> list[RoleConfig]:
    """The configuration of each role named, in that order, from one read."""
    assignments = assignments_for(user, role_names)
    return [_config(role, assignments.get(role)) for role in role_names]


def role_config(user: AbstractBaseUser | None, role: str) -> RoleConfig:
    return role_configs(user, role)[0]


def _config(role: str, assignment: RoleAssignment | None) -> RoleConfig:
    default = settings.CORTEX_ORCHESTRATOR_MODEL if role == ORCHESTRATOR else settings.CORTEX_CHAT_MODEL
    if assignment is None:
        return RoleConfig(role=role, model=default, label_source="environment")
    source = "yours" if assignment.owner_id else "site-wide"
    prompt_settings = {"system_append": assignment.system_append, "inject_datetime": assignment.inject_datetime,
                       "inject_mode": assignment.inject_mode, "tools": tuple(assignment.tools or ()),
                       "max_output_tokens": assignment.max_output_tokens}
    profile = assignment.profile
    if profile is None:
        return RoleConfig(role=role, model=default, label_source=source, **prompt_settings)
    return RoleConfig(role=role, model=profile.model_string, label_source=source, profile_id=profile.pk,
                      profile_name=profile.name, base_url=profile.base_url, max_rounds=profile.max_rounds,
                      timeout=profile.timeout_seconds, temperature=profile.temperature, **prompt_settings)


def profiles_for_user(user: AbstractBaseUser):
    return ModelProfile.objects.filter(Q(owner=user) | Q(owner=None)).order_by("owner", "name")


@dataclass(frozen=True)
class Credentials:
    """Where a profile's model calls go and with which key. `public_only`: the address was typed by
    someone who may not reach the server's own network, so every connection to it is checked."""

    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    public_only: bool = False


def endpoint_is_guarded(owner: AbstractBaseUser | None) -> bool:
    """A person's own profile points where they typed; only site-wide profiles (which only staff
    write) and staff's own may reach private addresses such as an Ollama on localhost."""
    return owner is not None and not owner.is_staff


def credentials(profile_id: int | None) -> Credentials:
    """A profile's endpoint and key, decrypted only for the call; the environment's for defaults."""
    if profile_id is None:
        return Credentials()
    profile = ModelProfile.objects.select_related("owner").filter(pk=profile_id).first()
    if profile is None:
        raise crypto.SecretUnreadable("the model profile this job was submitted with no longer exists")
    return Credentials(base_url=profile.base_url or None, api_key=crypto.decrypt(profile.api_key_encrypted) or None,
                       public_only=bool(profile.base_url) and endpoint_is_guarded(profile.owner))
