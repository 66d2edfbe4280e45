"""The tool loop through the real `openai` SDK over real HTTP, against a fake Chat Completions server."""

import asyncio
import io
import json
import time

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command

from orchestrator import services
from orchestrator.engine.loop import workspace_for
from orchestrator.models import Job, JobEvent, Memory
from orchestrator.tools.registry import registry
from tests.fakes.http import ToolCall as Call
from tests.fakes.openai_fake import OpenAIFake

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fake(settings):
    with OpenAIFake(expect_key="sk-test") as server:
        settings.CORTEX_ORCHESTRATOR_MODEL = "openai:test-model"
        settings.OPENAI_BASE_URL = server.base_url
        settings.OPENAI_API_KEY = "sk-test"
        yield server
    assert server.errors == []


@pytest.fixture
def submit(owner, default_persona):
    async def make(task: str = "Do the thing") -> Job:
        # The loop's own answer: these tests are about the tool loop, not the chat-role answer.
        return await sync_to_async(services.job_submit)(user=owner, task=task,
                                                        options=services.JobOptions(respond_with_final=False))

    return make


def tool_messages(body: dict) -> list[dict]:
    return [m for m in body["messages"] if m["role"] == "tool"]


async def event_types(job: Job) -> list[str]:
    return await sync_to_async(lambda: list(JobEvent.objects.filter(job=job).values_list("type", flat=True)))()


async def calls_of(job: Job) -> list:
    return await sync_to_async(lambda: list(job.tool_calls.order_by("round", "position")))()


async def test_parallel_tool_calls_in_a_multi_round_loop(fake, submit, engine):
    fake.script_tool_calls(Call("current_time", {"timezone": "UTC"}, id="c1"),
                           Call("calculator", {"expression": "6*7"}, id="c2"))
    fake.script_tool_calls(Call("calculator", {"expression": "42+1"}, id="c3"))
    fake.script_text("It is late and the answer is 43.")
    job = await engine.run_until((await submit()).pk, "complete")

    assert job.response == "It is late and the answer is 43."
    assert job.backend == "openai:test-model" and job.backend_label == "OpenAI-compatible · test-model"
    assert [(c.call_id, c.status) for c in await calls_of(job)] == [
        ("c1", "succeeded"), ("c2", "succeeded"), ("c3", "succeeded")]
    second, third = fake.calls[1], fake.calls[2]
    assert [m["tool_call_id"] for m in tool_messages(second)] == ["c1", "c2"]
    assert json.loads(tool_messages(second)[1]["content"])["result"] == 42
    assert [c["id"] for c in second["messages"][-3]["tool_calls"]] == ["c1", "c2"]
    assert [m["tool_call_id"] for m in tool_messages(third)] == ["c1", "c2", "c3"]
    assert second["messages"][0]["role"] == "system"
    assert {t["function"]["name"] for t in fake.calls[0]["tools"]} >= {"current_time", "calculator", "http_get"}
    assert job.usage["model_calls"] == 3 and job.usage["input_tokens"] > 0


async def test_arguments_that_are_not_json_go_back_to_the_model_as_an_error(fake, submit, engine):
    fake.script_tool_calls(Call("calculator", '{"expression": "1+', id="bad"))
    fake.script_text("Sorry, I sent broken arguments.")
    job = await engine.run_until((await submit()).pk, "complete")
    [call] = await calls_of(job)
    assert call.status == "failed" and call.raw_arguments == '{"expression": "1+'
    [result] = tool_messages(fake.calls[1])
    assert result["tool_call_id"] == "bad" and "not valid JSON" in result["content"]
    # The malformed call is replayed as the model wrote it, so the transcript stays well formed.
    assert fake.calls[1]["messages"][-2]["tool_calls"][0]["function"]["arguments"] == '{"expression": "1+'


async def test_an_unknown_tool_goes_back_to_the_model_with_the_tools_it_has(fake, submit, engine):
    fake.script_tool_calls(Call("launch_rockets", {}, id="x1"))
    fake.script_text("I can't do that.")
    job = await engine.run_until((await submit()).pk, "complete")
    [result] = tool_messages(fake.calls[1])
    assert "no tool named 'launch_rockets'" in result["content"] and "calculator" in result["content"]
    [call] = await calls_of(job)
    assert (call.verdict, call.status) == ("refuse", "refused")
    assert call.verdict_reason == "there is no tool named 'launch_rockets'"


async def test_arguments_that_break_the_schema_go_back_as_an_error(fake, submit, engine):
    fake.script_tool_calls(Call("calculator", {"expr": "1"}, id="s1"))
    fake.script_text("Oops.")
    await engine.run_until((await submit()).pk, "complete")
    assert "invalid arguments for calculator" in tool_messages(fake.calls[1])[0]["content"]


async def test_a_tool_that_raises_gives_the_model_an_error_result(fake, submit, engine):
    fake.script_tool_calls(Call("explode", {}, id="e1"))
    fake.script_text("The tool broke.")
    job = await engine.run_until((await submit()).pk, "complete")
    assert "RuntimeError: boom" in tool_messages(fake.calls[1])[0]["content"]
    assert job.status == "complete"


async def test_a_rate_limit_is_retried_after_the_time_the_provider_asks(fake, submit, engine):
    fake.script_error(429, retry_after=0.3)
    fake.script_text("Made it.")
    started = time.monotonic()
    job = await engine.run_until((await submit()).pk, "complete")
    assert time.monotonic() - started >= 0.3
    assert job.response == "Made it." and fake.call_count == 2
    retry = await sync_to_async(JobEvent.objects.get)(job=job, type="model.retry")
    assert retry.data["wait_seconds"] == 0.3 and "429" in retry.data["error"]


async def test_a_server_error_is_retried_and_then_reported(fake, submit, engine, settings):
    settings.CORTEX_MODEL_ATTEMPTS = 3
    for _ in range(3):
        fake.script_error(500)
    job = await engine.run_until((await submit()).pk, "error")
    assert fake.call_count == 3
    assert job.error.startswith("model call failed: the provider failed (500)") and "after 3 attempts" in job.error


async def test_a_rejected_key_fails_the_job_at_once_with_a_clear_error(fake, submit, engine, settings):
    settings.OPENAI_API_KEY = "sk-wrong"
    job = await engine.run_until((await submit()).pk, "error")
    assert fake.call_count == 1
    assert "API key was rejected (401)" in job.error


async def test_a_slow_answer_times_out_and_is_retried(fake, submit, engine, settings):
    settings.CORTEX_MODEL_TIMEOUT = 0.3
    fake.script_delay(5)
    fake.script_text("Second try was quick.")
    job = await engine.run_until((await submit()).pk, "complete")
    assert job.response == "Second try was quick."
    retry = await sync_to_async(JobEvent.objects.get)(job=job, type="model.retry")
    assert "did not answer in time" in retry.data["error"]


async def test_an_empty_answer_fails_the_job_with_a_clear_message(fake, submit, engine):
    fake.script_text("", chunks=[""])
    job = await engine.run_until((await submit()).pk, "error")
    assert job.error == "the model (OpenAI-compatible · test-model) returned an empty answer"


async def test_the_last_round_offers_no_tools_and_asks_for_an_answer(fake, submit, engine, settings):
    settings.CORTEX_MAX_ROUNDS = 2
    fake.script_tool_calls(Call("current_time", {}, id="r1"))
    fake.script_tool_calls(Call("current_time", {}, id="r2"))
    fake.script_text("Final, without tools.")
    job = await engine.run_until((await submit()).pk, "complete")
    assert "tools" in fake.calls[1] and "tools" not in fake.calls[2]
    assert "Answer now" in fake.calls[2]["messages"][-1]["content"]
    assert job.rounds == 2


async def test_several_gates_in_a_row(fake, submit, engine, owner):
    fake.script_tool_calls(Call("gated_charge", {"label": "first"}, id="g1"))
    fake.script_tool_calls(Call("gated_charge", {"label": "second"}, id="g2"))
    fake.script_text("One charged, one refused.")
    job = await engine.run_until((await submit()).pk, "awaiting_confirmation")
    await sync_to_async(services.job_confirm)(user=owner, job_id=job.pk)
    job = await engine.run_until(job.pk, "awaiting_confirmation")
    assert [c.status for c in await calls_of(job)] == ["succeeded", "awaiting"]
    await sync_to_async(services.job_deny)(user=owner, job_id=job.pk, reason="once is enough")
    job = await engine.run_until(job.pk, "complete")
    assert [c.status for c in await calls_of(job)] == ["succeeded", "denied"]
    assert "once is enough" in tool_messages(fake.calls[2])[1]["content"]


async def test_approving_for_the_rest_of_the_job_stops_asking(fake, submit, engine, owner):
    fake.script_tool_calls(Call("gated_charge", {"label": "a"}, id="a1"))
    fake.script_tool_calls(Call("gated_charge", {"label": "b"}, id="b1"))
    fake.script_text("Both done.")
    job = await engine.run_until((await submit()).pk, "awaiting_confirmation")
    await sync_to_async(services.job_confirm)(user=owner, job_id=job.pk, remember="job")
    job = await engine.run_until(job.pk, "complete")
    calls = await calls_of(job)
    assert [(c.verdict, c.status) for c in calls] == [("ask", "succeeded"), ("run", "succeeded")]


async def test_max_risk_and_overrides_decide_what_the_model_is_offered(fake, submit, engine, owner):
    await sync_to_async(services.policy_update)(user=owner, max_risk="low", overrides={"http_get": "include",
                                                                                      "calculator": "exclude"},
                                                confirmations={"current_time": "ask"})
    fake.script_tool_calls(Call("current_time", {}, id="t1"), Call("workspace_write", {"path": "a", "content": "b"},
                                                                   id="t2"))
    fake.script_text("ok")
    job = await engine.run_until((await submit()).pk, "awaiting_confirmation")
    offered = {t["function"]["name"] for t in fake.calls[0]["tools"]}
    assert "http_get" in offered and "calculator" not in offered and "workspace_write" not in offered
    assert "current_time" in offered and "memory_search" in offered
    current_time, write = await calls_of(job)
    assert current_time.status == "awaiting"  # low risk, but this user asked to be asked
    assert write.status == "refused" and "medium risk above low" in write.result


async def test_cancel_stops_an_in_flight_model_call_within_a_second(fake, submit, owner):
    from orchestrator.engine.executor import Executor

    fake.script_delay(30)
    job = await submit()
    executor = Executor(concurrency=5)
    runner = asyncio.create_task(executor.run())
    try:
        await fake.wait_for_calls(1)
        started = time.monotonic()
        await sync_to_async(services.job_cancel)(user=owner, job_id=job.pk)
        while executor.tasks:
            await asyncio.sleep(0.01)
        assert time.monotonic() - started < 1.0
        await fake.wait_for_disconnects(1, timeout=1.0)
    finally:
        await executor.stop()
        await runner
    job = await sync_to_async(Job.objects.get)(pk=job.pk)
    assert job.status == "cancelled"
    assert "model.turn" not in await event_types(job)


async def test_a_call_outside_the_role_allow_list_never_starts(fake, submit, engine, owner, settings):
    """The acceptance case: only `calculator` is offered, and nothing else runs, whatever the rules say."""
    await sync_to_async(call_command)("models", "assign", "orchestrator", "default", "--user", owner.username,
                                      "--tools", "calculator", stdout=io.StringIO())
    await sync_to_async(services.policy_update)(user=owner, max_risk="high", overrides={},
                                                confirmations={"workspace_write": "run"})
    workspace = workspace_for(owner.pk)
    workspace.mkdir(parents=True)
    (workspace / "diary.txt").write_text("dear diary")
    fake.script_tool_calls(Call("memory_save", {"content": "the user keeps a diary"}, id="m1"),
                           Call("workspace_read", {"path": "diary.txt"}, id="r1"),
                           Call("workspace_write", {"path": "note.txt", "content": "written anyway"}, id="w1"))
    fake.script_text("None of those tools are mine to use.")
    job = await engine.run_until((await submit()).pk, "complete")

    assert [t["function"]["name"] for t in fake.calls[0]["tools"]] == ["calculator"]
    calls = await calls_of(job)
    assert [(c.name, c.verdict, c.status, c.started_at) for c in calls] == [
        ("memory_save", "refuse", "refused", None), ("workspace_read", "refuse", "refused", None),
        ("workspace_write", "refuse", "refused", None)]
    events = await sync_to_async(lambda: list(JobEvent.objects.filter(job=job).order_by("seq")))()
    assert "tool.started" not in [event.type for event in events]
    refusals = [event.data for event in events if event.type == "tool.call"]
    assert [(e["name"], e["verdict"], e["reason"]) for e in refusals] == [
        (name, "refuse", f"tool {name} is not allowed (not on the orchestrator role's tool list)")
        for name in ("memory_save", "workspace_read", "workspace_write")]
    assert not (workspace / "note.txt").exists()
    assert await sync_to_async(Memory.objects.count)() == 0
    results = tool_messages(fake.calls[1])
    assert [r["tool_call_id"] for r in results] == ["m1", "r1", "w1"]
    for result, called in zip(results, ("memory_save", "workspace_read", "workspace_write")):
        assert result["content"].endswith(". The tools offered to you: calculator.")
        assert "dear diary" not in result["content"]
        others = set(registry.names()) - {"calculator", called}
        assert not [name for name in others if name in result["content"]]


async def test_an_unknown_name_is_told_only_the_tools_offered(fake, submit, engine, owner):
    await sync_to_async(services.policy_update)(user=owner, max_risk="low", overrides={"http_get": "include"},
                                                confirmations={"calculator": "never"})
    fake.script_tool_calls(Call("launch_rockets", {}, id="x1"))
    fake.script_text("No rockets.")
    job = await engine.run_until((await submit()).pk, "complete")
    offered = [t["function"]["name"] for t in fake.calls[0]["tools"]]
    assert "http_get" in offered and "calculator" not in offered and "workspace_write" not in offered
    [result] = tool_messages(fake.calls[1])
    assert result["content"] == (f"Error: there is no tool named 'launch_rockets'. "
                                 f"The tools offered to you: {', '.join(offered)}.")
    assert (await calls_of(job))[0].status == "refused"
