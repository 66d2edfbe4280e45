"""What the model sees of an MCP tool (its name) and how risky it is (from its annotations).

Plain functions over plain data: no Django, no SDK.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

MAX_NAME = 64
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_-]+")

# Where a tool's risk came from, as `mcp list` and the settings page say it.
FROM_ANNOTATION = "annotation"
FROM_DEFAULT = "spec default"
FROM_OVERRIDE = "override"


def derived_risk(annotations: Mapping[str, Any] | None) -> tuple[str, str]:
    """The risk of a tool from its annotations, following the specification's defaults, and
    whether the annotations said so or the defaults did.

    The specification takes a tool without hints to be not read-only and destructive, so a tool
    that says nothing is high risk. `readOnlyHint: true` is low; not read-only and explicitly not
    destructive is medium; anything else is high."""
    annotations = annotations or {}
    read_only = annotations.get("readOnlyHint")
    destructive = annotations.get("destructiveHint")
    if read_only is True:
        return "low", FROM_ANNOTATION
    if destructive is False:
        return "medium", FROM_ANNOTATION
    if destructive is True:
        return "high", FROM_ANNOTATION
    return "high", FROM_DEFAULT


def effective_risk(annotations: Mapping[str, Any] | None, override: str = "") -> tuple[str, str]:
    """The risk the policy uses: a staff override, else the derived one."""
    if override:
        return override, FROM_OVERRIDE
    return derived_risk(annotations)


def is_idempotent(annotations: Mapping[str, Any] | None) -> bool:
    """Safe to run again after a crash only when the server says so (the default is false)."""
    return (annotations or {}).get("idempotentHint") is True


def clean(text: str) -> str:
    """`text` with every run of characters other than letters, digits, `_` and `-` made one `_`."""
    return _NOT_ALLOWED.sub("_", text).strip("_") or "tool"


def exposed_name(server: str, tool: str, taken: Collection[str]) -> str:
    """`<server>__<tool>` in the characters every model provider accepts, at most 64 long, and
    different from every name in `taken` (a numbered suffix when it would not be)."""
    base = f"{clean(server)}__{clean(tool)}"[:MAX_NAME]
    if base not in taken:
        return base
    number = 2
    while True:
        suffix = f"-{number}"
        candidate = base[:MAX_NAME - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
        number += 1
