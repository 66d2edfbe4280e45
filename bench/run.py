"""`make bench`: Cortex against the floor, on the same fake model server, in the same run.

Two scenarios, each with its own fake OpenAI-compatible server in a separate process:
- serial, zero model latency: time per tool round, jobs strictly one after another;
- concurrent, with model latency: jobs per second with many jobs in flight, and peak memory.
- latency, long model latency: many jobs at once, each model call slow; how close each side's
  wall time comes to the ideal (every job's model calls back to back, all jobs in parallel).
Cortex alone: jobs that stop to wait for a person, and what the executor keeps holding for them
(tasks, resident memory); a job page with 1,000 events, rendered by the server; and, through
`manage.py serve` in a process of its own (`bench.web`), jobs end to end as an API client sees
them (`POST /orchestrate`, then the job's WebSocket), submissions while jobs run, and a crowd of
clients submitting at the same moment.

Every measurement runs in a fresh process (`python -m bench.floor` or `python -m bench.cortex run`),
so its peak memory is that side's alone. The two sides alternate, and each measurement is repeated,
so a machine that speeds up or slows down during the run affects both sides alike.

Prints the figures as JSON on stdout; progress and one verdict line per target go to stderr.
The exit status is 0 whether or not a target is met (this is a measurement, not a test); it is
non-zero only when a side failed to run its jobs as specified.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

from . import web
from .common import RESULT_PREFIX, Outcome

ROOT = Path(__file__).resolve().parent.parent
SERIAL_TARGET = 1.5  # Cortex's time per round at most this many times the floor's
THROUGHPUT_TARGET = 0.7  # Cortex's jobs per second at least this share of the floor's
PARKED_MEMORY_TARGET = 10.0  # MiB the executor's process may grow by for jobs waiting for a person
MEMORY_TARGET = 150.0  # MiB: Cortex's peak resident memory in the concurrent scenario
LATENCY_TARGET = 0.9  # ideal wall time / wall time with slow model calls, at least
END_TO_END_TARGET = 2.0  # a round through the API and WebSocket at most this many times the floor's
SUBMISSIONS_TARGET = 150.0  # submissions per second, at least
SUBMISSIONS_P99_TARGET = 1000.0  # ms, at most
PAGE_TARGET = 100.0  # ms to render a job page with 1,000 events, at most
EVENT_P50_TARGET, EVENT_P99_TARGET = 20.0, 100.0  # ms from an event's commit to a WebSocket, PostgreSQL + Redis
ALONE = ("events", "web", "latency")  # the parts `--only` runs by themselves
SIDE_TIMEOUT = 900  # seconds; a side taking longer than this is stuck, not slow
# Every setting a caller's environment might hold that would change what is measured.
DROPPED_PREFIXES = ("CORTEX_", "OPENAI_", "DJANGO_")


class BenchError(RuntimeError):
    """A side that did not run its jobs as specified: the run is void."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the fake model server ---------------------------------------------------------------------

class FakeServer:
    """The fake OpenAI-compatible server as a child process, so serving requests never competes
    with the measured side for its event loop or its GIL."""

    def __init__(self, *, latency: float, rounds: int, env: dict[str, str]) -> None:
        self.latency, self.rounds, self.env = latency, rounds, env
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> Self:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.openai_fake", "--host", "127.0.0.1", "--port", "0",
             "--latency", str(self.latency), "--rounds", str(self.rounds)],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, text=True)
        lines: queue.Queue[str] = queue.Queue()
        assert self.process.stdout is not None
        stdout = self.process.stdout
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=30)
        except queue.Empty:
            line = ""
        if not line.startswith("LISTENING "):
            self.__exit__(None, None, None)
            raise BenchError(f"the fake model server did not start (said {line!r})")
        self.base_url = line.split(None, 1)[1].strip()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()  # by its own pid: SIGTERM, which the fake handles by closing cleanly
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


# --- running one side --------------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    name: str
    jobs: int
    at_once: int
    rounds: int


class Sides:
    """Runs a measurement of either side in its own process and reads back its figures."""

    def __init__(self, workdir: Path, env: dict[str, str], conversation: Path, template: Path, *,
                 submit_in_process: bool = False) -> None:
        self.workdir, self.env, self.conversation, self.template = workdir, env, conversation, template
        self.submit_in_process = submit_in_process
        self.cortex_runs = 0

    def _child(self, argv: list[str], env: dict[str, str]) -> Outcome:
        try:
            done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=SIDE_TIMEOUT, check=False)
        except subprocess.TimeoutExpired as error:
            raise BenchError(f"{' '.join(argv[:2])} did not finish within {SIDE_TIMEOUT} s") from error
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        if done.returncode != 0 or not lines:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
            raise BenchError(f"{' '.join(argv[:3])} failed (exit {done.returncode}):\n{tail}")
        return Outcome(**json.loads(lines[-1][len(RESULT_PREFIX):]))

    def floor(self, scenario: Scenario, base_url: str) -> Outcome:
        return self._child(["-m", "bench.floor", "--base-url", base_url, "--conversation", str(self.conversation),
                            "--jobs", str(scenario.jobs), "--at-once", str(scenario.at_once),
                            "--rounds", str(scenario.rounds)], self.env)

    def cortex(self, scenario: Scenario, base_url: str, profile: Path | None = None) -> Outcome:
        # A fresh copy of the migrated database for every run: no run reads another's rows.
        self.cortex_runs += 1
        var_dir = self.workdir / f"cortex-{self.cortex_runs}"
        var_dir.mkdir()
        shutil.copyfile(self.template / "cortex.sqlite3", var_dir / "cortex.sqlite3")
        env = {**self.env, "CORTEX_VAR_DIR": str(var_dir), "OPENAI_BASE_URL": base_url}
        argv = ["-m", "bench.cortex", "run", "--jobs", str(scenario.jobs), "--at-once", str(scenario.at_once),
                "--rounds", str(scenario.rounds)]
        if profile is not None:
            argv += ["--profile", str(profile)]
        if self.submit_in_process:
            argv.append("--submit-in-process")
        try:
            return self._child(argv, env)
        finally:
            shutil.rmtree(var_dir, ignore_errors=True)

    def park(self, jobs: int, at_once: int, base_url: str) -> dict[str, Any]:
        return self._cortex_alone(["park", "--jobs", str(jobs), "--at-once", str(at_once)], base_url)

    def page(self, events: int, renders: int, base_url: str) -> dict[str, Any]:
        # queued, running, four events a round (model turn, call, started, finished), the final
        # turn and complete: a job of (events - 4) / 4 rounds ends with `events` events.
        return self._cortex_alone(["page", "--events", str(events), "--renders", str(renders)], base_url,
                                  CORTEX_MAX_ROUNDS=str(page_rounds(events)))

    def _cortex_alone(self, argv: list[str], base_url: str, **extra_env: str) -> dict[str, Any]:
        self.cortex_runs += 1
        var_dir = self.workdir / f"cortex-{self.cortex_runs}"
        var_dir.mkdir()
        shutil.copyfile(self.template / "cortex.sqlite3", var_dir / "cortex.sqlite3")
        env = {**self.env, "CORTEX_VAR_DIR": str(var_dir), "OPENAI_BASE_URL": base_url, **extra_env}
        argv = ["-m", "bench.cortex", *argv]
        try:
            done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=SIDE_TIMEOUT, check=False)
        except subprocess.TimeoutExpired as error:
            raise BenchError(f"bench.cortex {argv[2]} did not finish within {SIDE_TIMEOUT} s") from error
        finally:
            shutil.rmtree(var_dir, ignore_errors=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        if done.returncode != 0 or not lines:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
            raise BenchError(f"bench.cortex {argv[2]} failed (exit {done.returncode}):\n{tail}")
        return json.loads(lines[-1][len(RESULT_PREFIX):])

    def web_server(self, base_url: str, serve_args: list[str]) -> web.WebServer:
        self.cortex_runs += 1
        return web.WebServer(root=ROOT, env=self.env, var_dir=self.workdir / f"cortex-{self.cortex_runs}",
                             template=self.template, model_url=base_url, serve_args=serve_args)

    def prepare(self) -> None:
        env = {**self.env, "CORTEX_VAR_DIR": str(self.template)}
        done = subprocess.run([sys.executable, "-m", "bench.cortex", "prepare", "--conversation",
                               str(self.conversation)], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=SIDE_TIMEOUT, check=False)
        if done.returncode != 0:
            raise BenchError(f"preparing the Cortex database failed:\n{done.stderr.strip()[-2000:]}")


def page_rounds(events: int) -> int:
    return max(1, (events - 4) // 4)


def alternate(sides: Sides, scenario: Scenario, base_url: str, repeats: int) -> list[tuple[Outcome, Outcome]]:
    """(cortex, floor) pairs, run back to back, the order swapped every time so that neither side
    always gets the warmer (or the cooler) machine."""
    pairs = []
    for repeat in range(repeats):
        order = ("floor", "cortex") if repeat % 2 == 0 else ("cortex", "floor")
        got: dict[str, Outcome] = {}
        for side in order:
            got[side] = sides.floor(scenario, base_url) if side == "floor" else sides.cortex(scenario, base_url)
            log(f"  {scenario.name} {repeat + 1}/{repeats} {side:6s} {describe(got[side])}")
        pairs.append((got["cortex"], got["floor"]))
    return pairs


def describe(outcome: Outcome) -> str:
    return (f"{outcome.jobs} jobs in {outcome.seconds:.2f} s: {per_round_ms(outcome):.2f} ms/round, "
            f"{outcome.jobs / outcome.seconds:.1f} jobs/s, cpu {cpu_ms_per_round(outcome):.2f} ms/round, "
            f"peak {outcome.peak_rss_mb:.0f} MiB"
            + (f"; submitting process cpu {outcome.submitter_cpu_seconds * 1000 / (outcome.jobs * outcome.rounds):.2f}"
               f" ms/round, peak {outcome.submitter_peak_rss_mb:.0f} MiB"
               if outcome.submitter_cpu_seconds is not None and outcome.submitter_peak_rss_mb is not None else ""))


# --- figures -----------------------------------------------------------------------------------

def per_round_ms(outcome: Outcome) -> float:
    return outcome.seconds * 1000 / (outcome.jobs * outcome.rounds)


def cpu_ms_per_round(outcome: Outcome) -> float:
    return outcome.cpu_seconds * 1000 / (outcome.jobs * outcome.rounds)


def jobs_per_second(outcome: Outcome) -> float:
    return outcome.jobs / outcome.seconds


def compare(cortex: float, floor: float, *, digits: int = 2) -> dict[str, Any]:
    return {"cortex": round(cortex, digits), "floor": round(floor, digits), "ratio": round(cortex / floor, 2)}


Figure = Callable[[Outcome], float]


def paired(pairs: list[tuple[Outcome, Outcome]], figure: Figure, *, digits: int = 2) -> dict[str, Any]:
    """Each side's median, and the median of the ratios of runs made back to back: a machine
    that drifts during the run moves both runs of a pair alike, so their ratio stays fair."""
    return {"cortex": round(statistics.median(figure(c) for c, _ in pairs), digits),
            "floor": round(statistics.median(figure(f) for _, f in pairs), digits),
            "ratio": round(median_ratio(pairs, figure), 2)}


def median_ratio(pairs: list[tuple[Outcome, Outcome]], figure: Figure) -> float:
    """The median ratio unrounded: verdicts are on it, so that a figure just past its target does
    not round into it."""
    return statistics.median(figure(c) / figure(f) for c, f in pairs)


def efficiency(outcome: Outcome, latency: float) -> float:
    """Ideal wall time over wall time: ideally every job's model calls (its rounds and the final
    answer) run back to back, all jobs at once, and nothing else takes any time."""
    waves = -(-outcome.jobs // outcome.at_once)
    return waves * (outcome.rounds + 1) * latency / outcome.seconds


def verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


def report(serial: list[tuple[Outcome, Outcome]], concurrent: list[tuple[Outcome, Outcome]],
           latency: list[tuple[Outcome, Outcome]], slow: float, parked: dict[str, Any], page: dict[str, Any],
           served: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    per_round = paired(serial, per_round_ms)
    per_round.update(target=f"<= {SERIAL_TARGET}", met=median_ratio(serial, per_round_ms) <= SERIAL_TARGET,
                     runs=[compare(per_round_ms(c), per_round_ms(f)) for c, f in serial])
    throughput = paired(concurrent, jobs_per_second, digits=1)
    throughput.update(target=f">= {THROUGHPUT_TARGET}", met=median_ratio(concurrent, jobs_per_second) >= THROUGHPUT_TARGET,
                      runs=[compare(jobs_per_second(c), jobs_per_second(f), digits=1) for c, f in concurrent])
    # The highest peak any run of each side reached in the concurrent scenario.
    memory = compare(max(c.peak_rss_mb for c, _ in concurrent), max(f.peak_rss_mb for _, f in concurrent), digits=1)
    memory.update(scenario="concurrent", target=f"<= {MEMORY_TARGET:g} MiB", met=memory["cortex"] <= MEMORY_TARGET)
    efficient = paired(latency, lambda outcome: efficiency(outcome, slow), digits=3)
    efficient.update(target=f">= {LATENCY_TARGET}",
                     met=statistics.median(efficiency(c, slow) for c, _ in latency) >= LATENCY_TARGET,
                     latency_s=slow)
    # CPU time barely moves when other processes compete for the machine; wall time does.
    cpu = {name: paired(pairs, cpu_ms_per_round) for name, pairs in (("serial", serial), ("concurrent", concurrent))}
    parked = {**parked, "target": f"no executor task, <= {PARKED_MEMORY_TARGET:g} MiB growth",
              "met": parked["executor_tasks"] == 0 and parked["rss_growth_mb"] <= PARKED_MEMORY_TARGET}
    page = {**page, "target": f"<= {PAGE_TARGET:g} ms", "met": page["median_ms"] <= PAGE_TARGET}
    floor_round = per_round["floor"]
    end_to_end = {**served["end_to_end"], "floor_ms_per_round": floor_round,
                  "ratio": round(served["end_to_end"]["ms_per_round"] / floor_round, 2),
                  "target": f"<= {END_TO_END_TARGET}"}
    end_to_end["met"] = served["end_to_end"]["ms_per_round"] / floor_round <= END_TO_END_TARGET
    submissions = {**served["submissions"], "target": f">= {SUBMISSIONS_TARGET:g}/s, p99 <= {SUBMISSIONS_P99_TARGET:g} ms"}
    submissions["met"] = (submissions["per_second"] >= SUBMISSIONS_TARGET
                          and (submissions["p99_ms"] or 0) <= SUBMISSIONS_P99_TARGET
                          and set(submissions["statuses"]) == {"202"})
    crowd = {**served["crowd"], "target": "every request answered 202, or 503 with Retry-After"}
    crowd["met"] = crowd["all_answered"]
    return {"time_per_round_serial_ms": per_round, "throughput_concurrent_jobs_per_s": throughput,
            "peak_memory_mb": memory, "latency_efficiency": efficient, "end_to_end_ms_per_round": end_to_end,
            "submissions": submissions, "crowd": crowd, "cpu_ms_per_round": cpu,
            "waiting_for_confirmation": parked, "job_page": page, "config": config}


def verdicts(figures: dict[str, Any]) -> list[str]:
    per_round, throughput = figures["time_per_round_serial_ms"], figures["throughput_concurrent_jobs_per_s"]
    memory, parked = figures["peak_memory_mb"], figures["waiting_for_confirmation"]
    efficient, end_to_end = figures["latency_efficiency"], figures["end_to_end_ms_per_round"]
    submissions, crowd, page = figures["submissions"], figures["crowd"], figures["job_page"]
    event = figures["event_to_websocket"]
    return [
        (f"time per round, serial: Cortex {per_round['cortex']} ms, floor {per_round['floor']} ms, "
         f"{per_round['ratio']}x (target {per_round['target']}x): {verdict(per_round['met'])}"),
        (f"throughput, concurrent: Cortex {throughput['cortex']} jobs/s, floor {throughput['floor']} jobs/s, "
         f"{throughput['ratio']}x (target {throughput['target']}x): {verdict(throughput['met'])}"),
        (f"peak memory, concurrent: Cortex {memory['cortex']} MiB, floor {memory['floor']} MiB "
         f"(target {memory['target']}): {verdict(memory['met'])}"),
        (f"latency efficiency, {efficient['latency_s']:g} s model latency: Cortex {efficient['cortex']}, "
         f"floor {efficient['floor']} (target {efficient['target']}): {verdict(efficient['met'])}"),
        (f"end to end (POST /orchestrate, then the WebSocket): Cortex {end_to_end['ms_per_round']} ms per round, "
         f"floor {end_to_end['floor_ms_per_round']} ms, {end_to_end['ratio']}x (target {end_to_end['target']}x): "
         f"{verdict(end_to_end['met'])}"),
        (f"submissions, {submissions['requests']:,} from {submissions['clients']} clients while jobs run: "
         f"{submissions['per_second']} accepted/s, p99 {submissions['p99_ms']} ms, answers {submissions['statuses']} "
         f"(target {submissions['target']}): {verdict(submissions['met'])}"),
        (f"{crowd['clients']} clients submitting at once while jobs run: answers {crowd['statuses']}"
         f"{', ' + str(crowd['retry_after_missing']) + ' 503s without Retry-After' if crowd['retry_after_missing'] else ''}"
         f" (target: {crowd['target']}): {verdict(crowd['met'])}"),
        (f"{parked['jobs']:,} jobs waiting for confirmation: {parked['executor_tasks']} executor tasks, "
         f"resident memory {parked['rss_growth_mb']:+} MiB (target {parked['target']}): {verdict(parked['met'])}"),
        (f"an event committed by a worker to a WebSocket of the web (PostgreSQL + Redis): "
         + (f"p50 {event['p50_ms']} ms, p99 {event['p99_ms']} ms over {event['events']:,} events"
            if event["measured"] else f"not measured ({event['reason']})")
         + f" (target {event['target']}): {verdict(event['met'])}"),
        (f"a job page with {page['events']:,} events: rendered in {page['median_ms']} ms (median of "
         f"{page['renders']}; target {page['target']}): {verdict(page['met'])}"),
    ]


# --- the command -------------------------------------------------------------------------------

def side_env(workdir: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(DROPPED_PREFIXES)}
    env.update({
        "DJANGO_SETTINGS_MODULE": "cortex_site.settings",
        "CORTEX_SECRET_KEY": secrets.token_urlsafe(48),  # no key file in the throwaway var dirs
        "CORTEX_DEBUG": "false",  # DEBUG would keep every query in memory
        "CORTEX_LOG_LEVEL": "WARNING",
        "CORTEX_ORCHESTRATOR_MODEL": "openai:bench",
        "CORTEX_CHAT_MODEL": "openai:bench",
        "OPENAI_API_KEY": "bench",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",  # replaced by each scenario's server
        "CORTEX_WORKSPACE_ROOT": str(workdir / "workspaces"),
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    return env


def serve_scenarios(sides: Sides, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    serve_args = args.serve_args.split()
    served: dict[str, Any] = {}
    log(f"end to end: {args.e2e_jobs} jobs one at a time, POST /orchestrate then the job's WebSocket")
    with FakeServer(latency=0.0, rounds=args.rounds, env=env) as server, \
            sides.web_server(server.base_url, serve_args) as site:
        served["end_to_end"] = asyncio.run(web.end_to_end(site, jobs=args.e2e_jobs, rounds=args.rounds))
    log(f"  {served['end_to_end']['ms_per_round']} ms per round")
    log(f"submissions: {args.submissions} from {args.clients} clients, {args.background_jobs} jobs running first, "
        f"{args.latency * 1000:g} ms model latency")
    with FakeServer(latency=args.latency, rounds=args.rounds, env=env) as server, \
            sides.web_server(server.base_url, serve_args) as site:
        served["submissions"] = asyncio.run(web.submissions(
            site, background=args.background_jobs, requests=args.submissions, clients=args.clients,
            rounds=args.rounds))
        log(f"  {served['submissions']['per_second']}/s, p50 {served['submissions']['p50_ms']} ms, "
            f"p99 {served['submissions']['p99_ms']} ms, {served['submissions']['statuses']}")
        log(f"crowd: {args.crowd} clients at once, {args.background_jobs} jobs running first")
        served["crowd"] = asyncio.run(web.crowd(site, background=args.background_jobs, clients=args.crowd,
                                                rounds=args.rounds))
        log(f"  {served['crowd']['statuses']} in {served['crowd']['seconds']} s")
    return served


def scaleout_scenario(args: argparse.Namespace, env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """PostgreSQL + Redis: `serve --workers 1` (the web, and one `runjobs` child that runs the jobs)
    on a database of its own, created for the run and dropped after it, with a Redis key prefix of
    its own. Not measured, and said so, where either server cannot be reached."""
    import psycopg
    import redis

    name = f"cortex_bench_{os.getpid()}"
    prefix = f"cortex-bench-{os.getpid()}"
    admin = urlsplit(args.postgres)
    where = f"{admin.hostname}:{admin.port or 5432}"
    try:
        redis.Redis.from_url(args.redis, socket_connect_timeout=5).ping()
        with psycopg.connect(args.postgres, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
    except (psycopg.Error, redis.RedisError) as error:
        return {"measured": False, "reason": f"PostgreSQL at {where} or Redis unavailable: {type(error).__name__}"}
    scaled = {**env, "CORTEX_DATABASE_URL": urlunsplit(admin._replace(path="/" + name)),
              "CORTEX_REDIS_URL": args.redis, "CORTEX_REDIS_PREFIX": prefix,
              "CORTEX_VAR_DIR": str(workdir / "scaleout-prepare")}
    try:
        (workdir / "scaleout-prepare").mkdir()
        done = subprocess.run([sys.executable, "-m", "bench.cortex", "prepare", "--conversation",
                               str(workdir / "scaleout-conversation.json")], cwd=ROOT, env=scaled,
                              capture_output=True, text=True, timeout=SIDE_TIMEOUT, check=False)
        if done.returncode != 0:
            raise BenchError(f"preparing the PostgreSQL database failed:\n{done.stderr.strip()[-2000:]}")
        with FakeServer(latency=args.latency, rounds=args.rounds, env=env) as server, \
                web.WebServer(root=ROOT, env=scaled, var_dir=workdir / "scaleout-serve", template=None,
                              model_url=server.base_url, serve_args=["--workers", "1"]) as site:
            figures = asyncio.run(web.event_latency(site, jobs=args.event_jobs, at_once=args.event_at_once,
                                                    rounds=args.rounds))
    finally:
        with psycopg.connect(args.postgres, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        client = redis.Redis.from_url(args.redis)
        for key in client.scan_iter(match=f"{prefix}*", count=500):
            client.delete(key)
    return {"measured": True, "database": f"PostgreSQL at {where}", "serve_args": "--workers 1", **figures}


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--serial-jobs", type=int, default=None, help="jobs in the serial scenario (200)")
    parser.add_argument("--concurrent-jobs", type=int, default=None, help="jobs in the concurrent scenario (500)")
    parser.add_argument("--at-once", type=int, default=None, help="jobs in flight in the concurrent scenario (250)")
    parser.add_argument("--latency", type=float, default=0.1, help="model latency, concurrent scenario (s)")
    parser.add_argument("--rounds", type=int, default=5, help="tool rounds per job")
    parser.add_argument("--parked-jobs", type=int, default=None,
                        help="jobs left waiting for confirmation in the third scenario (1000)")
    parser.add_argument("--slow-jobs", type=int, default=None,
                        help="jobs in the latency-efficiency scenario, all at once (250)")
    parser.add_argument("--slow-latency", type=float, default=2.0, help="model latency, latency-efficiency scenario (s)")
    parser.add_argument("--page-events", type=int, default=1000, help="events of the job whose page is rendered")
    parser.add_argument("--e2e-jobs", type=int, default=None, help="jobs end to end through the API, one at a time (200)")
    parser.add_argument("--submissions", type=int, default=None, help="POST /orchestrate in the submissions scenario (1000)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients in the submissions scenario")
    parser.add_argument("--crowd", type=int, default=None, help="clients submitting at the same moment (500)")
    parser.add_argument("--background-jobs", type=int, default=None,
                        help="jobs submitted and running before the submissions and the crowd (100)")
    parser.add_argument("--event-jobs", type=int, default=None,
                        help="jobs followed on WebSockets in the PostgreSQL + Redis scenario (100)")
    parser.add_argument("--event-at-once", type=int, default=None, help="of them at once (20)")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL server to create (and drop) the scenario's own database on")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0",
                        help="a Redis server, used under a key prefix of the run's own")
    parser.add_argument("--serve-args", default="", help="extra arguments for `manage.py serve` (web scenarios)")
    parser.add_argument("--repeats", type=int, default=None, help="serial measurements per side (3)")
    parser.add_argument("--concurrent-repeats", type=int, default=None,
                        help="concurrent measurements per side (2: the long ones, once in each order)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--profile", type=Path, default=None,
                        help="after measuring, profile one serial Cortex run into this directory")
    parser.add_argument("--quick", action="store_true", help="a small smoke run (figures are rough)")
    parser.add_argument("--submit-in-process", action="store_true",
                        help="Cortex's engine scenarios submit from a thread of the executor's process "
                             "(as `serve --workers 0` runs) instead of a process of their own")
    parser.add_argument("--events-only", action="store_true",
                        help="only the event to WebSocket scenario on PostgreSQL + Redis (as --only events)")
    parser.add_argument("--only", choices=ALONE, default=None,
                        help="one part alone, for measuring it without the rest: the event to WebSocket "
                             "scenario (events), the web scenarios through `serve` (web), or the latency "
                             "efficiency scenario (latency)")
    args = parser.parse_args(argv)
    if args.events_only:
        args.only = "events"
    quick = {"serial_jobs": 20, "concurrent_jobs": 50, "at_once": 25, "repeats": 1, "concurrent_repeats": 1,
             "parked_jobs": 100, "slow_jobs": 50, "e2e_jobs": 20, "submissions": 200, "crowd": 100,
             "background_jobs": 20, "event_jobs": 20, "event_at_once": 5}
    full = {"serial_jobs": 200, "concurrent_jobs": 500, "at_once": 250, "repeats": 3, "concurrent_repeats": 2,
            "parked_jobs": 1000, "slow_jobs": 250, "e2e_jobs": 200, "submissions": 1000, "crowd": 500,
            "background_jobs": 100, "event_jobs": 100, "event_at_once": 20}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("serial_jobs", "concurrent_jobs", "at_once", "rounds", "repeats", "concurrent_repeats",
                 "parked_jobs", "slow_jobs", "e2e_jobs", "submissions", "clients", "crowd", "background_jobs", "event_jobs", "event_at_once"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def alone(args: argparse.Namespace) -> int:
    """One part of the benchmark alone (`--only`), for measuring it without the minutes of the rest;
    its figures are printed as they are, without the verdicts of a full run."""
    workdir = Path(tempfile.mkdtemp(prefix="cortex-bench-"))
    try:
        env = side_env(workdir)
        if args.only == "events":
            log(f"event to WebSocket on PostgreSQL + Redis: {args.event_jobs} jobs, {args.event_at_once} at once")
            figures = scaleout_scenario(args, env, workdir)
        else:
            sides = Sides(workdir, env, workdir / "conversation.json", workdir / "template",
                          submit_in_process=args.submit_in_process)
            (workdir / "template").mkdir()
            sides.prepare()
            if args.only == "web":
                figures = serve_scenarios(sides, args, env)
            else:
                slow = Scenario("latency", args.slow_jobs, args.slow_jobs, args.rounds)
                log(f"latency: {slow.jobs} jobs, all at once, {args.slow_latency:g} s model latency")
                with FakeServer(latency=args.slow_latency, rounds=args.rounds, env=env) as server:
                    (cortex, floor), = alternate(sides, slow, server.base_url, 1)
                figures = {"cortex": efficiency(cortex, args.slow_latency),
                           "floor": efficiency(floor, args.slow_latency)}
    except (BenchError, web.WebError) as error:
        log(f"bench failed: {error}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(figures, indent=2), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.only is not None:
        return alone(args)
    serial = Scenario("serial", args.serial_jobs, 1, args.rounds)
    concurrent = Scenario("concurrent", args.concurrent_jobs, args.at_once, args.rounds)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="cortex-bench-"))
    try:
        env = side_env(workdir)
        sides = Sides(workdir, env, workdir / "conversation.json", workdir / "template",
                      submit_in_process=args.submit_in_process)
        (workdir / "template").mkdir()
        sides.prepare()
        log(f"serial: {serial.jobs} jobs of {serial.rounds} rounds, one at a time, no model latency")
        with FakeServer(latency=0.0, rounds=args.rounds, env=env) as server:
            serial_pairs = alternate(sides, serial, server.base_url, args.repeats)
        log(f"concurrent: {concurrent.jobs} jobs, {concurrent.at_once} at once, "
            f"{args.latency * 1000:g} ms model latency")
        with FakeServer(latency=args.latency, rounds=args.rounds, env=env) as server:
            concurrent_pairs = alternate(sides, concurrent, server.base_url, args.concurrent_repeats)
        slow = Scenario("latency", args.slow_jobs, args.slow_jobs, args.rounds)
        log(f"latency: {slow.jobs} jobs, all at once, {args.slow_latency:g} s model latency")
        with FakeServer(latency=args.slow_latency, rounds=args.rounds, env=env) as server:
            slow_pairs = alternate(sides, slow, server.base_url, 1)
        served = serve_scenarios(sides, args, env)
        log(f"event to WebSocket on PostgreSQL + Redis: {args.event_jobs} jobs, {args.event_at_once} at once")
        scaled = scaleout_scenario(args, env, workdir)
        log(f"  {scaled}")
        log(f"a job page: one job of {page_rounds(args.page_events)} rounds, {args.page_events} events")
        with FakeServer(latency=0.0, rounds=page_rounds(args.page_events), env=env) as server:
            page = sides.page(args.page_events, 7, server.base_url)
        log(f"  rendered in {page['median_ms']} ms (median), {page['bytes']:,} bytes")
        log(f"waiting for confirmation: {args.parked_jobs} jobs, each stopping at its first call")
        with FakeServer(latency=0.0, rounds=args.rounds, env=env) as server:
            parked = sides.park(args.parked_jobs, concurrent.at_once, server.base_url)
        log(f"  {parked['jobs']} jobs waiting: {parked['executor_tasks']} executor tasks, resident memory "
            f"{parked['rss_before_mb']} MiB before, {parked['rss_after_mb']} MiB after")
        if args.profile is not None:
            with FakeServer(latency=0.0, rounds=args.rounds, env=env) as server:
                profiled = sides.cortex(serial, server.base_url, profile=args.profile.resolve())
            log(f"  profiled cortex run ({describe(profiled)}) written to {args.profile}")
    except (BenchError, web.WebError) as error:
        log(f"bench failed: {error}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    config = {
        "rounds_per_job": args.rounds,
        "serial": {"jobs": serial.jobs, "latency_ms": 0,
                   "method": ("one job after another: the floor awaits each job before starting the next; "
                              "Cortex submits each job once the previous one has finished, to an executor "
                              "with concurrency 1")},
        "concurrent": {"jobs": concurrent.jobs, "at_once": concurrent.at_once, "latency_ms": args.latency * 1000,
                       "method": ("the floor gathers every job behind a semaphore of that size; Cortex submits "
                                  "every job from a thread while an executor with that concurrency runs them")},
        "repeats": {"serial": args.repeats, "concurrent": args.concurrent_repeats},
        "figures": ("median of the repeats (peak memory: the highest); ratio: median of cortex / floor "
                    "over runs made back to back"),
        "timing": "wall time from the first job submitted to the last job complete, after 3 untimed warm-up jobs",
        "cortex": ("a fresh SQLite (WAL) database per run; jobs submitted with services.job_submit from a "
                   "worker thread; the real Executor in the same process"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "duration_s": round(time.monotonic() - started),
    }
    config["waiting_for_confirmation"] = {
        "jobs": args.parked_jobs, "at_once": concurrent.at_once,
        "method": ("Cortex alone: the bench user's policy asks before current_time, so every job stops at its "
                   "first call; resident memory (VmRSS, after a garbage collection) before submitting and once "
                   "every job waits with no executor holding it")}
    config["latency"] = {"jobs": slow.jobs, "at_once": slow.jobs, "latency_ms": args.slow_latency * 1000,
                         "method": "as the concurrent scenario; efficiency = ideal wall time / wall time"}
    config["web"] = {"serve_args": args.serve_args,
                     "method": ("`manage.py serve` in its own process on a fresh copy of the database; the clients "
                                "(httpx2 over Cortex's HTTP/1.1 transport, websockets) in the driver's process; every accepted job checked through "
                                "the API to have completed with its rounds")}
    figures = report(serial_pairs, concurrent_pairs, slow_pairs, args.slow_latency, parked, page, served, config)
    scaled["target"] = f"p50 <= {EVENT_P50_TARGET:g} ms, p99 <= {EVENT_P99_TARGET:g} ms"
    scaled["met"] = bool(scaled["measured"] and scaled["p50_ms"] <= EVENT_P50_TARGET
                         and scaled["p99_ms"] <= EVENT_P99_TARGET)
    figures["event_to_websocket"] = scaled
    text = json.dumps(figures, indent=2)
    print(text, flush=True)
    if args.output is not None:
        args.output.write_text(text + "\n")
    for line in verdicts(figures):
        log(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
