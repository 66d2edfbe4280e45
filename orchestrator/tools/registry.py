"""The tool registry: what a tool is, how it is declared, how its arguments are checked.

A tool is declared once with `@tool(...)` on an async handler `handler(ctx, **args)`. The
handler returns JSON-serialisable data (it becomes the tool result the model sees) or raises
`ToolError` with a message meant for the model.

Besides the tools declared in code, the registry holds the tools of its sources (`add_source`):
tools that come and go while Cortex runs (those of MCP servers, kept in the database). Whoever
reads the registry sees one list, whatever each tool's origin.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Protocol

import jsonschema

Risk = Literal["low", "medium", "high"]
RISKS: tuple[Risk, ...] = ("low", "medium", "high")


def risk_rank(risk: str) -> int:
    return RISKS.index(risk)


class ToolError(Exception):
    """A failure the model should read: bad input, a refused address, a missing file."""


class ArgumentsInvalid(ToolError):
    """Arguments that do not match the tool's JSON schema."""


@dataclass(frozen=True)
class ToolContext:
    """What a handler may know about the call it serves."""

    user_id: int
    username: str
    job_id: str
    workspace: Path
    settings: Any = None
    off_record: bool = False  # the job is off the record: nothing of it may be remembered


Handler = Callable[..., Awaitable[Any]]
# A tool's own rules for its arguments, beyond the schema: raises ToolError naming the problem.
ArgumentsCheck = Callable[[dict[str, Any], ToolContext], None]


def tool_result_text(value: Any) -> str:
    """What the model reads of a handler's return value: text as it is, anything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


@dataclass(frozen=True)
class Tool:
    name: str
    category: str
    description: str
    parameters: dict[str, Any]
    risk: Risk
    idempotent: bool
    timeout: float
    handler: Handler = field(repr=False, compare=False)
    groups: frozenset[str] | None = None  # the permission groups that may use it; None: everyone
    check: ArgumentsCheck | None = field(default=None, repr=False, compare=False)
    source: str = "built-in"  # where the tool comes from, for people reading a page: "built-in", "MCP server time"
    owner_id: int | None = None  # a tool of one person's own (their tool server); None: everyone's

    def validate(self, args: Any) -> dict[str, Any]:
        """Check `args` against the JSON schema; return them or raise ArgumentsInvalid."""
        if not isinstance(args, dict):
            raise ArgumentsInvalid("arguments must be a JSON object")
        errors = sorted(self._validator.iter_errors(args), key=lambda e: list(e.path))
        if errors:
            first = errors[0]
            where = ".".join(str(p) for p in first.path) or "arguments"
            raise ArgumentsInvalid(f"invalid arguments for {self.name}: {where}: {first.message}")
        return args

    def check_args(self, args: Any, context: ToolContext) -> dict[str, Any]:
        """The schema, then the tool's own rules (the ones its handler applies when it runs), so
        arguments a person typed are refused before they are approved, not when the tool runs."""
        args = self.validate(args)
        if self.check is not None:
            try:
                self.check(args, context)
            except ArgumentsInvalid:
                raise
            except ToolError as error:
                raise ArgumentsInvalid(f"invalid arguments for {self.name}: {error}") from None
        return args

    @cached_property
    def _validator(self) -> jsonschema.Draft202012Validator:
        return jsonschema.Draft202012Validator(self.parameters)

    def spec(self) -> dict[str, Any]:
        """The provider-neutral declaration offered to a model."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


class ToolSource(Protocol):
    """Tools that change while Cortex runs. `tools()` answers from what the source knows now; it
    may look things up (a database) when called outside an event loop, and must not block inside one.
    `aclose()` lets go of whatever the source holds open on the running event loop (connections)."""

    def tools(self) -> list[Tool]: ...

    async def aclose(self) -> None: ...


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self._sources: list[ToolSource] = []

    def add_source(self, source: ToolSource) -> None:
        if source not in self._sources:
            self._sources.append(source)

    def _all(self) -> dict[str, Tool]:
        if not self._sources:
            return self._tools
        found = dict(self._tools)
        for source in self._sources:
            for tool in source.tools():
                found.setdefault(tool.name, tool)  # a tool declared in code keeps its name
        return found

    async def aclose(self) -> None:
        """Close what the sources hold open on the running event loop (an executor stopping)."""
        for source in self._sources:
            await source.aclose()

    def add(self, tool: Tool) -> Tool:
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is registered twice")
        if tool.risk not in RISKS:
            raise ValueError(f"tool {tool.name!r} has unknown risk {tool.risk!r}")
        jsonschema.Draft202012Validator.check_schema(tool.parameters)
        self._tools[tool.name] = tool
        return tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name) or self._all().get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._all()

    def __iter__(self) -> Iterator[Tool]:
        return iter(sorted(self._all().values(), key=lambda t: (t.category, t.name)))

    def __len__(self) -> int:
        return len(self._all())

    def names(self) -> list[str]:
        return sorted(self._all())

    def visible_to(self, user_id: int | None) -> list[Tool]:
        """The tools a person may see listed: everyone's and their own (not another person's)."""
        return [tool for tool in self if tool.owner_id is None or tool.owner_id == user_id]


registry = ToolRegistry()


def tool(
    *,
    name: str,
    category: str,
    description: str,
    risk: Risk,
    idempotent: bool,
    parameters: dict[str, Any] | None = None,
    timeout: float = 10.0,
    groups: frozenset[str] | None = None,
    check: ArgumentsCheck | None = None,
    into: ToolRegistry | None = None,
) -> Callable[[Handler], Handler]:
    """Declare an async handler as a tool in the global registry (or `into`). `check(args, context)`,
    when given, applies the tool's own rules to arguments a person edited (see `Tool.check_args`)."""

    def decorate(handler: Handler) -> Handler:
        if not inspect.iscoroutinefunction(handler):
            raise TypeError(f"tool {name!r}: the handler must be async")
        (registry if into is None else into).add(
            Tool(
                name=name,
                category=category,
                description=description,
                parameters=parameters or {"type": "object", "properties": {}, "additionalProperties": False},
                risk=risk,
                idempotent=idempotent,
                timeout=timeout,
                handler=handler,
                groups=groups,
                check=check,
            )
        )
        return handler

    return decorate
