"""`serve --workers N`: the web process leaves jobs to `runjobs` children of its own, stops them
with itself, and never leaves one behind, even when it is killed outright."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import httpx
import pytest
import websockets

from django.conf import settings

from orchestrator import local_layer, services
from orchestrator.models import Job
from tests.conftest import free_port, process_env, start_process, stop_process, wait_for_port
from tests.fakes.openai_fake import OpenAIFake

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fake(settings):
    with OpenAIFake() as server:
        settings.CORTEX_ORCHESTRATOR_MODEL = "openai:test-model"
        settings.OPENAI_BASE_URL = server.base_url
        settings.OPENAI_API_KEY = "sk-test"
        yield server


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(condition, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def serve_with_a_worker(fake, tmp_path):
    port = free_port()
    env = process_env(CORTEX_POLL_SECONDS="0.1", OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY="sk-test",
                      CORTEX_ORCHESTRATOR_MODEL="openai:test-model")
    server = start_process(["serve", "--port", str(port), "--workers", "1"], env, tmp_path / "serve.log")
    wait_for_port(port, process=server)
    return server, port


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process tree from /proc")
def test_jobs_run_in_the_worker_process_not_in_the_web_process(fake, owner, default_persona, tmp_path):
    server, port = serve_with_a_worker(fake, tmp_path)
    try:
        [worker] = wait_until(lambda: children_of(server.pid), what="the worker process")
        token = services.token_create(user=owner, name="tests")[1]
        answer = httpx.post(f"http://127.0.0.1:{port}/orchestrate", json={"task": "hello", "respond_with_final": False},
                            headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert answer.status_code == 202
        job_id = answer.json()["job_id"]
        done = wait_until(lambda: Job.objects.filter(pk=job_id, status="complete").first(), what="the job")
        running = done.events.filter(type="job.status", data__status="running").first()
        executor = running.data["executor"]
        assert f":{worker}:" in executor and f":{server.pid}:" not in executor
    finally:
        stop_process(server, timeout=30)
    assert server.returncode is not None
    wait_until(lambda: not alive(worker), timeout=15, what="the worker to stop with the server")


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process tree from /proc")
def test_a_worker_does_not_outlive_a_killed_server(fake, owner, default_persona, tmp_path):
    server, port = serve_with_a_worker(fake, tmp_path)
    try:
        [worker] = wait_until(lambda: children_of(server.pid), what="the worker process")
        wait_until(lambda: (tmp_path / "serve.log").read_text().count("running up to"), what="the worker to run")
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        wait_until(lambda: not alive(worker), timeout=15, what="the orphaned worker to stop")
    finally:
        stop_process(server)


REDIS_LAYER = {"default": {"BACKEND": "orchestrator.doorbell_layer.DoorbellLayer"}}
MEMORY_LAYER = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
LOCAL_LAYER = {"default": {"BACKEND": "orchestrator.local_layer.LocalDoorbellLayer"}}


@pytest.mark.parametrize(("layers", "cores", "configured", "expected"), [
    (MEMORY_LAYER, 8, "auto", 0),  # PostgreSQL without Redis: jobs run in the web process
    (REDIS_LAYER, 1, "auto", 0),  # no core to spare
    (REDIS_LAYER, 2, "auto", 1),
    (REDIS_LAYER, 64, "auto", 4),  # never more than a few
    (LOCAL_LAYER, 2, "auto", 1),  # SQLite: doorbells over Unix sockets
    (LOCAL_LAYER, 1, "auto", 0),
    (MEMORY_LAYER, 2, "3", 3),  # an explicit number is taken as it is
])
def test_how_many_workers_serve_starts_by_default(settings, monkeypatch, layers, cores, configured, expected):
    from orchestrator.management.commands import serve

    settings.CHANNEL_LAYERS = layers
    settings.CORTEX_WEB_WORKERS = configured
    monkeypatch.setattr(serve.os, "cpu_count", lambda: cores)
    assert serve.default_workers() == expected


def serve_on_sqlite_polling_rarely(fake, tmp_path):
    """`serve` with one worker on this run's SQLite database, doorbells over Unix sockets, and
    polls (the executor's for work, a socket's catch-up) far apart: whatever happens within a few
    seconds happened because a doorbell crossed between the processes."""
    port = free_port()
    env = process_env(CORTEX_POLL_SECONDS="300", OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY="sk-test",
                      CORTEX_ORCHESTRATOR_MODEL="openai:test-model")
    server = start_process(["serve", "--port", str(port), "--workers", "1"], env, tmp_path / "serve.log")
    wait_for_port(port, process=server)
    wait_until(lambda: (tmp_path / "serve.log").read_text().count("running up to"), what="the worker to run")
    return server, port


def test_on_sqlite_a_worker_hears_of_new_work_and_the_web_of_its_events_at_once(fake, owner, default_persona,
                                                                                tmp_path):
    fake.script_delay(2)  # the socket is open before the job's model call ends
    server, port = serve_on_sqlite_polling_rarely(fake, tmp_path)
    token = services.token_create(user=owner, name="tests")[1]
    headers = {"Authorization": f"Bearer {token}"}

    async def follow_one_job() -> list[dict]:
        async with httpx.AsyncClient() as client:
            answer = await client.post(f"http://127.0.0.1:{port}/orchestrate", headers=headers,
                                       json={"task": "hello", "respond_with_final": False})
        assert answer.status_code == 202
        received = []
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/jobs/{answer.json()['job_id']}/?after=0",
                                      additional_headers=headers) as socket:
            while not received or received[-1]["data"].get("status") not in ("complete", "error"):
                # Well within a socket's catch-up (15 s) and the worker's poll (300 s).
                received.append(json.loads(await asyncio.wait_for(socket.recv(), 12)))
        return received

    try:
        [worker] = children_of(server.pid)
        streamed = asyncio.run(follow_one_job())
    finally:
        stop_process(server, timeout=30)
    assert [event["seq"] for event in streamed] == list(range(1, len(streamed) + 1))
    assert streamed[-1]["data"]["status"] == "complete"
    # Both processes removed their sockets as they stopped.
    wait_until(lambda: not alive(worker), timeout=15, what="the worker to stop with the server")
    bells = local_layer.directory_for(str(settings.DATABASES["default"]["NAME"]))
    assert not [name for name in os.listdir(bells) if name.split("-")[0] in (str(server.pid), str(worker))]


def test_on_sqlite_a_cancel_on_the_web_reaches_a_model_call_in_the_worker(fake, owner, default_persona, tmp_path):
    fake.script_delay(120)
    server, port = serve_on_sqlite_polling_rarely(fake, tmp_path)
    try:
        token = services.token_create(user=owner, name="tests")[1]
        headers = {"Authorization": f"Bearer {token}"}
        answer = httpx.post(f"http://127.0.0.1:{port}/orchestrate", json={"task": "Think for two minutes"},
                            headers=headers, timeout=30)
        job_id = answer.json()["job_id"]
        wait_until(lambda: fake.call_count >= 1, what="the model call")
        assert httpx.post(f"http://127.0.0.1:{port}/orchestrate/{job_id}/cancel", headers=headers,
                          timeout=30).status_code == 200
        # The worker hangs up on the model long before its poll or the call itself would end.
        wait_until(lambda: fake.disconnects >= 1, timeout=20, what="the worker to hang up")
    finally:
        stop_process(server, timeout=30)
    assert Job.objects.get(pk=job_id).status == "cancelled"
