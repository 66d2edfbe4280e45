"""The scale-out path: PostgreSQL, the Redis channel layer, one web process and several worker
processes on it. Run with CORTEX_DATABASE_URL=postgres://… and CORTEX_REDIS_URL=redis://… set."""

from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import pytest
import websockets
from django.conf import settings
from django.db import connection

from orchestrator import services
from orchestrator.models import Job, JobEvent
from tests.conftest import free_port, process_env, start_process, stop_process, wait_for_port
from tests.fakes.openai_fake import OpenAIFake

pytestmark = [pytest.mark.scaleout, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def cluster(tmp_path):
    """One web process that runs no jobs and two job workers, sharing PostgreSQL and Redis."""
    assert connection.vendor == "postgresql", "run the scale-out tests with CORTEX_DATABASE_URL=postgres://…"
    assert settings.REDIS_URL, "set CORTEX_REDIS_URL"
    processes = []
    env = process_env(CORTEX_REDIS_PREFIX=f"cortex-test-{os.getpid()}", CORTEX_POLL_SECONDS="2",
                      CORTEX_LEASE_SECONDS="5", CORTEX_REDIS_URL=settings.REDIS_URL)

    def start(*args: str, **extra: str):
        process = start_process(list(args), {**env, **extra}, tmp_path / f"process-{len(processes)}.log")
        processes.append(process)
        return process

    port = free_port()
    web = start("serve", "--port", str(port), "--no-jobs")
    wait_for_port(port, process=web)
    yield f"127.0.0.1:{port}", start
    for process in processes:
        stop_process(process)


def wait_until(condition, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_workers_share_the_jobs_and_the_web_process_streams_their_events(cluster, owner, default_persona):
    address, start = cluster
    start("runjobs", "--concurrency", "10")
    start("runjobs", "--concurrency", "10")
    token = services.token_create(user=owner)[1]
    headers = {"Authorization": f"Bearer {token}"}

    async def watch_one_job() -> list[dict]:
        job_id = httpx.post(f"http://{address}/orchestrate", json={"task": "Calculate 20+22"},
                            headers=headers).json()["job_id"]
        received = []
        async with websockets.connect(f"ws://{address}/ws/jobs/{job_id}/?after=0",
                                      additional_headers=headers) as socket:
            while not received or received[-1]["data"].get("status") not in ("complete", "error"):
                received.append(json.loads(await asyncio.wait_for(socket.recv(), 20)))
        return received

    streamed = asyncio.run(watch_one_job())
    assert [event["seq"] for event in streamed] == list(range(1, len(streamed) + 1))
    assert streamed[-1]["data"]["status"] == "complete"

    job_ids = [httpx.post(f"http://{address}/orchestrate", json={"task": f"Calculate {n}+1"}, headers=headers)
               .json()["job_id"] for n in range(40)]
    wait_until(lambda: Job.objects.filter(pk__in=job_ids, status="complete").count() == 40,
               what="40 jobs to complete")
    for job in Job.objects.filter(pk__in=job_ids):
        # Each step ran once: two tool-loop turns, one final answer, one tool run, whoever held the job.
        assert job.events.filter(type="model.turn").count() == 3
        assert job.events.filter(type="tool.started").count() == 1
        assert str(int(job.task.split()[1].split("+")[0]) + 1) in job.response
    executors = {event.data["executor"] for event in
                 JobEvent.objects.filter(job__in=job_ids, type="job.status", data__status="running")}
    assert len(executors) == 2, "both workers should have taken jobs"


def test_a_cancel_on_the_web_process_stops_a_model_call_in_a_worker_within_a_second(cluster, owner, default_persona,
                                                                                      settings):
    address, start = cluster
    with OpenAIFake() as fake:
        fake.script_delay(60)
        settings.CORTEX_ORCHESTRATOR_MODEL = "openai:test-model"
        start("runjobs", OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY="sk-test")
        token = services.token_create(user=owner)[1]
        headers = {"Authorization": f"Bearer {token}"}
        job = services.job_submit(user=owner, task="Think for a minute")
        wait_until(lambda: fake.call_count >= 1, what="the model call")
        started = time.monotonic()
        response = httpx.post(f"http://{address}/orchestrate/{job.pk}/cancel", headers=headers)
        assert response.status_code == 200
        wait_until(lambda: fake.disconnects >= 1, timeout=5, what="the worker to hang up")
        assert time.monotonic() - started < 1.0
    assert Job.objects.get(pk=job.pk).status == "cancelled"
