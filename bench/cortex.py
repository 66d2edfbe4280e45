"""Cortex's side: jobs submitted through `services.job_submit` and driven by the real `Executor`
against a real SQLite database. The executor runs in this process; the jobs are submitted from a
process of their own, as the web submits them where `serve` runs jobs in a `runjobs` child (its
default on SQLite and with Redis, on a machine with a core to spare), their doorbells crossing over
the channel layer; `--submit-in-process` submits from a thread of this process instead.

    python -m bench.cortex prepare --conversation FILE      # migrate, create the user, record the request
    python -m bench.cortex run --jobs 200 --at-once 1 --rounds 5 [--profile DIR]
    python -m bench.cortex park --jobs 1000 --at-once 250                 # jobs left waiting for a person
    python -m bench.cortex page --events 1000 --renders 7      # a job page with that many events

The environment (CORTEX_VAR_DIR, OPENAI_BASE_URL, ...) is set by the driver, `bench.run`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import multiprocessing
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import Executor as Executor_
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import django

if not os.environ.get("CORTEX_VAR_DIR"):
    # Without it this would fill the site's own database with benchmark jobs.
    raise SystemExit("bench.cortex runs in a throwaway CORTEX_VAR_DIR: start it through `python -m bench.run`")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cortex_site.settings")
django.setup()  # before the imports below: models and settings need a configured Django

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection, connections
from django.db.models import Count, Q

from orchestrator import services
from orchestrator.engine import state
from orchestrator.engine.executor import Executor
from orchestrator.models import ACTIVE_STATUSES, Job, JobStatus, ToolCallStatus

from .common import (
    MODEL,
    RESULT_PREFIX,
    TASK,
    BenchFailure,
    Conversation,
    Outcome,
    cpu_seconds,
    peak_rss_mb,
    rss_mb,
)

USERNAME = "bench"
SIDE_TIMEOUT = 900  # seconds, as the driver allows a side
WARMUP_JOBS = 3
# A finished Cortex job answers with the orchestrator's own text, as the floor does; asking a
# chat-role model to rewrite it would be one more model call that the floor does not make.
OPTIONS = services.JobOptions(respond_with_final=False)


# --- prepare -----------------------------------------------------------------------------------

def prepare(conversation_path: Path) -> None:
    """Build the database every run starts from, and record what a job's first model request
    holds (system prompt, task, offered tools) so the floor can send exactly the same."""
    call_command("migrate", verbosity=0, interactive=False)
    user = get_user_model().objects.create_user(USERNAME, password=None)
    probe = services.job_submit(user=user, task=TASK, options=OPTIONS)
    # Claim the probe and ask the engine for its next step: the request the model would receive.
    claimed = state.jobs_claim(owner="bench-probe", limit=1)
    if claimed != [str(probe.id)]:
        raise BenchFailure(f"prepare: expected to claim the probe job, claimed {claimed}")
    action = state.next_action(owner="bench-probe", job_id=str(probe.id))
    if not isinstance(action, state.CallModel):
        raise BenchFailure(f"prepare: the probe job's first step is {action!r}, not a model call")
    if action.model != f"openai:{MODEL}":
        raise BenchFailure(f"prepare: jobs would call {action.model}, not openai:{MODEL}")
    if not any(spec["name"] == "current_time" for spec in action.tools):
        raise BenchFailure("prepare: current_time is not offered to the bench user")
    Conversation(model=MODEL, system=action.system, task=action.messages[-1]["content"],
                 tools=action.tools).save(conversation_path)
    probe.session.delete()
    probe.delete()
    if connection.vendor == "sqlite":
        # Fold the WAL into the main file, so copying that one file copies the whole database.
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connections.close_all()


# --- run ---------------------------------------------------------------------------------------

def _submit(user_id: int, count: int) -> list[str]:
    user = get_user_model().objects.get(pk=user_id)
    return [str(services.job_submit(user=user, task=TASK, options=OPTIONS).id) for _ in range(count)]


class Submitter:
    """Submits jobs through `services.job_submit`, as the web does, keeping its database connection
    open between submissions as a web worker does: from a process of its own by default, as
    `serve` runs the web apart from the executor (a `runjobs` child) on SQLite and with Redis,
    its doorbells reaching the executor over the channel layer; or (`in_process`) from a thread of
    the executor's process, as `serve --workers 0` runs both."""

    def __init__(self, user: Any, *, in_process: bool = False) -> None:
        self.user = user
        self.in_process = in_process
        self.reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-read")
        self.pool: Executor_ = (self.reads if in_process else ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn")))

    async def submit(self, count: int) -> list[str]:
        return await asyncio.get_running_loop().run_in_executor(self.pool, _submit, self.user.pk, count)

    async def unfinished(self, ids: list[str]) -> int:
        def count() -> int:
            return Job.objects.filter(id__in=ids, status__in=ACTIVE_STATUSES).count()
        return await asyncio.get_running_loop().run_in_executor(self.reads, count)

    async def waiting(self, ids: list[str]) -> dict[str, int]:
        """How many of the jobs are in each status, counting as waiting only those no executor holds."""
        def count() -> dict[str, int]:
            rows = (Job.objects.filter(id__in=ids).exclude(status=JobStatus.AWAITING_CONFIRMATION, lease_owner__gt="")
                    .order_by().values_list("status").annotate(n=Count("id")))
            return dict(rows)
        return await asyncio.get_running_loop().run_in_executor(self.reads, count)

    async def cpu_seconds(self) -> float | None:
        """The submitting process's CPU time so far (None when it is this process)."""
        if self.in_process:
            return None
        return await asyncio.get_running_loop().run_in_executor(self.pool, cpu_seconds)

    def peak_rss_mb(self) -> float | None:
        """The submitting process's peak resident memory (None when it is this process)."""
        if self.in_process:
            return None
        return self.pool.submit(peak_rss_mb).result()

    def close(self) -> None:
        self.reads.submit(connections.close_all).result()
        self.reads.shutdown()
        if not self.in_process:
            self.pool.shutdown()


async def one_at_a_time(executor: Executor, submitter: Submitter, count: int) -> list[str]:
    """The serial scenario: each job is submitted once the previous one has finished, as the
    floor starts each job when the last one is done."""
    ids = []
    for _ in range(count):
        [job_id] = await submitter.submit(1)
        await until_finished(executor, submitter, job_id)
        ids.append(job_id)
    return ids


async def until_finished(executor: Executor, submitter: Submitter, job_id: str) -> None:
    """The submission's doorbell makes the executor claim the job and start a task for it, which
    ends when the job does: wait for that task, not for a poll of the database."""
    waited = 0.0
    while (task := executor.tasks.get(job_id)) is None:
        await asyncio.sleep(0.0005)
        waited += 0.0005
        if waited >= 1.0:  # the task came and went unseen (or never came): ask the database
            if not await submitter.unfinished([job_id]):
                return
            waited = 0.0
    await asyncio.wait([task])


async def all_at_once(executor: Executor, submitter: Submitter, count: int) -> list[str]:
    """The concurrent scenario: every job is submitted while the executor works (it claims them
    as they come, up to its concurrency); returns once every one of them has finished."""
    submitting = asyncio.ensure_future(submitter.submit(count))
    while True:
        await asyncio.sleep(0.005)
        # Only ask the database when the executor holds nothing: at the end, or in a lull.
        if submitting.done() and not executor.tasks:
            ids = submitting.result()
            if not await submitter.unfinished(ids):
                return ids


def verify(ids: list[str], rounds: int) -> None:
    jobs = (Job.objects.filter(id__in=ids)
            .annotate(succeeded=Count("tool_calls", filter=Q(tool_calls__status=ToolCallStatus.SUCCEEDED)))
            .values_list("id", "status", "rounds", "succeeded", "error"))
    bad = [row for row in jobs if row[1] != JobStatus.COMPLETE or row[2] != rounds or row[3] != rounds]
    if len(jobs) != len(ids) or bad:
        sample = "; ".join(f"{job_id}: {status}, {r} rounds, {s} tool results, {error or ''}"
                           for job_id, status, r, s, error in bad[:5])
        raise BenchFailure(f"cortex: {len(bad)} of {len(ids)} jobs did not complete with {rounds} rounds: {sample}")


class Profiler:
    """cProfile over the measured span, plus every SQL statement the executor's database thread
    sends (where every transaction runs), counted by shape.

    On Python 3.12 and later one cProfile sees every thread; the GIL runs one at a time, so
    `tottime` is a fair split of the CPU, while `cumtime` of functions that wait is not.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.profile = cProfile.Profile()
        self.queries: Counter[str] = Counter()
        self.query_seconds: defaultdict[str, float] = defaultdict(float)

    def _record(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            shape = query_shape(sql)
            self.queries[shape] += 1
            self.query_seconds[shape] += time.perf_counter() - started

    def _watch_queries(self) -> None:
        connection.execute_wrappers.append(self._record)

    def _unwatch_queries(self) -> None:
        connection.execute_wrappers.remove(self._record)

    async def start(self, executor: Executor) -> None:
        await executor.db.run(self._watch_queries)
        self.profile.enable()

    async def stop(self, executor: Executor, *, jobs: int, rounds: int) -> None:
        self.profile.disable()
        await executor.db.run(self._unwatch_queries)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.profile.dump_stats(self.directory / "cortex.prof")
        per_round = jobs * rounds
        summary = [{"query": shape, "count": count, "per_round": round(count / per_round, 2),
                    "ms_per_round": round(self.query_seconds[shape] * 1000 / per_round, 3)}
                   for shape, count in self.queries.most_common()]
        (self.directory / "queries.json").write_text(json.dumps(summary, indent=1))


def query_shape(sql: str) -> str:
    """A statement without its values: the verb and the tables it names."""
    sql = sql.strip()
    verb = sql.split(None, 1)[0].upper() if sql else "?"
    if verb in ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"):
        return verb
    tables = sorted(set(re.findall(r'(?:FROM|INTO|UPDATE|JOIN)\s+"([a-z_]+)"', sql)))
    detail = ""
    if verb == "SELECT" and "FOR UPDATE" in sql.upper():
        detail = " FOR UPDATE"
    if verb == "UPDATE":
        detail = " SET " + ",".join(sorted(set(re.findall(r'"([a-z_]+)" = ', sql.split(" WHERE ")[0]))))
    return f"{verb} {','.join(tables)}{detail}"


async def run(args: argparse.Namespace) -> Outcome:
    user = await asyncio.to_thread(lambda: get_user_model().objects.get(username=USERNAME))
    submitter = Submitter(user, in_process=args.submit_in_process)
    batch = one_at_a_time if args.at_once == 1 else all_at_once
    executor = Executor(concurrency=args.at_once)
    running = asyncio.create_task(executor.run())
    await asyncio.sleep(0)  # let the executor bind its loop, so submissions ring its doorbell
    try:
        await one_at_a_time(executor, submitter, WARMUP_JOBS)  # connections, lazy imports, SQLite cache
        profiler = Profiler(args.profile) if args.profile else None
        if profiler:
            await profiler.start(executor)
        submitter_cpu = await submitter.cpu_seconds()
        started, cpu_started = time.perf_counter(), cpu_seconds()
        ids = await batch(executor, submitter, args.jobs)
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
        if submitter_cpu is not None:
            submitter_cpu = await submitter.cpu_seconds() - submitter_cpu
        if profiler:
            await profiler.stop(executor, jobs=args.jobs, rounds=args.rounds)
        submitter_peak = submitter.peak_rss_mb()
    finally:
        await executor.stop()
        await running
        submitter.close()
    await asyncio.to_thread(verify_and_close, ids, args.rounds)
    return Outcome(side="cortex", jobs=args.jobs, rounds=args.rounds, at_once=args.at_once, seconds=seconds,
                   cpu_seconds=cpu, peak_rss_mb=peak_rss_mb(), submitter_cpu_seconds=submitter_cpu,
                   submitter_peak_rss_mb=submitter_peak)


async def park(args: argparse.Namespace) -> dict[str, Any]:
    """Jobs that stop for a person: every job's first call (current_time, which the bench user's
    policy is set to confirm) waits for a confirmation that never comes. Such a job should hold no
    executor task and no memory: compares the process's resident memory before the jobs are
    submitted with after they have all stopped to wait (both after a collection)."""
    user = await asyncio.to_thread(_ask_before_current_time)
    submitter = Submitter(user, in_process=True)
    executor = Executor(concurrency=args.at_once)
    running = asyncio.create_task(executor.run())
    await asyncio.sleep(0)
    try:
        await all_waiting(executor, submitter, WARMUP_JOBS)  # connections, lazy imports
        gc.collect()
        before = rss_mb()
        ids = await all_waiting(executor, submitter, args.jobs)
        tasks = len(executor.tasks)
        gc.collect()
        after = rss_mb()
    finally:
        await executor.stop()
        await running
        submitter.close()
    return {"jobs": len(ids), "executor_tasks": tasks, "rss_before_mb": round(before, 1),
            "rss_after_mb": round(after, 1), "rss_growth_mb": round(after - before, 1)}


def _ask_before_current_time() -> Any:
    user = get_user_model().objects.get(username=USERNAME)
    services.policy_update(user=user, max_risk="high", overrides={}, confirmations={"current_time": "ask"})
    return user


async def all_waiting(executor: Executor, submitter: Submitter, count: int) -> list[str]:
    """Submit `count` jobs; return once each waits for a person, let go by the executor."""
    submitting = asyncio.ensure_future(submitter.submit(count))
    for _ in range(SIDE_TIMEOUT * 10):
        await asyncio.sleep(0.1)
        if submitting.done() and not executor.tasks:
            ids = submitting.result()
            counts = await submitter.waiting(ids)
            if counts.get(JobStatus.AWAITING_CONFIRMATION) == len(ids):
                return ids
            if set(counts) - {JobStatus.AWAITING_CONFIRMATION, JobStatus.QUEUED, JobStatus.RUNNING}:
                raise BenchFailure(f"park: jobs that should wait for a person ended otherwise: {counts}")
    raise BenchFailure("park: the jobs did not all stop to wait for a person")


async def page(args: argparse.Namespace) -> dict[str, Any]:
    """One real job, driven by the executor through as many rounds as the model server is set to
    ask for, then its page (`/jobs/<id>/`) rendered by the server through Django's test client
    (the whole request: middleware, session, view, template), median of `renders` after one
    untimed render."""
    user = await asyncio.to_thread(lambda: get_user_model().objects.get(username=USERNAME))
    submitter = Submitter(user, in_process=True)
    executor = Executor(concurrency=1)
    running = asyncio.create_task(executor.run())
    await asyncio.sleep(0)
    try:
        [job_id] = await one_at_a_time(executor, submitter, 1)
    finally:
        await executor.stop()
        await running
        submitter.close()
    return await asyncio.to_thread(_render_page, user, job_id, args.events, args.renders)


def _render_page(user: Any, job_id: str, events: int, renders: int) -> dict[str, Any]:
    from django.test import Client

    try:
        job = Job.objects.get(id=job_id)
        if job.status != JobStatus.COMPLETE or job.last_seq != events:
            raise BenchFailure(f"page: the job ended {job.status} with {job.last_seq} events, not complete "
                               f"with {events}")
        client = Client(HTTP_HOST="127.0.0.1")
        client.force_login(user)
        timings = []
        for attempt in range(renders + 1):
            started = time.perf_counter()
            response = client.get(f"/jobs/{job_id}/")
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                raise BenchFailure(f"page: /jobs/{job_id}/ answered {response.status_code}")
            if attempt:
                timings.append(elapsed)
        timings.sort()
        return {"events": job.last_seq, "rounds": job.rounds, "renders": renders,
                "median_ms": round(timings[len(timings) // 2] * 1000, 1), "max_ms": round(timings[-1] * 1000, 1),
                "bytes": len(response.content)}
    finally:
        connections.close_all()


def verify_and_close(ids: list[str], rounds: int) -> None:
    try:
        verify(ids, rounds)
    finally:
        connections.close_all()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cortex", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare")
    prep.add_argument("--conversation", type=Path, required=True)
    go = commands.add_parser("run")
    go.add_argument("--jobs", type=int, required=True)
    go.add_argument("--at-once", type=int, default=1, help="the executor's concurrency")
    go.add_argument("--rounds", type=int, default=5)
    go.add_argument("--profile", type=Path, default=None, help="write cProfile stats and a query count here")
    go.add_argument("--submit-in-process", action="store_true",
                    help="submit from a thread of the executor's process (as `serve --workers 0` runs), "
                         "not from a process of its own (as `serve` runs by default)")
    parked = commands.add_parser("park")
    parked.add_argument("--jobs", type=int, required=True)
    parked.add_argument("--at-once", type=int, default=250, help="the executor's concurrency")
    paged = commands.add_parser("page")
    paged.add_argument("--events", type=int, default=1000, help="events the job is expected to end with")
    paged.add_argument("--renders", type=int, default=7)
    return parser.parse_args(argv)


def main() -> None:
    args = parse()
    if args.command == "prepare":
        prepare(args.conversation)
        return
    if args.command == "park":
        print(RESULT_PREFIX + json.dumps(asyncio.run(park(args))), flush=True)
        return
    if args.command == "page":
        print(RESULT_PREFIX + json.dumps(asyncio.run(page(args))), flush=True)
        return
    asyncio.run(run(args)).emit()


if __name__ == "__main__":
    main()
