"""Tools that exist only for tests: each leaves a trace on disk so a test can count its runs."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from orchestrator.tools.registry import ToolContext, tool


def trace_file(ctx: ToolContext) -> Path:
    return Path(os.environ.get("CORTEX_TEST_TRACE", str(ctx.workspace / "trace.log")))


def _append(ctx: ToolContext, line: str) -> None:
    path = trace_file(ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


SLOW_PARAMETERS = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "seconds": {"type": "number", "minimum": 0, "maximum": 120}},
    "required": ["label"],
    "additionalProperties": False,
}


@tool(name="slow_charge", category="testing", description="Charges a card (test double): not safe to repeat.",
      risk="low", idempotent=False, timeout=120, parameters=SLOW_PARAMETERS)
async def slow_charge(ctx: ToolContext, label: str, seconds: float = 0) -> dict:
    _append(ctx, f"charge {label}")
    await asyncio.sleep(seconds)
    return {"charged": label}


@tool(name="slow_lookup", category="testing", description="Looks something up slowly (test double): safe to repeat.",
      risk="low", idempotent=True, timeout=120, parameters=SLOW_PARAMETERS)
async def slow_lookup(ctx: ToolContext, label: str, seconds: float = 0) -> dict:
    _append(ctx, f"lookup {label}")
    await asyncio.sleep(seconds)
    return {"found": label}


@tool(name="gated_charge", category="testing", description="Charges a card after a person confirms (test double).",
      risk="high", idempotent=False, timeout=120, parameters=SLOW_PARAMETERS)
async def gated_charge(ctx: ToolContext, label: str, seconds: float = 0) -> dict:
    _append(ctx, f"gated {label}")
    await asyncio.sleep(seconds)
    return {"charged": label}


@tool(name="explode", category="testing", description="Always raises (test double).", risk="low",
      idempotent=True, timeout=5)
async def explode(ctx: ToolContext) -> dict:
    raise RuntimeError("boom")


@tool(name="audit_export", category="testing", description="Exports the audit log (test double): auditors only.",
      risk="low", idempotent=True, groups=frozenset({"auditors"}))
async def audit_export(ctx: ToolContext) -> dict:
    _append(ctx, "audit export")
    return {"exported": True}
