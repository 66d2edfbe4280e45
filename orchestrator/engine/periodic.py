"""Periodic work the executor does beside its jobs: due schedules, expiring confirmations, retried
deliveries. There is no second scheduler: every executor runs every registered task, and each task
claims the rows it works on in the database (a unique row, or a lease like a job's), so however many
executors run, each piece of work is done once.

A task is a plain function called as `task(owner=<executor id>)`, run on the executor's database thread, so
it may use the ORM. Register one with `@every(seconds)` in a module imported at start-up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class Periodic:
    name: str
    seconds: float
    run: Callable[[str], object]
    due: float = field(default=0.0)  # monotonic time of the next run; 0 runs at once


_tasks: dict[str, Periodic] = {}


def every(seconds: float, *, name: str | None = None) -> Callable[[Callable[[str], object]], Callable[[str], object]]:
    """Register `function(owner=...)` to run about every `seconds` on each executor."""
    def register(function: Callable[[str], object]) -> Callable[[str], object]:
        key = name or f"{function.__module__}.{function.__qualname__}"
        _tasks[key] = Periodic(key, seconds, function)
        return function

    return register


def registered() -> list[Periodic]:
    return list(_tasks.values())


def due(now: float | None = None) -> list[Periodic]:
    """The tasks due now, each moved on to its next time."""
    now = time.monotonic() if now is None else now
    ready = [task for task in _tasks.values() if task.due <= now]
    for task in ready:
        task.due = now + task.seconds
    return ready
