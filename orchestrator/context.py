"""Assembling the system prompt a job's models see. Pure functions over plain data."""

from __future__ import annotations

from datetime import datetime


def system_prompt(*, persona_prompt: str, now: datetime | None = None, off_record: bool = False) -> str:
    parts = [persona_prompt.strip()] if persona_prompt.strip() else []
    if now is not None:
        parts.append(f"Current date and time: {now.strftime('%A %Y-%m-%d %H:%M %Z').strip()}.")
    parts.append("Mode: off the record — this turn is not logged or remembered." if off_record else "Mode: chat.")
    return "\n\n".join(parts)
