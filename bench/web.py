"""Cortex as a client sees it: `manage.py serve` in a process of its own, reached over HTTP and
WebSockets from this one, the way any API client reaches it.

- end to end: each job submitted with `POST /orchestrate`, then followed on its WebSocket
  (`/ws/jobs/<id>/`) until its `complete` event, one job after another;
- submissions: `POST /orchestrate` from many clients at once, while the jobs already submitted run;
- a crowd: hundreds of clients submitting at the same moment; every one must get an answer, 202 or
  503 with `Retry-After`, never a reset connection or a 500.

Every job accepted is then waited for and checked, through the API, to have completed with the
expected rounds, every one of them a successful tool call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import queue
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx2
from websockets.asyncio.client import connect

from orchestrator.http1 import Http1Transport, connect_anywhere

from .common import TASK

USERNAME = "bench"  # the user `bench.cortex prepare` creates
START_TIMEOUT = 60  # seconds for the server to answer its first request
FINISH_TIMEOUT = 600  # seconds for every accepted job to finish


class WebError(RuntimeError):
    """The server did not run its jobs as specified: the figures would mean nothing."""


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One for every client (the crowd makes 500): each would load the CA certificates again."""
    return ssl.create_default_context()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class WebServer:
    """`manage.py serve` on a fresh copy of the benchmark's database, as a child process."""

    def __init__(self, *, root: Path, env: dict[str, str], var_dir: Path, template: Path | None, model_url: str,
                 serve_args: list[str]) -> None:
        """`template`: the directory of the SQLite database to copy; None where the environment
        names a database of its own (CORTEX_DATABASE_URL)."""
        self.root, self.var_dir, self.serve_args = root, var_dir, serve_args
        self.env = {**env, "CORTEX_VAR_DIR": str(var_dir), "OPENAI_BASE_URL": model_url}
        var_dir.mkdir()
        if template is not None:
            shutil.copyfile(template / "cortex.sqlite3", var_dir / "cortex.sqlite3")
        self.process: subprocess.Popen[str] | None = None
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.token = ""
        self.output: list[str] = []

    def __enter__(self) -> Self:
        made = subprocess.run([sys.executable, "manage.py", "create_api_token", USERNAME], cwd=self.root,
                              env=self.env, capture_output=True, text=True, timeout=120, check=False)
        if made.returncode != 0:
            raise WebError(f"create_api_token failed: {made.stderr.strip()[-500:]}")
        self.token = made.stdout.strip().splitlines()[-1]
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(self.port), *self.serve_args],
            cwd=self.root, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.process.stdout
        assert stdout is not None

        def read() -> None:
            for line in stdout:
                lines.put(line)
                self.output.append(line.rstrip())

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(f"{self.base}/login/", timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        tail = "\n".join(self.output[-15:])
        self.__exit__(None, None, None)
        raise WebError(f"the server did not start:\n{tail}")

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        process, self.process = self.process, None
        if process is not None:
            # SIGTERM to the server's own process group: the server and any executor processes it
            # started, and nothing else.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        shutil.rmtree(self.var_dir, ignore_errors=True)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, connections: int) -> httpx2.AsyncClient:
        """Clients sharing up to `connections` kept-alive connections. Over Cortex's own HTTP/1.1
        transport (orchestrator/http1.py) rather than httpx's pool: with 50 clients submitting
        through httpx's, some requests waited about a second in the pool before their first byte
        was sent, while the server read and answered each in tens of milliseconds; the load
        generator's own delays are not the server's."""
        return httpx2.AsyncClient(base_url=self.base, headers=self.headers, timeout=120,
                                  transport=Http1Transport(connect=connect_anywhere,
                                                           ssl_context=_tls_context(),
                                                           max_connections=connections))


BODY = {"task": TASK, "respond_with_final": False}


# --- end to end --------------------------------------------------------------------------------

async def end_to_end(server: WebServer, *, jobs: int, rounds: int, warmup: int = 3) -> dict[str, Any]:
    """Each job: `POST /orchestrate`, then its WebSocket until `complete`; the next job starts when
    that event arrives. Returns the wall time per round."""
    async with server.client(1) as client:
        for _ in range(warmup):
            await _one_job(server, client)
        started = time.perf_counter()
        ids = [await _one_job(server, client) for _ in range(jobs)]
        seconds = time.perf_counter() - started
        await _verify(client, ids, rounds)
    return {"jobs": jobs, "rounds": rounds, "seconds": round(seconds, 3),
            "ms_per_round": round(seconds * 1000 / (jobs * rounds), 3)}


async def _one_job(server: WebServer, client: httpx2.AsyncClient) -> str:
    answer = await client.post("/orchestrate", json=BODY)
    if answer.status_code != 202:
        raise WebError(f"POST /orchestrate answered {answer.status_code}: {answer.text[:200]}")
    job_id = answer.json()["job_id"]
    async with connect(f"ws://127.0.0.1:{server.port}/ws/jobs/{job_id}/", additional_headers=server.headers,
                       open_timeout=30, max_size=None) as socket_:
        async with asyncio.timeout(120):
            async for message in socket_:
                event = json.loads(message)
                if event["type"] == "job.status" and event["data"]["status"] in ("complete", "error", "cancelled"):
                    if event["data"]["status"] != "complete":
                        raise WebError(f"job {job_id} ended {event['data']['status']}: {event['data']}")
                    return job_id
    raise WebError(f"job {job_id}: its WebSocket closed before it completed")


# --- event to WebSocket latency ---------------------------------------------------------------

async def event_latency(server: WebServer, *, jobs: int, at_once: int, rounds: int) -> dict[str, Any]:
    """Jobs followed on their WebSockets; for every event committed after the socket opened, the
    time from the event's timestamp (taken as its row is inserted, just before the commit) to its
    arrival here. Server and client share the machine's clock."""
    delays: list[float] = []
    ids: list[str] = []
    semaphore = asyncio.Semaphore(at_once)

    async def follow(client: httpx2.AsyncClient) -> None:
        async with semaphore:
            answer = await client.post("/orchestrate", json=BODY)
            if answer.status_code != 202:
                raise WebError(f"POST /orchestrate answered {answer.status_code}: {answer.text[:200]}")
            job_id = answer.json()["job_id"]
            ids.append(job_id)
            async with connect(f"ws://127.0.0.1:{server.port}/ws/jobs/{job_id}/", additional_headers=server.headers,
                               open_timeout=30, max_size=None) as socket_:
                opened = time.time()
                async with asyncio.timeout(120):
                    async for message in socket_:
                        arrived = time.time()
                        event = json.loads(message)
                        at = datetime.fromisoformat(event["at"]).timestamp()
                        if at > opened:
                            delays.append(arrived - at)
                        if event["type"] == "job.status" and event["data"]["status"] in ("complete", "error",
                                                                                         "cancelled"):
                            return

    async with server.client(at_once) as client:
        await asyncio.gather(*(follow(client) for _ in range(jobs)))
        await _verify(client, ids, rounds)
    if not delays:
        raise WebError("no event arrived live on a WebSocket")
    delays.sort()
    return {"jobs": jobs, "at_once": at_once, "events": len(delays),
            "p50_ms": round(statistics.median(delays) * 1000, 1),
            "p99_ms": round(_percentile(delays, 0.99) * 1000, 1), "max_ms": round(delays[-1] * 1000, 1)}


# --- submissions under load --------------------------------------------------------------------

async def submissions(server: WebServer, *, background: int, requests: int, clients: int,
                      rounds: int) -> dict[str, Any]:
    """`background` jobs submitted first (they run meanwhile), then `requests` submissions from
    `clients` concurrent clients, each sending its next as soon as the last is answered."""
    async with server.client(clients) as client:
        ids = await _submit_all(client, background, min(clients, background))
        await _until_running(client)
        latencies: list[float] = []
        statuses: Counter[str] = Counter()
        queue_: asyncio.Queue[None] = asyncio.Queue()
        for _ in range(requests):
            queue_.put_nowait(None)

        async def worker() -> None:
            while True:
                try:
                    queue_.get_nowait()
                except asyncio.QueueEmpty:
                    return
                sent = time.perf_counter()
                try:
                    answer = await client.post("/orchestrate", json=BODY)
                except httpx2.HTTPError as error:
                    statuses[type(error).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - sent)
                statuses[str(answer.status_code)] += 1
                if answer.status_code == 202:
                    ids.append(answer.json()["job_id"])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - started
        await _until_finished(client)
        await _verify(client, ids, rounds)
    latencies.sort()
    return {"requests": requests, "clients": clients, "background_jobs": background, "seconds": round(seconds, 2),
            # Only submissions accepted count: a 503 answers a request but submits nothing.
            "per_second": round(statuses["202"] / seconds, 1), "answered_per_second": round(requests / seconds, 1),
            "statuses": dict(statuses),
            "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
            "p99_ms": round(_percentile(latencies, 0.99) * 1000, 1) if latencies else None,
            "jobs_checked": len(ids)}


async def crowd(server: WebServer, *, background: int, clients: int, rounds: int) -> dict[str, Any]:
    """`clients` clients, each on a connection of its own, submitting at the same moment while
    `background` jobs run."""
    async with server.client(max(1, min(50, background))) as client:
        ids = await _submit_all(client, background, min(50, background))
        await _until_running(client)
    statuses: Counter[str] = Counter()
    retry_after_missing = 0
    accepted: list[str] = []
    gate = asyncio.Event()

    async def one() -> None:
        nonlocal retry_after_missing
        async with server.client(1) as own:
            await gate.wait()
            try:
                answer = await own.post("/orchestrate", json=BODY)
            except httpx2.HTTPError as error:
                statuses[type(error).__name__] += 1
                return
        statuses[str(answer.status_code)] += 1
        if answer.status_code == 202:
            accepted.append(answer.json()["job_id"])
        elif answer.status_code == 503 and not answer.headers.get("Retry-After", "").isdigit():
            retry_after_missing += 1

    tasks = [asyncio.create_task(one()) for _ in range(clients)]
    await asyncio.sleep(0.2)  # every client ready at the gate
    started = time.perf_counter()
    gate.set()
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - started
    async with server.client(10) as client:
        await _until_finished(client)
        await _verify(client, ids + accepted, rounds)
    answered = statuses["202"] + statuses["503"]
    return {"clients": clients, "background_jobs": background, "seconds": round(seconds, 2),
            "statuses": dict(statuses), "retry_after_missing": retry_after_missing,
            "all_answered": answered == clients and retry_after_missing == 0, "jobs_checked": len(ids) + len(accepted)}


async def _submit_all(client: httpx2.AsyncClient, count: int, at_once: int) -> list[str]:
    ids: list[str] = []
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            while True:
                answer = await client.post("/orchestrate", json=BODY)
                if answer.status_code == 202:
                    ids.append(answer.json()["job_id"])
                    break
                if answer.status_code != 503:
                    raise WebError(f"POST /orchestrate answered {answer.status_code}: {answer.text[:200]}")
                await asyncio.sleep(float(answer.headers.get("Retry-After", "1")))

    await asyncio.gather(*(worker() for _ in range(max(1, at_once))))
    return ids


async def _until_running(client: httpx2.AsyncClient) -> None:
    """Until the executor has started on the background jobs, so the measured requests meet it busy."""
    for _ in range(600):
        listed = await client.get("/orchestrate", params={"status": "running", "limit": 1})
        if listed.status_code == 200 and listed.json():
            return
        await asyncio.sleep(0.05)
    raise WebError("no background job started running")


async def _until_finished(client: httpx2.AsyncClient) -> None:
    """Until the bench user has no job queued or running."""
    deadline = time.monotonic() + FINISH_TIMEOUT
    while time.monotonic() < deadline:
        for status in ("queued", "running"):
            listed = await client.get("/orchestrate", params={"status": status, "limit": 1})
            if listed.json():
                break
        else:
            return
        await asyncio.sleep(0.5)
    raise WebError(f"jobs still unfinished after {FINISH_TIMEOUT} s")


async def _verify(client: httpx2.AsyncClient, ids: list[str], rounds: int) -> None:
    """Every job complete, with `rounds` tool calls that all succeeded."""
    bad: list[str] = []
    semaphore = asyncio.Semaphore(10)

    async def check(job_id: str) -> None:
        async with semaphore:
            job = (await client.get(f"/orchestrate/{job_id}")).json()
        calls = job.get("tool_calls") or []
        if job.get("status") != "complete" or len(calls) != rounds or any(c.get("is_error") for c in calls):
            bad.append(f"{job_id}: {job.get('status')}, {len(calls)} calls, {job.get('error')}")

    await asyncio.gather(*(check(job_id) for job_id in ids))
    if bad:
        raise WebError(f"{len(bad)} of {len(ids)} jobs did not complete with {rounds} rounds: {'; '.join(bad[:5])}")


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]
