"""What both measured sides share: the conversation they hold, and how a side reports its figures.

Each side runs in its own process and prints one JSON line starting with `RESULT `, so the
driver can read it among any other output.
"""

from __future__ import annotations

import contextlib
import json
import resource
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULT_PREFIX = "RESULT "
MODEL = "bench"
TASK = "What time is it now? Check the clock before you answer."


@dataclass(frozen=True)
class Conversation:
    """Exactly what Cortex sends the model on a job's first turn, so the floor can send the same."""

    model: str
    system: str
    task: str
    tools: list[dict[str, Any]] = field(default_factory=list)  # provider-neutral specs

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Conversation:
        return cls(**json.loads(path.read_text()))


@dataclass
class Outcome:
    side: str  # "cortex" or "floor"
    jobs: int
    rounds: int  # tool rounds per job, verified
    at_once: int
    seconds: float  # wall time, first job submitted to last job complete
    cpu_seconds: float  # this process's user + system time over the same span
    peak_rss_mb: float  # this process's peak resident memory over its whole life
    # Cortex, where jobs are submitted from a process of their own (as the web submits them):
    # that process's CPU time over the span, and its peak resident memory.
    submitter_cpu_seconds: float | None = None
    submitter_peak_rss_mb: float | None = None

    def emit(self) -> None:
        print(RESULT_PREFIX + json.dumps(asdict(self)), flush=True)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    """Resident set size of this process now (VmRSS), in MiB; 0 where /proc is missing."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    """Peak resident set size of this process (VmHWM), in MiB."""
    with contextlib.suppress(OSError):  # no /proc: fall back to getrusage
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / (1024 * 1024)


class BenchFailure(SystemExit):
    """A side did not hold the conversation it was meant to: the figures would mean nothing."""

    def __init__(self, message: str) -> None:
        super().__init__(f"bench: {message}")
