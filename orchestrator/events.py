"""The per-job event log and the doorbells that announce it.

Events are appended in the same transaction as the change they describe; only after the commit
is a doorbell rung on the channel layer. The log stays the stream: a lost doorbell delays an event
but never loses it. The job's doorbell also carries the events its transaction committed, when
they are small (CARRIED_BYTES), so that a listener that has sent everything before them can send
them at once instead of reading them back; one that finds a gap reads the log (see streams.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from .models import Job, JobEvent
from .rows import insert as insert_rows

logger = logging.getLogger(__name__)

EXECUTORS_GROUP = "cortex.executors"
CARRIED_BYTES = 8_000  # a job's doorbell carries its events when their JSON is at most this long

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
    _ring_after_commit(job, rows)
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


class Doorbell:
    """Rung once a transaction commits: the job's group, with the events appended in it (those of
    one savepoint level: see `_ring_after_commit`), and its owner's group."""

    def __init__(self, job: Any, user: Any) -> None:
        self.job, self.user = job_group(job), user_group(user)
        self.rows: list[JobEvent] = []

    def __call__(self) -> None:
        layer = get_channel_layer()
        # A layer that can tell nobody would hear a group (local_layer.py) saves its doorbell.
        heard = getattr(layer, "heard", None)
        groups = heard([self.job, self.user]) if heard is not None else {self.job, self.user}
        if self.job in groups:
            # Only Cortex's own layers keep a plain doorbell where they drop one that carries events
            # (layer_parts.Inbox); on any other, a dropped one would leave its events unsent.
            carried = callable(getattr(layer, "ring", None))
            ring(self.job, message=carrying(self.rows) if carried else None)
        if self.user in groups:
            ring(self.user)


def carrying(rows: list[JobEvent]) -> dict[str, Any]:
    """A doorbell with the committed `rows` as JSON text (`events`), as the log would give them
    back, unless that text is longer than CARRIED_BYTES."""
    text = json.dumps([row.as_dict() for row in rows], separators=(",", ":"))
    return {"type": "doorbell", "events": text} if len(text) <= CARRIED_BYTES else {"type": "doorbell"}


def _ring_after_commit(job: Job, rows: list[JobEvent]) -> None:
    """Once per job per transaction, however many events it appends: listeners send what it carries
    or re-read the log. Rows appended inside a savepoint ride on a doorbell of that savepoint's own,
    which Django drops if the savepoint is rolled back, so no doorbell carries an event that was
    never committed."""
    connection = transaction.get_connection()
    if connection.in_atomic_block:
        level, group = set(connection.savepoint_ids), job_group(job.id)
        for sids, callback, *_ in connection.run_on_commit:
            if isinstance(callback, Doorbell) and callback.job == group and sids == level:
                callback.rows.extend(rows)
                return
    doorbell = Doorbell(job.id, job.user_id)
    doorbell.rows.extend(rows)
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
