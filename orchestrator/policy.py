"""The tool policy: one pure function, `decide`, over plain data.

For one tool and one job it answers two questions: is the model offered the tool, and what
happens when the model calls it (run, ask a person first, or never). The layers, in order:

1. Groups: a tool may name the permission groups allowed to use it; others are never offered it.
   A tool of one person's own (from their own tool server) is offered to nobody else.
2. The model role's allow-list: when the orchestrator role names tools, no other tool is offered.
3. Risk: only tools at or below `max_risk` are offered, unless an override forces them in or out.
   A job that started unattended (a schedule, a webhook) carries its origin's own ceiling on top:
   a tool above it is never offered, whatever the overrides say, so an origin only narrows.
4. Confirmation: per tool run / ask / never; by default low risk runs, medium and high ask. A
   person may approve a tool for the rest of a job, which turns its "ask" into "run".

The settings page shows what `decide` says, the engine offers the model what it offers and gives
each call its verdict, so what the page shows is what the engine does. A tool that is not offered
is never run: its action is always "never".

This module must not import Django: it is exercised with plain data, exhaustively.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from .tools.registry import RISKS, Tool, risk_rank

Override = Literal["default", "include", "exclude"]
Confirmation = Literal["default", "run", "ask", "never"]
Action = Literal["run", "ask", "never"]
Verdict = Literal["run", "ask", "refuse"]

OVERRIDES: tuple[str, ...] = ("default", "include", "exclude")
CONFIRMATIONS: tuple[str, ...] = ("default", "run", "ask", "never")
DEFAULT_MAX_RISK = "high"


class PolicyInvalid(ValueError):
    """A stored or submitted policy with an unknown value."""


@dataclass(frozen=True)
class RiskPolicy:
    """A user's own settings: the highest risk offered, and per-tool overrides and confirmations."""

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
class PolicyContext:
    """Everything besides the tool that `decide` looks at.

    `allow_list` is the orchestrator role's tool list (empty: no restriction); `approved` names
    the tools a person approved for the rest of the job (empty outside a job); `user_id` is the
    person the decision is for (their own tools are offered to them alone); `origin_max_risk` is the
    ceiling of what started the job (None: a person, no ceiling besides their own policy)."""

    policy: RiskPolicy = field(default_factory=RiskPolicy)
    user_id: int | None = None
    groups: frozenset[str] = frozenset()
    allow_list: frozenset[str] = frozenset()
    approved: frozenset[str] = frozenset()
    origin_max_risk: str | None = None

    def __post_init__(self) -> None:
        if self.origin_max_risk is not None and self.origin_max_risk not in RISKS:
            raise PolicyInvalid(f"the origin's max_risk must be one of {', '.join(RISKS)}, "
                                f"not {self.origin_max_risk!r}")
        # Callers hand over lists and tuples from the database; compare as sets from here on.
        for name in ("groups", "allow_list", "approved"):
            object.__setattr__(self, name, frozenset(getattr(self, name)))


@dataclass(frozen=True)
class Decision:
    """What the policy does with one tool: offered or not, and run, ask or never, each with why."""

    name: str
    tool: Tool | None  # None: no tool has this name
    offered: bool
    offered_because: str
    action: Action
    action_because: str

    @property
    def verdict(self) -> Verdict:
        """The engine's word for the action on a call: "refuse" is "never"."""
        return "refuse" if self.action == "never" else self.action

    @property
    def because(self) -> str:
        """The reason for the verdict, as the engine records it and the model reads it."""
        if self.tool is None:
            return self.offered_because
        if self.action == "never":
            return f"tool {self.name} is not allowed ({self.offered_because})"
        return self.action_because

    @property
    def summary(self) -> str:
        if not self.offered:
            return f"Not offered ({self.offered_because})"
        return "Offered, runs" if self.action == "run" else "Offered, asks first"


def decide(name: str, tool: Tool | None, context: PolicyContext) -> Decision:
    """The policy's decision on the tool called `name`; `tool` is the registered tool of that name,
    or None when there is none."""
    if tool is None:
        why = f"there is no tool named {name!r}"
        return Decision(name, None, False, why, "never", why)
    is_offered, offered_because = _offered(tool, context)
    if not is_offered:
        # Not offered means never run, whatever the confirmation rules or approvals say.
        return Decision(name, tool, False, offered_because, "never", offered_because)
    action, action_because = _confirmation(tool, context)
    return Decision(name, tool, True, offered_because, action, action_because)


def decide_all(tools: Iterable[Tool], context: PolicyContext) -> list[Decision]:
    """`decide` for each tool, in the order given."""
    return [decide(tool.name, tool, context) for tool in tools]


def _offered(tool: Tool, context: PolicyContext) -> tuple[bool, str]:
    policy = context.policy
    if tool.owner_id is not None and tool.owner_id != context.user_id:
        return False, "another person's tool"
    if tool.groups is not None and not tool.groups & context.groups:
        return False, "not for your groups"
    if context.allow_list and tool.name not in context.allow_list:
        return False, "not on the orchestrator role's tool list"
    ceiling = context.origin_max_risk
    if ceiling is not None and risk_rank(tool.risk) > risk_rank(ceiling):
        # Before the overrides: an unattended job's ceiling holds even for a tool forced in.
        return False, f"{tool.risk} risk above this job's origin ceiling of {ceiling}"
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


def _confirmation(tool: Tool, context: PolicyContext) -> tuple[Action, str]:
    """What a call to an offered tool does (an offered tool is never set to "never")."""
    if tool.name in context.approved:
        return "run", "approved for the rest of this job"
    rule = context.policy.confirmations.get(tool.name, "default")
    if rule in ("run", "ask"):
        return rule, f"set to {rule}"
    action = default_action(tool)
    return action, f"{tool.risk} risk {'runs' if action == 'run' else 'asks'} by default"


def default_action(tool: Tool) -> Action:
    """What a call does when no rule is set for the tool (the settings page labels its default)."""
    return "run" if tool.risk == "low" else "ask"
