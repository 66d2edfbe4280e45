"""The tool loop through the real `openai` SDK over real HTTP, against a fake Chat Completions server."""

import asyncio
import io
import json
import time

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.core.management import call_command

from orchestrator import services
from orchestrator.engine.loop import workspace_for
from orchestrator.models import Job, JobEvent, Memory
from orchestrator.tools.registry import registry
from tests.fakes.http import ToolCall as Call
from tests.fakes.http import Turn
from tests.fakes.openai_fake import OpenAIFake, insufficient_quota

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
    async def make(task: str = "Do the thing", *, respond_with_final: bool = False) -> Job:
        # By default the loop's own answer: most tests are about the tool loop, not the chat-role answer.
        return await sync_to_async(services.job_submit)(
            user=owner, task=task, options=services.JobOptions(respond_with_final=respond_with_final))

    return make


async def limit_role(owner, role: str, tokens: int) -> None:
    await sync_to_async(services.role_assign)(by=None, owner=owner, role=role, profile_id=None, max_output_tokens=tokens)


async def deltas_after_last_reset(job: Job) -> str:
    def read() -> str:
        events = list(JobEvent.objects.filter(job=job, type__in=("answer.delta", "answer.reset")).order_by("seq"))
        last_reset = max((n for n, e in enumerate(events) if e.type == "answer.reset"), default=-1)
        return "".join(e.data["text"] for e in events[last_reset + 1:])

    return await sync_to_async(read)()


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


async def test_a_job_whose_model_once_sent_arguments_that_are_not_json_completes(fake, submit, engine):
    # The fake refuses past arguments that are not a JSON object, as vLLM, Ollama and llama-server do.
    fake.script_tool_calls(Call("calculator", '{"expression": "1+', id="bad"))
    fake.script_tool_calls(Call("calculator", {"expression": "1+1"}, id="good"))
    fake.script_text("1+1 is 2.")
    job = await engine.run_until((await submit()).pk, "complete")
    assert job.response == "1+1 is 2." and fake.call_count == 3
    bad, good = await calls_of(job)
    assert bad.status == "failed" and bad.raw_arguments == '{"expression": "1+'
    assert good.status == "succeeded"
    [result, _] = tool_messages(fake.calls[2])
    assert result["tool_call_id"] == "bad" and "not valid JSON" in result["content"]
    # Replayed as a JSON object that still shows what the model wrote; stored as it was written.
    replayed = fake.calls[1]["messages"][-2]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(replayed) == {"unparsed_arguments": '{"expression": "1+'}
    assert job.transcript[1]["tool_calls"][0]["arguments"] == '{"expression": "1+'


async def test_arguments_sent_as_an_object_are_taken_as_json(submit, engine, settings):
    with OpenAIFake(arguments_as_objects=True) as server:
        settings.CORTEX_ORCHESTRATOR_MODEL = "openai:test-model"
        settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY = server.base_url, "sk-test"
        server.script_tool_calls(Call("calculator", {"expression": "6*7"}, id="obj"))
        server.script_text("42.")
        job = await engine.run_until((await submit()).pk, "complete")
    [call] = await calls_of(job)
    assert call.status == "succeeded" and json.loads(call.raw_arguments) == {"expression": "6*7"}
    assert job.response == "42."


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
    settings.CORTEX_MODEL_TIMEOUT = 1.5  # far below the scripted 5 s, far above a quick answer on a loaded machine
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


LONG = "word " * 100


async def test_an_answer_cut_off_at_the_role_output_limit_ends_the_job_in_error(fake, submit, engine, owner):
    await limit_role(owner, "orchestrator", 20)
    fake.script_text(LONG)
    job = await engine.run_until((await submit()).pk, "error")
    assert fake.calls[0]["max_tokens"] == 20
    assert job.error.startswith("the model (OpenAI-compatible · test-model) was cut off at the output limit of 20 "
                                "tokens") and "(finish reason: length)" in job.error
    assert "orchestrator role's max output tokens" in job.error
    assert job.response == LONG[:80]


async def test_without_a_role_limit_no_limit_is_sent_and_a_cut_off_still_fails(fake, submit, engine):
    fake.script_text("Half of the", finish_reason="length")
    job = await engine.run_until((await submit()).pk, "error")
    assert "max_tokens" not in fake.calls[0]
    assert "cut off at the model server's own output limit" in job.error
    assert job.response == "Half of the"


async def test_a_chat_answer_cut_off_at_its_limit_keeps_the_streamed_part(fake, submit, engine, owner, settings):
    settings.CORTEX_CHAT_MODEL = "openai:test-model"
    await limit_role(owner, "chat", 30)
    fake.script_text("Loop summary.")
    fake.script_text(LONG)
    job = await engine.run_until((await submit(respond_with_final=True)).pk, "error")
    assert fake.calls[1]["max_tokens"] == 30 and fake.calls[1]["stream"] is True
    assert job.error.startswith("the chat model (OpenAI-compatible · test-model) was cut off at the output limit "
                                "of 30 tokens") and "chat role's max output tokens" in job.error
    assert job.response == LONG[:120] == await deltas_after_last_reset(job)


async def test_a_filtered_answer_ends_the_job_in_error(fake, submit, engine):
    fake.script_text("Here is how to", finish_reason="content_filter")
    job = await engine.run_until((await submit()).pk, "error")
    assert job.error == ("the model (OpenAI-compatible · test-model) was blocked before it finished its answer "
                         "(finish reason: content_filter)")
    assert job.response == "Here is how to"


async def test_a_tool_call_in_a_cut_off_turn_is_not_run(fake, submit, engine):
    fake.script_tool_calls(Call("workspace_write", {"path": "a.txt", "content": "half"}, id="w1"),
                           finish_reason="length")
    job = await engine.run_until((await submit()).pk, "error")
    assert await calls_of(job) == []
    assert "its tool call was not run" in job.error and "(finish reason: length)" in job.error
    turn = await sync_to_async(JobEvent.objects.get)(job=job, type="model.turn")
    assert turn.data["tool_calls"][0]["name"] == "workspace_write" and turn.data["finish_reason"] == "length"


async def test_an_exhausted_quota_fails_at_once_and_says_so(fake, submit, engine):
    fake.script(Turn(error=insufficient_quota()))
    job = await engine.run_until((await submit()).pk, "error")
    assert fake.call_count == 1
    assert job.error.startswith("model call failed: the account's quota is used up (429 insufficient_quota)")
    assert job.usage["model_calls"] == 1


async def test_a_stream_that_fails_half_way_is_retried_and_the_answer_is_whole(fake, submit, engine, settings):
    settings.CORTEX_CHAT_MODEL = "openai:test-model"
    fake.script_text("Loop summary.")
    fake.script_text(chunks=["The answer ", "is ", "forty-two."], error_after=3)
    fake.script_text(chunks=["The answer ", "is ", "forty-two."])
    job = await engine.run_until((await submit(respond_with_final=True)).pk, "complete")
    assert job.response == "The answer is forty-two." == await deltas_after_last_reset(job)
    retry = await sync_to_async(JobEvent.objects.get)(job=job, type="model.retry")
    assert "failed while answering" in retry.data["error"]
    assert fake.call_count == 3 and job.usage["model_calls"] == 3


async def test_a_stream_longer_than_the_timeout_completes_while_pieces_keep_coming(fake, submit, engine, settings):
    settings.CORTEX_CHAT_MODEL = "openai:test-model"
    # The stream takes about 2.75 s in all, longer than the engine would wait for a whole call
    # (1 s and a grace of 1 s), with a piece every 0.25 s.
    settings.CORTEX_MODEL_TIMEOUT = 1.0
    fake.script_text("Loop summary.")
    fake.script_text(chunks=[f"piece {n} " for n in range(12)], chunk_delay=0.25)
    job = await engine.run_until((await submit(respond_with_final=True)).pk, "complete")
    assert job.response == "".join(f"piece {n} " for n in range(12))
    assert fake.call_count == 2 and "model.retry" not in await event_types(job)


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_request_is_what_the_sdks_own_create_would_send(streamed):
    """The provider posts its plain-JSON body without the SDK's reshaping walk: the server sees the
    same path, JSON, auth and headers as from `client.chat.completions.create`."""
    from orchestrator.providers.base import ModelRequest, ModelResponse, ModelToolCall
    from orchestrator.providers.openai_compat import OpenAIProvider, limit_parameter, to_openai_messages

    request = ModelRequest(
        model="test-model", system="You help.", temperature=0.2, max_tokens=900, timeout=30,
        messages=[{"role": "user", "content": "Note it: ünïcode, \"quotes\", \u2028"},
                  ModelResponse(text="", tool_calls=[ModelToolCall("call_1", "workspace_write",
                                                                   '{"path": "a.txt", "content": "x"}')]
                                ).as_message(),
                  {"role": "tool", "tool_call_id": "call_1", "name": "workspace_write", "content": "written"}],
        tools=[tool.spec() for tool in registry][:3])
    with OpenAIFake(expect_key="sk-test") as server:
        provider = OpenAIProvider(base_url=server.base_url, api_key="sk-test")
        on_delta = (lambda text: asyncio.sleep(0)) if streamed else None
        await provider.complete(request, on_delta=on_delta)
        kwargs = {"model": request.model, "messages": to_openai_messages(request), "timeout": request.timeout,
                  "tools": [{"type": "function", "function": spec} for spec in request.tools],
                  "temperature": request.temperature, limit_parameter(server.base_url): request.max_tokens}
        if streamed:
            kwargs.update(stream=True, stream_options={"include_usage": True})
        answer = await provider.client.chat.completions.create(**kwargs)
        chunks = [chunk async for chunk in answer] if streamed else []  # a stream is read to its end
        assert chunks or not streamed
        ours, sdks = [r for r in server.requests if server.is_generation_path(r.path)]
    assert ours.path == sdks.path and ours.json == sdks.json
    assert ours.json["stream"] is True if streamed else "stream" not in ours.json
    assert ours.headers["authorization"] == sdks.headers["authorization"] == "Bearer sk-test"
    ignored = {"x-stainless-retry-count", "x-stainless-read-timeout", "content-length"}
    assert {k: v for k, v in ours.headers.items() if k not in ignored} == \
        {k: v for k, v in sdks.headers.items() if k not in ignored}


async def test_a_job_submitted_while_the_executor_joins_its_doorbells_starts_without_a_poll(fake, submit, settings,
                                                                                            monkeypatch):
    """The executor's first claim waits until it hears doorbells: a job submitted before then is
    found by that claim, and one submitted after rings it; none waits for the next poll."""
    from orchestrator.engine.executor import Executor

    settings.CORTEX_POLL_SECONDS = 60
    layer = get_channel_layer()
    group_add = layer.group_add
    joining = asyncio.Event()

    async def slow_to_join(group: str, channel: str) -> None:
        joining.set()
        await asyncio.sleep(0.5)
        await group_add(group, channel)

    monkeypatch.setattr(layer, "group_add", slow_to_join)
    fake.script_text("Done.")
    executor = Executor(concurrency=5)
    runner = asyncio.create_task(executor.run())
    try:
        await asyncio.wait_for(joining.wait(), 10)
        await asyncio.sleep(0.2)  # a claim made as the executor started would be over by now
        job = await submit()  # its doorbell rings before the executor has joined: nobody hears it
        async with asyncio.timeout(10):
            while (await sync_to_async(Job.objects.get)(pk=job.pk)).status == "queued":
                await asyncio.sleep(0.05)
    finally:
        await executor.stop()
        await runner
