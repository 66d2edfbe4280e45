"""Durability with real processes: executors are killed with SIGKILL mid-job and others finish the work.

Each test runs `manage.py runjobs` / `serve` as separate processes against the test database and a
fake model server, so a crash is a real crash: no cleanup code of the dead process runs.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.db import connection

from orchestrator import services
from orchestrator.models import Job
from tests.conftest import ApiClient, free_port, process_env, start_process, stop_process, wait_for_port
from tests.fakes.http import ToolCall as Call
from tests.fakes.openai_fake import OpenAIFake

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
LOOP_ONLY = services.JobOptions(respond_with_final=False)


@pytest.fixture
def fake(settings):
    with OpenAIFake() as server:
        settings.CORTEX_ORCHESTRATOR_MODEL = "openai:test-model"
        settings.OPENAI_BASE_URL = server.base_url
        settings.OPENAI_API_KEY = "sk-test"
        yield server


@pytest.fixture
def trace(tmp_path):
    return tmp_path / "trace.log"


@pytest.fixture
def workers(tmp_path, trace, settings):
    """Starts executor processes with a short lease; kills whatever is left at the end."""
    started = []

    def start(*args: str, command: str = "runjobs", **env: str):
        environment = process_env(CORTEX_LEASE_SECONDS="1", CORTEX_POLL_SECONDS="0.1",
                                  OPENAI_BASE_URL=settings.OPENAI_BASE_URL, OPENAI_API_KEY="sk-test",
                                  CORTEX_TEST_TRACE=str(trace), **env)
        process = start_process([command, *args], environment, tmp_path / f"{command}-{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        stop_process(process)


def wait_until(condition: Callable[[], object], timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def job_in(job_id, *statuses: str) -> Job | None:
    job = Job.objects.get(pk=job_id)
    return job if job.status in statuses else None


def trace_lines(trace) -> list[str]:
    return trace.read_text().splitlines() if trace.exists() else []


def kill(process) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(10)


def rounds_answered(job: Job) -> list[int]:
    """The round of each model answer the job recorded, in order."""
    return [event.data["round"] for event in job.events.filter(type="model.turn").order_by("seq")]


def calls_started(job: Job) -> list[str]:
    """The id of each tool call the job marked started, in order."""
    return [event.data["id"] for event in job.events.filter(type="tool.started").order_by("seq")]


def finished_by(job: Job) -> str:
    """The executor that made the job's final transition."""
    return job.events.filter(type="job.status").order_by("-seq").first().data["executor"]


def test_a_running_job_survives_its_executor_being_killed(fake, owner, default_persona, workers):
    fake.script_delay(30)  # the first model call hangs...
    fake.script_text("Finished by the second executor.")  # ...the retry answers
    job = services.job_submit(user=owner, options=LOOP_ONLY, task="Think slowly")
    first = workers()
    wait_until(lambda: fake.call_count >= 1, what="the first model call")
    killed = Job.objects.get(pk=job.pk).lease_owner
    kill(first)

    workers()
    done = wait_until(lambda: job_in(job.pk, "complete", "error"), what="the job to finish")
    assert done.status == "complete", done.error
    assert done.response == "Finished by the second executor."
    # However often a loaded host let a lease run out and the job be claimed again: another
    # executor finished it, and the model's one answer was recorded once.
    assert killed and finished_by(done) not in ("", killed)
    assert rounds_answered(done) == [1]


def test_a_non_idempotent_tool_cut_off_by_a_crash_is_not_run_again(fake, owner, default_persona, workers, trace):
    fake.script_tool_calls(Call("slow_charge", {"label": "order-1", "seconds": 30}, id="pay"))
    fake.script_text("I could not confirm the charge went through.")
    job = services.job_submit(user=owner, options=LOOP_ONLY, task="Pay order 1")
    first = workers()
    wait_until(lambda: trace_lines(trace), what="the charge to start")
    kill(first)

    workers()
    done = wait_until(lambda: job_in(job.pk, "complete", "error"), what="the job to finish")
    assert done.status == "complete", done.error
    assert trace_lines(trace) == ["charge order-1"]
    call = done.tool_calls.get()
    assert call.status == "interrupted" and call.interrupted
    assert calls_started(done) == ["pay"] and rounds_answered(done) == [1, 2]
    [result] = [m for m in fake.calls[-1]["messages"] if m["role"] == "tool"]
    assert "interrupted by a restart" in result["content"] and "not run again" in result["content"]


def test_an_idempotent_tool_cut_off_by_a_crash_runs_again(fake, owner, default_persona, workers, trace):
    fake.script_tool_calls(Call("slow_lookup", {"label": "weather", "seconds": 2}, id="look"))
    fake.script_text("Looked it up.")
    job = services.job_submit(user=owner, options=LOOP_ONLY, task="Look up the weather")
    first = workers()
    wait_until(lambda: trace_lines(trace), what="the lookup to start")
    kill(first)

    workers()
    done = wait_until(lambda: job_in(job.pk, "complete", "error"), what="the job to finish")
    assert done.status == "complete", done.error
    assert trace_lines(trace) == ["lookup weather", "lookup weather"]
    assert done.tool_calls.get().status == "succeeded"
    assert calls_started(done) == ["look", "look"] and rounds_answered(done) == [1, 2]


def test_an_approved_call_cut_off_by_a_crash_goes_back_to_a_person(fake, owner, default_persona, workers, trace):
    fake.script_tool_calls(Call("gated_charge", {"label": "order-2", "seconds": 30}, id="gate"))
    fake.script_text("Charged.")
    job = services.job_submit(user=owner, options=LOOP_ONLY, task="Pay order 2")
    first = workers()
    wait_until(lambda: job_in(job.pk, "awaiting_confirmation"), what="the confirmation")
    services.job_confirm(user=owner, job_id=job.pk)
    wait_until(lambda: trace_lines(trace), what="the charge to start")
    kill(first)

    workers()
    waiting = wait_until(lambda: job_in(job.pk, "awaiting_confirmation"), what="the job to ask again")
    call = waiting.tool_calls.get()
    assert call.status == "awaiting" and call.interrupted
    assert trace_lines(trace) == ["gated order-2"] and calls_started(waiting) == ["gate"]


def test_a_job_waiting_for_confirmation_survives_a_restart_of_the_server(owner, default_persona, workers):
    token = services.token_create(user=owner)[1]
    headers = {"Authorization": f"Bearer {token}"}

    port = free_port()
    server = workers("--port", str(port), command="serve")
    wait_for_port(port, process=server)
    base = f"http://127.0.0.1:{port}"
    job_id = httpx.post(f"{base}/orchestrate", json={"task": "Write a note: survive"}, headers=headers).json()["job_id"]
    wait_until(lambda: httpx.get(f"{base}/orchestrate/{job_id}", headers=headers).json()["status"]
               == "awaiting_confirmation", what="the confirmation")
    kill(server)

    port = free_port()
    server = workers("--port", str(port), command="serve")
    wait_for_port(port, process=server)
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/orchestrate/{job_id}", headers=headers).json()["status"] == "awaiting_confirmation"
    assert httpx.post(f"{base}/orchestrate/{job_id}/confirm", headers=headers).status_code == 200
    done = wait_until(lambda: (body := httpx.get(f"{base}/orchestrate/{job_id}", headers=headers).json())
                      ["status"] == "complete" and body, what="the job to complete")
    assert "workspace_write" in done["response"]


def confirm_concurrently(raw_token: str, job_id, count: int) -> list[int]:
    barrier = threading.Barrier(count)

    def confirm(_):
        client = ApiClient(raw_token)
        try:
            barrier.wait()
            return client.post(f"/orchestrate/{job_id}/confirm").status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(confirm, range(count)))


def twenty_confirms(fake, owner, engine, trace):
    fake.script_tool_calls(Call("gated_charge", {"label": "once"}, id="only"))
    fake.script_text("Charged once.")
    job = services.job_submit(user=owner, options=LOOP_ONLY, task="Charge once")
    async_to_sync(engine.run_until)(job.pk, "awaiting_confirmation")
    token = services.token_create(user=owner)[1]

    statuses = confirm_concurrently(token, job.pk, 20)
    assert sorted(statuses) == [200] + [409] * 19

    done = async_to_sync(engine.run_until)(job.pk, "complete")
    assert trace_lines(trace) == ["gated once"]
    call = done.tool_calls.get()
    assert call.status == "succeeded" and call.decision == "approved"
    assert done.events.filter(type="tool.decided").count() == 1
    assert json.loads(call.result) == {"charged": "once"}


def test_of_twenty_simultaneous_confirms_exactly_one_succeeds(fake, owner, default_persona, engine, trace,
                                                              monkeypatch):
    monkeypatch.setenv("CORTEX_TEST_TRACE", str(trace))
    twenty_confirms(fake, owner, engine, trace)


@pytest.mark.scaleout
def test_of_twenty_simultaneous_confirms_exactly_one_succeeds_on_postgres(fake, owner, default_persona, engine,
                                                                          trace, monkeypatch):
    assert connection.vendor == "postgresql"
    monkeypatch.setenv("CORTEX_TEST_TRACE", str(trace))
    twenty_confirms(fake, owner, engine, trace)
