"""The three policy layers as pure functions over plain data.

1. Role: a tool may name the roles allowed to use it; others never see it.
2. Risk: only tools at or below `max_risk` are offered, unless an override forces them in or out.
3. Confirmation: per tool run / ask / never; by default low risk runs, medium and high ask.

The engine and the settings page both call `effective_policy`, so what the page shows is what runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from .tools.registry import RISKS, Tool, risk_rank

Override = Literal["default", "include", "exclude"]
Confirmation = Literal["default", "run", "ask", "never"]
Action = Literal["run", "ask", "never"]

OVERRIDES: tuple[str, ...] = ("default", "include", "exclude")
CONFIRMATIONS: tuple[str, ...] = ("default", "run", "ask", "never")
DEFAULT_MAX_RISK = "high"


class PolicyInvalid(ValueError):
    """A stored or submitted policy with an unknown value."""


@dataclass(frozen=True)
class RiskPolicy:
    max_risk: str = DEFAULT_MAX_RISK
    overrides: Mapping[str, str] = field(default_factory=dict)
    confirmations: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_risk not in RISKS:
            raise PolicyInvalid(f"max_risk must be one of {', '.join(RISKS)}, not {self.max_risk!r}")
        for name, value in self.overrides.items():
            if value not in OVERRIDES:
                raise PolicyInvalid(f"override for {name} must be one of {', '.join(OVERRIDES)}, not {value!r}")
        for name, value in self.confirmations.items():
            if value not in CONFIRMATIONS:
                raise PolicyInvalid(
                    f"confirmation for {name} must be one of {', '.join(CONFIRMATIONS)}, not {value!r}")


@dataclass(frozen=True)
class Effective:
    tool: Tool
    offered: bool
    offered_because: str
    action: Action
    action_because: str

    @property
    def name(self) -> str:
        return self.tool.name

    @property
    def summary(self) -> str:
        if not self.offered:
            return f"Not offered ({self.offered_because})"
        return {"run": "Offered, runs", "ask": "Offered, asks first", "never": "Never runs"}[self.action]


def role_allows(tool: Tool, roles: Iterable[str]) -> bool:
    return tool.roles is None or bool(tool.roles & set(roles))


def offered(tool: Tool, policy: RiskPolicy, roles: Iterable[str]) -> tuple[bool, str]:
    """Whether the model is offered `tool`, and why."""
    if not role_allows(tool, roles):
        return False, "not for your role"
    override = policy.overrides.get(tool.name, "default")
    if override == "exclude":
        return False, "forced out"
    if policy.confirmations.get(tool.name) == "never":
        return False, "set to never run"
    if override == "include":
        return True, "forced in"
    if risk_rank(tool.risk) <= risk_rank(policy.max_risk):
        return True, f"{tool.risk} risk within {policy.max_risk}"
    return False, f"{tool.risk} risk above {policy.max_risk}"


def default_action(tool: Tool) -> Action:
    return "run" if tool.risk == "low" else "ask"


def confirmation(tool: Tool, policy: RiskPolicy, approved_for_job: Iterable[str] = ()) -> tuple[Action, str]:
    """What happens when the model calls `tool`: run it, ask a person first, or never run it."""
    rule = policy.confirmations.get(tool.name, "default")
    if rule == "never":
        return "never", "set to never run"
    if tool.name in set(approved_for_job):
        return "run", "approved for the rest of this job"
    if rule in ("run", "ask"):
        return rule, f"set to {rule}"
    action = default_action(tool)
    return action, f"{tool.risk} risk {'runs' if action == 'run' else 'asks'} by default"


def effective_policy(tools: Iterable[Tool], policy: RiskPolicy, roles: Iterable[str]) -> list[Effective]:
    roles = tuple(roles)
    rows = []
    for tool in tools:
        is_offered, offered_because = offered(tool, policy, roles)
        action, action_because = confirmation(tool, policy)
        rows.append(Effective(tool, is_offered, offered_because, action, action_because))
    return rows


def verdict(tool: Tool | None, policy: RiskPolicy, roles: Iterable[str],
            approved_for_job: Iterable[str] = ()) -> tuple[str, str]:
    """The engine's decision for one call the model made: ("run" | "ask" | "refuse", reason)."""
    if tool is None:
        return "refuse", "unknown tool"
    is_offered, because = offered(tool, policy, roles)
    if not is_offered:
        return "refuse", f"tool {tool.name} is not allowed ({because})"
    action, because = confirmation(tool, policy, approved_for_job)
    if action == "never":
        return "refuse", f"tool {tool.name} is not allowed ({because})"
    return action, because
