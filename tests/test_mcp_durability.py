"""MCP calls and crashes, with real processes: an executor killed with SIGKILL in the middle of an
MCP call, and another executor taking the job over."""

from __future__ import annotations

import sys

import pytest

from orchestrator import services
from orchestrator.mcp import services as mcp_services
from tests.fakes.http import ToolCall as Call
from tests.test_durability import calls_started, fake, job_in, kill, rounds_answered, wait_until, workers  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
LOOP_ONLY = services.JobOptions(respond_with_final=False)


@pytest.fixture
def trace(tmp_path):
    return tmp_path / "trace.log"


@pytest.fixture
def home(trace):
    server = mcp_services.server_add(by=None, name="home", site_wide=True, command=sys.executable,
                                     args=["-m", "tests.fakes.mcp_server"], env={"MCP_TEST_TRACE": str(trace)})
    assert mcp_services.server_refresh(by=None, server_id=server.pk)[1] is None
    return server


def lines(trace) -> list[str]:
    return trace.read_text().splitlines() if trace.exists() else []


def test_a_non_idempotent_mcp_call_cut_off_by_a_crash_is_not_run_again(fake, owner, default_persona, workers,
                                                                       trace, home):
    fake.script_tool_calls(Call("home__slow_count", {"label": "votes", "seconds": 30}, id="count"))
    fake.script_text("I could not tell whether the count finished.")
    job = services.job_submit(user=owner, options=LOOP_ONLY, task="Count the votes")
    first = workers()
    wait_until(lambda: "slow_count votes" in lines(trace), what="the call to start")
    kill(first)

    workers()
    done = wait_until(lambda: job_in(job.pk, "complete", "error"), what="the job to finish")
    assert done.status == "complete", done.error
    assert lines(trace).count("slow_count votes") == 1
    call = done.tool_calls.get()
    assert call.status == "interrupted" and call.interrupted
    assert calls_started(done) == ["count"] and rounds_answered(done) == [1, 2]
    [result] = [m for m in fake.calls[-1]["messages"] if m["role"] == "tool"]
    assert "not run again" in result["content"]


def test_a_server_added_while_an_executor_runs_is_used_by_its_next_job(fake, owner, default_persona, workers, trace):
    workers()  # started before the server exists
    fake.script_text("Nothing to do.")
    warm = services.job_submit(user=owner, options=LOOP_ONLY, task="Warm up")
    wait_until(lambda: job_in(warm.pk, "complete"), what="a first job, before the server is added")
    assert "home__read_note" not in {tool["function"]["name"] for tool in fake.calls[-1].get("tools", [])}

    server = mcp_services.server_add(by=None, name="home", site_wide=True, command=sys.executable,
                                     args=["-m", "tests.fakes.mcp_server"], env={"MCP_TEST_TRACE": str(trace)})
    assert mcp_services.server_refresh(by=None, server_id=server.pk)[1] is None
    fake.script_tool_calls(Call("home__read_note", {"title": "todo"}, id="n"))
    fake.script_text("Read it.")
    job = services.job_submit(user=owner, options=LOOP_ONLY, task="Read my todo note")
    done = wait_until(lambda: job_in(job.pk, "complete", "error"), what="the job to finish")
    assert done.status == "complete", done.error
    assert done.tool_calls.get().result == "The note 'todo' says: buy milk."
    assert lines(trace) == ["read_note todo"]
