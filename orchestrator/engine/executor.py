"""The job executor: claims runnable jobs under a lease, drives each as an asyncio task, keeps
the leases alive with a heartbeat, and stops a job's task as soon as it is cancelled elsewhere.

One executor carries hundreds of jobs at once: a job waiting on its model is a suspended
coroutine, not a thread. Several executors (in one or many processes or machines) share the
database safely: a job is driven only by the holder of its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import uuid

from channels.layers import get_channel_layer
from django.conf import settings

from .. import events
from ..tools.registry import registry
from . import periodic, state
from .loop import Database, drive

logger = logging.getLogger(__name__)

WATCH_SECONDS = 0.5
LISTEN_SECONDS = 5.0  # at most this long the first claim waits for the doorbells' channel
PERIODIC_SECONDS = 0.5  # how often the executor looks for due periodic work
INTERNAL_ERROR = "internal error: the job stopped on an unexpected problem; the server's log has the details"


class Executor:
    def __init__(self, *, concurrency: int | None = None, owner: str | None = None,
                 db_threads: int | None = None) -> None:
        self.concurrency = concurrency or settings.CORTEX_EXECUTOR_CONCURRENCY
        self.owner = owner or f"{platform.node()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.db = Database(db_threads or (1 if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3") else 4))
        self.tasks: dict[str, asyncio.Task] = {}
        self._wake: asyncio.Event | None = None
        self._listening: asyncio.Event | None = None
        self._stopping = False
        self._stopped: asyncio.Event | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        events.bind_loop(loop)
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._listening = asyncio.Event()
        helpers = [loop.create_task(coro) for coro in (self._listen(), self._heartbeat(), self._watch(), self._periodic())]
        logger.info("executor %s running up to %d jobs at once", self.owner, self.concurrency)
        try:
            # The first claim once doorbells are heard: a job submitted between a claim made
            # earlier and the channel's joining would wait for the next poll.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listening.wait(), LISTEN_SECONDS)
            while not self._stopping:
                self._wake.clear()
                free = self.concurrency - len(self.tasks)
                if free > 0:
                    for claimed in await self._claim(free):
                        self._start(claimed.job_id, claimed)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), settings.CORTEX_POLL_SECONDS)
        finally:
            for helper in helpers:
                helper.cancel()
            await self._abandon_all()
            try:  # connections a tool source held open for this executor's jobs
                await registry.aclose()
            except Exception:
                logger.exception("closing the tool sources' connections failed")
            self.db.close()
            self._stopped.set()
            logger.info("executor %s stopped", self.owner)

    async def stop(self) -> None:
        """Stop claiming, hand every held job back (its lease released), and return when done."""
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._listening is not None:
            self._listening.set()
        if self._stopped is not None:
            await self._stopped.wait()

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _claim(self, limit: int) -> list[state.Claimed]:
        try:
            return await self.db.run(state.jobs_claim_and_step, owner=self.owner, limit=limit,
                                     busy=frozenset(self.tasks))
        except Exception:
            logger.exception("claiming jobs failed; trying again at the next poll")
            return []

    def _start(self, job_id: str, claimed: state.Claimed | None = None) -> None:
        previous = self.tasks.get(job_id)
        if previous is not None:  # its first step waits for the task before it (see `_drive`)
            claimed = None
        self.tasks[job_id] = asyncio.get_running_loop().create_task(self._drive(job_id, previous, claimed),
                                                                    name=f"job {job_id}")

    async def _drive(self, job_id: str, previous: asyncio.Task | None, claimed: state.Claimed | None) -> None:
        finished = False
        try:
            if previous is not None:  # a task for the same job that has not quite ended yet
                await asyncio.gather(previous, return_exceptions=True)
            await drive(job_id, owner=self.owner, db=self.db, claimed=claimed)
            finished = True
        except asyncio.CancelledError:
            logger.info("job %s: stopped on this executor", job_id)
        except Exception:
            # The exception's text may quote the database's (SQL, values): it goes to the log only.
            logger.exception("job %s failed inside the executor", job_id)
            await self.db.run(state.job_fail, owner=self.owner, job_id=job_id, error=INTERNAL_ERROR)
            finished = True
        finally:
            if self.tasks.get(job_id) is asyncio.current_task():
                del self.tasks[job_id]
            if not finished and not self._stopping:
                await asyncio.shield(self.db.run(state.job_release, owner=self.owner, job_id=job_id))
            if self._wake is not None:
                self._wake.set()

    def cancel(self, job_id: str) -> None:
        task = self.tasks.get(job_id)
        if task is not None:
            task.cancel()

    async def _abandon_all(self) -> None:
        held = list(self.tasks)
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        for job_id in held:
            await self.db.run(state.job_release, owner=self.owner, job_id=job_id)

    async def _listen(self) -> None:
        """Doorbells from other processes: new work, or a job to stop at once."""
        layer = get_channel_layer()
        if layer is None:
            self._listening.set()
            return
        try:
            channel = await layer.new_channel("executor.")
        except Exception:
            logger.warning("executor doorbell channel could not be opened; polling", exc_info=True)
            self._listening.set()
            return
        while True:
            try:
                await layer.group_add(events.EXECUTORS_GROUP, channel)
                self._listening.set()
                while True:
                    message = await layer.receive(channel)
                    if message.get("cancel"):
                        self.cancel(message["cancel"])
                    self.wake()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("executor doorbell channel failed; polling until it is back", exc_info=True)
                self._listening.set()  # the polls find the work meanwhile
                await asyncio.sleep(settings.CORTEX_POLL_SECONDS)

    async def _heartbeat(self) -> None:
        interval = settings.CORTEX_LEASE_SECONDS / 3
        while True:
            await asyncio.sleep(interval)
            try:
                lost = await self.db.run(state.jobs_heartbeat, owner=self.owner, job_ids=list(self.tasks))
            except Exception:
                logger.exception("heartbeat failed")
                continue
            self._drop(lost)

    async def _watch(self) -> None:
        """Notice cancellations made by other processes within a second, without a doorbell."""
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            if not self.tasks:
                continue
            try:
                lost = await self.db.run(state.jobs_lost, owner=self.owner, job_ids=list(self.tasks))
            except Exception:
                logger.exception("watching held jobs failed")
                continue
            self._drop(lost)

    async def _periodic(self) -> None:
        """Run the periodic work that is due (`engine.periodic`), one task at a time."""
        while True:
            for task in periodic.due():
                try:
                    await self.db.run(task.run, owner=self.owner)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("periodic task %s failed; it runs again at its next time", task.name)
            await asyncio.sleep(PERIODIC_SECONDS)

    def _drop(self, lost: set[str]) -> None:
        for job_id in lost:
            self.cancel(job_id)
