"""`current_time`: the wall-clock time in a named time zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..registry import ToolContext, ToolError, tool


def load_zone(name: str) -> tzinfo:
    """Return the IANA zone `name`, or raise ToolError for an unknown or malformed one."""
    if name.upper() in ("UTC", "Z"):
        # Works even on a host without a tz database.
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError: keys such as "../x" that ZoneInfo rejects before touching the disk.
        raise ToolError(f"unknown time zone {name!r}; use an IANA name such as \"Europe/Paris\" or \"UTC\"") from None


@tool(
    name="current_time",
    category="time",
    description=(
        "Return the current date and time in an IANA time zone (default UTC): ISO 8601 timestamp, "
        "weekday, UTC offset and Unix time."
    ),
    risk="low",
    idempotent=True,
    timeout=5.0,
    parameters={
        "type": "object",
        "properties": {
            "timezone": {
                "type": "string",
                "minLength": 1,
                "maxLength": 64,
                "description": "IANA time zone name, e.g. \"America/New_York\". Default \"UTC\".",
            }
        },
        "required": [],
        "additionalProperties": False,
    },
)
async def current_time(ctx: ToolContext, *, timezone: str = "UTC") -> dict[str, Any]:
    zone = load_zone(timezone)
    now = datetime.now(zone).replace(microsecond=0)
    return {
        "timezone": "UTC" if zone is UTC else timezone,
        "iso": now.isoformat(),
        "weekday": now.strftime("%A"),
        "utc_offset": format_offset(now.utcoffset() or timedelta(0)),
        "unix": int(now.timestamp()),
    }


def format_offset(offset: timedelta) -> str:
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
