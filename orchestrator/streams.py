"""What every WebSocket stream of the event log shares, the JSON one and the browser's.

- The event log is the stream; the channel layer rings a doorbell, which may carry the events that
  rang it (see events.py). A stream joins its groups *before* it first reads the log, so an event
  committed in between still rings.
- A lost doorbell delays an event but never loses it: every `catch_up_seconds` the stream re-reads
  the log anyway.
- A channel layer that fails (Redis down, or silent: see doorbell_layer.py) does not end the
  socket: the stream polls the log every `poll_seconds` until the layer answers again, then
  rejoins its groups and goes back to doorbells.
- A socket opened with a session cookie belongs to that session: signing out closes it at once
  (a doorbell to the session's group), and a session that expired or was removed closes it at
  the next catch-up.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import contextvars
import functools
import hashlib
import logging
import queue
import threading
from collections.abc import Awaitable, Callable
from importlib import import_module
from typing import Any, TypeVar

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer
from channels.utils import await_many_dispatch
from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.db import connections
from django.db.models import Q

from . import events
from .models import JobEvent

logger = logging.getLogger(__name__)
T = TypeVar("T")

SESSION_ENDED = 4401  # the close code a signed-out or expired session's sockets get


def session_group(session_key: str) -> str:
    """The group of one session's sockets; named by a hash, as group names are visible in Redis."""
    return "session." + hashlib.sha256(session_key.encode()).hexdigest()[:40]


def close_session_streams(session_key: str) -> None:
    events.ring(session_group(session_key), message={"type": "session.ended"})


def session_alive(session_key: str, user_id: Any) -> bool:
    """The session still exists, has not expired and is still this user's."""
    data = import_module(settings.SESSION_ENGINE).SessionStore(session_key).load()
    return data.get(SESSION_KEY) is not None and str(data[SESSION_KEY]) == str(user_id)


class LogReaders:
    """The threads on which sockets read the event log.

    Through `database_sync_to_async` alone, every socket's reads ran one after another on the single
    thread that the process's sync code outside a request shares, so an event for one socket waited
    behind the reads of all the others. And a read there opens a database connection and closes it
    again, which on PostgreSQL under load took most of the read (15 ms of 25), so reads queued up
    behind each other. A thread here keeps its connection while reads keep coming, and closes it
    once none has come for `linger_seconds`: busy streams share a few connections, and no
    connection outlives a burst of reads for long (a test's database must be droppable once its
    sockets are gone)."""

    linger_seconds = 0.05

    def __init__(self, count: int) -> None:
        self.count = count
        self.work: queue.SimpleQueue = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.starting = threading.Lock()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on a reader thread, in the caller's context, as `sync_to_async` runs it."""
        self._start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.work.put((loop, future, contextvars.copy_context(), fn, args))
        return await future

    def _start(self) -> None:
        with self.starting:
            while len(self.threads) < self.count:
                thread = threading.Thread(target=self._serve, name=f"cortex-log-{len(self.threads)}", daemon=True)
                thread.start()
                self.threads.append(thread)

    async def events_after(self, job_id: Any, after: int) -> list[dict[str, Any]]:
        """The job's events after `after` (at most EVENTS_PER_READ), as the JSON stream sends them.
        The reads of every socket waiting at that moment are made in one query (`_read_events`)."""
        return await self.run(_EVENTS, job_id, after)

    def _serve(self) -> None:
        later: list[tuple] = []
        while True:
            if later:
                item = later.pop(0)
            else:
                try:
                    item = self.work.get(timeout=self.linger_seconds)
                except queue.Empty:
                    connections.close_all()
                    item = self.work.get()
            if item[3] is _EVENTS:
                self._events(item, later)
            else:
                self._one(item)

    def _one(self, item: tuple) -> None:
        loop, future, context, fn, args = item
        try:
            outcome = functools.partial(future.set_result, context.run(fn, *args))
        except Exception as error:
            connections.close_all()  # a broken connection must not fail the next read too
            outcome = functools.partial(future.set_exception, error)
        _hand_over(loop, future, outcome)

    def _events(self, first: tuple, later: list[tuple]) -> None:
        """`first`, an event read, with every other event read already waiting, in one query; the
        other work taken from the queue meanwhile is left in `later`, in its order."""
        reads = [first]
        with contextlib.suppress(queue.Empty):
            while True:
                item = self.work.get_nowait()
                (reads if item[3] is _EVENTS else later).append(item)
        try:
            found = _read_events([item[4] for item in reads])
        except Exception as error:
            connections.close_all()
            for loop, future, *_ in reads:
                _hand_over(loop, future, functools.partial(future.set_exception, error))
            return
        for loop, future, _, _, (job_id, after) in reads:
            _hand_over(loop, future, functools.partial(future.set_result, found(job_id, after)))


_EVENTS = object()  # in place of a function: an event read, which `LogReaders._events` makes


EVENTS_PER_READ = 500


def _read_events(reads: list[tuple[Any, int]]) -> Callable[[Any, int], list[dict[str, Any]]]:
    """One query for the events each (job id, after) read asks for; returns the lookup of each
    read's own: its job's events after its `after`, at most EVENTS_PER_READ of them, in order."""
    wanted = Q()
    for job_id, after in set(reads):
        wanted |= Q(job_id=job_id, seq__gt=after, seq__lte=after + EVENTS_PER_READ)
    by_job: dict[str, list[dict[str, Any]]] = {}
    for job_id, seq, kind, at, data in (JobEvent.objects.filter(wanted).order_by("job_id", "seq")
                                        .values_list("job_id", "seq", "type", "at", "data")):
        by_job.setdefault(str(job_id), []).append(JobEvent.as_row_dict(seq, kind, at, data))

    def found(job_id: Any, after: int) -> list[dict[str, Any]]:
        return [event for event in by_job.get(str(job_id), ())
                if after < event["seq"] <= after + EVENTS_PER_READ]

    return found


def _hand_over(loop: asyncio.AbstractEventLoop, future: asyncio.Future, outcome: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
        loop.call_soon_threadsafe(_settle, future, outcome)


def _settle(future: asyncio.Future, outcome: Callable[[], None]) -> None:
    if not future.done():  # not cancelled: the socket still waits
        outcome()


_readers = LogReaders(2)


def events_after(job_id: Any, after: int) -> Awaitable[list[dict[str, Any]]]:
    """The job's events after `after`, read on a log reader thread, with other sockets' reads."""
    return _readers.events_after(job_id, after)


def log_reader(fn: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """`fn` run on a log reader thread. A socket reads with one call at a time (its `read_log`
    holds a lock), so whatever the socket keeps between reads is never touched by two threads at
    once."""
    return functools.partial(_readers.run, fn)


class LogStream(abc.ABC):
    """For AsyncWebsocketConsumer subclasses: `join` the groups in `connect` (before the first
    read), `start_catching_up` once accepted, and implement `read_log` (send what is new)."""

    catch_up_seconds: float = 15.0
    poll_seconds: float = 1.0

    doorbell_groups: tuple[str, ...] = ()
    layer_down: bool = False
    catching_up: asyncio.Task | None = None

    async def __call__(self, scope, receive, send) -> None:
        # AsyncConsumer.__call__, except that the channel layer's messages come through
        # `next_doorbell`, which survives the layer failing instead of ending the socket (1011).
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self.base_send = send
        with contextlib.suppress(StopConsumer):
            await await_many_dispatch([receive, self.next_doorbell], self.dispatch)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels' own dispatch first closes stale database connections through `sync_to_async`:
        # a hop, for every doorbell of every socket, to the one thread that the process's sync
        # code outside a request shares, where it waited behind the HTTP requests' work (p99
        # 65 ms under load). A stream touches the database only on log reader threads or through
        # `database_sync_to_async`, which closes stale connections itself, before and after.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    @abc.abstractmethod
    async def read_log(self) -> None:
        """Send what changed since the last read."""

    async def join(self, *groups: str) -> None:
        session_key = self.session_key
        self.doorbell_groups = (*groups, session_group(session_key)) if session_key else groups
        await self._join_all()

    @property
    def session_key(self) -> str | None:
        if self.scope.get("auth_method") != "session" or "session" not in self.scope:
            return None
        return self.scope["session"].session_key

    async def _join_all(self) -> bool:
        try:
            for group in self.doorbell_groups:
                await self.channel_layer.group_add(group, self.channel_name)
        except Exception:  # any failure of the layer: the log is still there to poll
            if not self.layer_down:
                logger.warning("channel layer unavailable; polling the event log", exc_info=True)
            self.layer_down = True
            return False
        if self.layer_down:
            logger.info("channel layer back; doorbells again")
        self.layer_down = False
        return True

    async def next_doorbell(self) -> dict[str, Any]:
        """The next message from the channel layer. While the layer is down, a doorbell of our own
        every `poll_seconds`, so the log is polled, until the groups can be joined again."""
        if self.layer_down:
            await asyncio.sleep(self.poll_seconds)
            await self._join_all()
            return {"type": "doorbell"}
        try:
            return await self.channel_layer.receive(self.channel_name)
        except Exception:
            logger.warning("channel layer receive failed; polling the event log", exc_info=True)
            self.layer_down = True
            return {"type": "doorbell"}

    def start_catching_up(self) -> None:
        self.catching_up = asyncio.create_task(self._catch_up())

    async def _catch_up(self) -> None:
        session_key = self.session_key
        while True:
            await asyncio.sleep(self.catch_up_seconds)
            if session_key and not await database_sync_to_async(session_alive)(session_key, self.scope["user"].pk):
                await self.close(code=SESSION_ENDED)
                return
            await self.read_log()

    async def leave(self) -> None:
        if self.catching_up is not None:
            self.catching_up.cancel()
        for group in self.doorbell_groups:
            with contextlib.suppress(Exception):  # a layer that is down forgets us anyway
                await self.channel_layer.group_discard(group, self.channel_name)

    async def doorbell(self, message: dict[str, Any]) -> None:
        await self.read_log()

    async def session_ended(self, message: dict[str, Any]) -> None:
        await self.close(code=SESSION_ENDED)
