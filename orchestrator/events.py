"""The per-job event log and the doorbells that announce it.

Events are appended in the same transaction as the change they describe; only after the commit
is a doorbell rung on the channel layer. A doorbell carries no data: a listener re-reads the log,
so a lost doorbell delays an event but never loses it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from .models import Job, JobEvent
from .rows import insert as insert_rows

logger = logging.getLogger(__name__)

EXECUTORS_GROUP = "cortex.executors"

_loop: asyncio.AbstractEventLoop | None = None
# Events appended inside `batched()` on this thread, not yet inserted.
_held = threading.local()


def bind_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    """Send doorbells through this running loop (the server's or executor's) without waiting."""
    global _loop
    _loop = loop


def job_group(job_id: Any) -> str:
    return f"job.{job_id}"


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def append(job: Job, *events: tuple[str, dict[str, Any]]) -> list[JobEvent]:
    """Append events to a job locked by the caller's transaction; the caller saves `last_seq`.

    Rings the job's and its owner's doorbells once the transaction commits.
    """
    rows = []
    for event_type, data in events:
        job.last_seq += 1
        rows.append(JobEvent(job=job, seq=job.last_seq, type=event_type, data=data))
    pending = getattr(_held, "rows", None)
    if pending is None:
        insert_rows(rows)
    else:
        pending.extend(rows)
    _ring_after_commit(Doorbell(job_group(job.id), user_group(job.user_id)))
    return rows


@contextmanager
def batched() -> Iterator[None]:
    """Hold the events appended inside and insert them all in one statement on the way out.

    Open it inside the caller's transaction, so the events still commit with the changes they
    describe; if the block raises, they are dropped with the rest of the transaction."""
    if getattr(_held, "rows", None) is not None:  # an outer batch inserts them
        yield
        return
    _held.rows = []
    try:
        yield
        rows = _held.rows
    finally:
        _held.rows = None
    insert_rows(rows)


@dataclass(frozen=True)
class Doorbell:
    job: str
    user: str

    def __call__(self) -> None:
        ring(self.job, self.user)


def _ring_after_commit(doorbell: Doorbell) -> None:
    """Once per job per transaction, however many events it appends: listeners re-read the log."""
    connection = transaction.get_connection()
    if connection.in_atomic_block and any(callback == doorbell for _, callback, *_ in connection.run_on_commit):
        return
    transaction.on_commit(doorbell)


def ring(*groups: str, message: dict[str, Any] | None = None) -> None:
    message = message or {"type": "doorbell"}
    layer = get_channel_layer()
    if layer is None:
        return
    # The pub/sub layer (doorbell_layer.py) rings from any thread, without waiting for an event
    # loop. Asked by name, so that a process without Redis never imports its client (about 20 MiB).
    if callable(ring_now := getattr(layer, "ring", None)):
        ring_now(groups, message)
        return

    async def send_all() -> None:
        try:
            for group in groups:
                await layer.group_send(group, message)
        except Exception:  # a doorbell is best effort: listeners also poll the log
            logger.warning("could not ring %s", groups, exc_info=True)

    loop = _loop
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is not None:
        running.create_task(send_all())
    elif loop is not None and loop.is_running() and not loop.is_closed():
        asyncio.run_coroutine_threadsafe(send_all(), loop)
    else:
        async_to_sync(send_all)()


def wake_executors(**data: Any) -> None:
    """Tell executors there is work (or a cancellation) without waiting for their next poll."""
    transaction.on_commit(lambda: ring(EXECUTORS_GROUP, message={"type": "executor.wake", **data}))
