"""The tool loop through the real `anthropic` SDK over real HTTP, against a fake Messages API."""

import json
import time

import pytest
from asgiref.sync import sync_to_async

from orchestrator import providers, services
from orchestrator.models import Job, JobEvent
from orchestrator.providers.base import ModelRequest, ProviderError
from tests.fakes.anthropic_fake import AnthropicFake
from tests.fakes.http import ToolCall as Call
from tests.fakes.http import Turn, estimate_tokens

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "claude-sonnet-4-6"


@pytest.fixture
def fake(settings):
    with AnthropicFake(expect_key="sk-ant-test") as server:
        settings.CORTEX_ORCHESTRATOR_MODEL = f"anthropic:{MODEL}"
        settings.CORTEX_ANTHROPIC_BASE_URL = server.base_url
        settings.ANTHROPIC_API_KEY = "sk-ant-test"
        yield server
    assert server.errors == []


@pytest.fixture
def submit(owner, default_persona):
    async def make(task: str = "Do the thing", *, respond_with_final: bool = False) -> Job:
        options = services.JobOptions(respond_with_final=respond_with_final)
        return await sync_to_async(services.job_submit)(user=owner, task=task, options=options)

    return make


def results(body: dict) -> list[dict]:
    """Every tool_result block in a request, in order."""
    return [block for message in body["messages"] if isinstance(message["content"], list)
            for block in message["content"] if block["type"] == "tool_result"]


async def calls_of(job: Job) -> list:
    return await sync_to_async(lambda: list(job.tool_calls.order_by("round", "position")))()


def collect() -> tuple[list[str], object]:
    pieces: list[str] = []

    async def on_delta(text: str) -> None:
        pieces.append(text)

    return pieces, on_delta


async def test_two_tool_uses_in_one_turn_then_another_round(fake, submit, engine):
    fake.script_tool_calls(Call("current_time", {"timezone": "UTC"}, id="toolu_a"),
                           Call("calculator", {"expression": "6*7"}, id="toolu_b"), text="Let me look.")
    fake.script_tool_calls(Call("calculator", {"expression": "42+1"}, id="toolu_c"))
    fake.script_text("It is late and the answer is 43.")
    job = await engine.run_until((await submit()).pk, "complete")

    assert job.response == "It is late and the answer is 43."
    assert job.backend == f"anthropic:{MODEL}" and job.backend_label == f"Claude · {MODEL}"
    assert [(c.call_id, c.status) for c in await calls_of(job)] == [
        ("toolu_a", "succeeded"), ("toolu_b", "succeeded"), ("toolu_c", "succeeded")]

    first, second, third = fake.calls
    assert first["max_tokens"] == 16384 and first["system"]
    assert {t["name"] for t in first["tools"]} >= {"current_time", "calculator", "http_get"}
    calculator = next(t for t in first["tools"] if t["name"] == "calculator")
    assert calculator["input_schema"]["required"] == ["expression"]

    assistant = second["messages"][1]
    assert assistant["role"] == "assistant"
    assert [b["type"] for b in assistant["content"]] == ["text", "tool_use", "tool_use"]
    assert assistant["content"][2]["input"] == {"expression": "6*7"}
    # One user message holds the whole round's results.
    assert second["messages"][2]["role"] == "user"
    assert [r["tool_use_id"] for r in second["messages"][2]["content"]] == ["toolu_a", "toolu_b"]
    assert json.loads(results(second)[1]["content"])["result"] == 42
    assert [r["tool_use_id"] for r in results(third)] == ["toolu_a", "toolu_b", "toolu_c"]
    assert [m["role"] for m in third["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    assert job.usage["model_calls"] == 3 and job.usage["input_tokens"] > 0


async def test_a_rate_limit_is_retried_after_the_time_the_provider_asks(fake, submit, engine):
    fake.script_error(429, retry_after=0.3)
    fake.script_text("Made it.")
    started = time.monotonic()
    job = await engine.run_until((await submit()).pk, "complete")
    assert time.monotonic() - started >= 0.3
    assert job.response == "Made it." and fake.call_count == 2
    retry = await sync_to_async(JobEvent.objects.get)(job=job, type="model.retry")
    assert retry.data["wait_seconds"] == 0.3 and "rate limited (429)" in retry.data["error"]


async def test_an_overloaded_api_is_retried_then_reported(fake, submit, engine, settings):
    settings.CORTEX_MODEL_ATTEMPTS = 2
    fake.script_error(529)
    fake.script_error(529)
    job = await engine.run_until((await submit()).pk, "error")
    assert fake.call_count == 2
    assert "the provider is overloaded (529)" in job.error and "after 2 attempts" in job.error


async def test_a_rejected_key_fails_the_job_at_once_and_says_so(fake, submit, engine, settings):
    settings.ANTHROPIC_API_KEY = "sk-ant-wrong"
    job = await engine.run_until((await submit()).pk, "error")
    assert fake.call_count == 1
    assert "the API key was rejected (401)" in job.error


async def test_a_slow_answer_times_out_and_is_retried(fake, submit, engine, settings):
    settings.CORTEX_MODEL_TIMEOUT = 1.5  # far below the scripted 5 s, far above a quick answer on a loaded machine
    fake.script_delay(5)
    fake.script_text("Second try was quick.")
    job = await engine.run_until((await submit()).pk, "complete")
    assert job.response == "Second try was quick."
    retry = await sync_to_async(JobEvent.objects.get)(job=job, type="model.retry")
    assert "did not answer in time" in retry.data["error"]


async def test_an_unknown_tool_goes_back_to_the_model_as_an_error(fake, submit, engine):
    fake.script_tool_calls(Call("launch_rockets", {"count": 3}, id="toolu_x"))
    fake.script_text("I can't do that.")
    job = await engine.run_until((await submit()).pk, "complete")
    [result] = results(fake.calls[1])
    assert result["tool_use_id"] == "toolu_x" and result["is_error"] is True
    assert "no tool named 'launch_rockets'" in result["content"]
    assert (await calls_of(job))[0].status == "refused"  # not offered, so refused like any such call


async def test_arguments_that_break_the_schema_go_back_as_an_error(fake, submit, engine):
    fake.script_tool_calls(Call("calculator", {"expr": "1"}, id="toolu_s"))
    fake.script_text("Oops.")
    job = await engine.run_until((await submit()).pk, "complete")
    [result] = results(fake.calls[1])
    assert result["is_error"] is True and "invalid arguments for calculator" in result["content"]
    assert fake.calls[1]["messages"][1]["content"][0]["input"] == {"expr": "1"}
    assert job.status == "complete"


async def test_a_refusal_fails_the_job_with_a_clear_error(fake, submit, engine):
    fake.script_text("I can't help with", finish_reason="refusal")
    job = await engine.run_until((await submit()).pk, "error")
    assert job.error == (f"the model (Claude · {MODEL}) was blocked before it finished its answer "
                         "(finish reason: refusal)")
    assert job.response == "I can't help with" and fake.call_count == 1


async def test_the_last_round_declares_the_used_tools_but_forbids_calls(fake, submit, engine, settings):
    settings.CORTEX_MAX_ROUNDS = 1
    fake.script_tool_calls(Call("current_time", {}, id="toolu_t"))
    fake.script_text("Final, without tools.")
    job = await engine.run_until((await submit()).pk, "complete")
    last = fake.calls[1]
    # The API refuses tool_use blocks in a request without tools, so they stay declared but unusable.
    assert [t["name"] for t in last["tools"]] == ["current_time"] and last["tool_choice"] == {"type": "none"}
    blocks = last["messages"][2]["content"]
    assert [b["type"] for b in blocks] == ["tool_result", "text"] and "Answer now" in blocks[1]["text"]
    assert job.response == "Final, without tools."


async def test_several_gates_in_a_row_keep_the_pairs_well_formed(fake, submit, engine, owner):
    fake.script_tool_calls(Call("gated_charge", {"label": "first"}, id="toolu_g1"))
    fake.script_tool_calls(Call("gated_charge", {"label": "second"}, id="toolu_g2"))
    fake.script_text("One charged, one refused.")
    job = await engine.run_until((await submit()).pk, "awaiting_confirmation")
    await sync_to_async(services.job_confirm)(user=owner, job_id=job.pk)
    job = await engine.run_until(job.pk, "awaiting_confirmation")
    await sync_to_async(services.job_deny)(user=owner, job_id=job.pk, reason="once is enough")
    job = await engine.run_until(job.pk, "complete")
    [first, second] = results(fake.calls[2])
    assert first.get("is_error") is None and second["is_error"] is True
    assert "once is enough" in second["content"]


async def test_the_final_answer_streams_from_claude(fake, submit, engine, settings):
    settings.CORTEX_CHAT_MODEL = f"anthropic:{MODEL}"
    fake.script_text("Loop summary.")
    fake.script_text(chunks=["The answer ", "is ", "forty-two."])
    job = await engine.run_until((await submit(respond_with_final=True)).pk, "complete")
    assert job.response == "The answer is forty-two."
    deltas = await sync_to_async(lambda: [e.data["text"] for e in JobEvent.objects.filter(
        job=job, type="answer.delta").order_by("seq")])()
    assert "".join(deltas) == "The answer is forty-two."
    assert fake.calls[-1]["stream"] is True


async def test_the_provider_streams_text_to_on_delta(fake):
    provider, model = providers.resolve(f"anthropic:{MODEL}")
    fake.script_text(chunks=["Streaming ", "works ", "fine."])
    pieces, on_delta = collect()
    request = ModelRequest(model=model, system="Be brief.", messages=[{"role": "user", "content": "Hi"}])
    response = await provider.complete(request, on_delta=on_delta)
    assert pieces == ["Streaming ", "works ", "fine."]
    assert "".join(pieces) == response.text == "Streaming works fine."
    assert response.usage.output_tokens > 0
    assert (response.finish_reason, response.raw_finish_reason) == ("stop", "end_turn")


async def test_a_streamed_turn_collects_tool_input_deltas(fake):
    provider, model = providers.resolve(f"anthropic:{MODEL}")
    fake.script_tool_calls(Call("calculator", {"expression": "12*(3+4)"}, id="toolu_1"),
                           Call("current_time", {"timezone": "Europe/Paris"}, id="toolu_2"), text="Checking.")
    pieces, on_delta = collect()
    request = ModelRequest(model=model, system="", messages=[{"role": "user", "content": "Hi"}])
    response = await provider.complete(request, on_delta=on_delta)
    assert "".join(pieces) == response.text == "Checking."
    assert [(c.id, c.name, json.loads(c.arguments)) for c in response.tool_calls] == [
        ("toolu_1", "calculator", {"expression": "12*(3+4)"}),
        ("toolu_2", "current_time", {"timezone": "Europe/Paris"})]


async def test_a_stream_cut_half_way_is_a_retryable_error(fake):
    provider, model = providers.resolve(f"anthropic:{MODEL}")
    fake.script(Turn(chunks=["one ", "two ", "three ", "four"], abort_after=4))
    pieces, on_delta = collect()
    request = ModelRequest(model=model, system="", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(ProviderError) as caught:
        await provider.complete(request, on_delta=on_delta)
    assert caught.value.retryable


LONG = "word " * 100


async def deltas_after_last_reset(job: Job) -> str:
    def read() -> str:
        events = list(JobEvent.objects.filter(job=job, type__in=("answer.delta", "answer.reset")).order_by("seq"))
        last_reset = max((n for n, e in enumerate(events) if e.type == "answer.reset"), default=-1)
        return "".join(e.data["text"] for e in events[last_reset + 1:])

    return await sync_to_async(read)()


async def test_an_answer_cut_off_at_the_default_limit_names_it(fake, submit, engine):
    fake.script_text("Half of the", finish_reason="max_tokens")
    job = await engine.run_until((await submit()).pk, "error")
    assert job.error.startswith(f"the model (Claude · {MODEL}) was cut off at the output limit of 16,384 tokens")
    assert "(finish reason: max_tokens)" in job.error and job.response == "Half of the"


async def test_a_chat_answer_cut_off_at_the_role_limit_ends_the_job_in_error(fake, submit, engine, owner, settings):
    settings.CORTEX_CHAT_MODEL = f"anthropic:{MODEL}"
    await sync_to_async(services.role_assign)(by=None, owner=owner, role="chat", profile_id=None, max_output_tokens=30)
    fake.script_text("Loop summary.")
    fake.script_text(LONG)
    job = await engine.run_until((await submit(respond_with_final=True)).pk, "error")
    assert fake.calls[0]["max_tokens"] == 16384 and fake.calls[1]["max_tokens"] == 30
    assert job.error.startswith(f"the chat model (Claude · {MODEL}) was cut off at the output limit of 30 tokens")
    assert job.response == LONG[:120] == await deltas_after_last_reset(job)


async def test_a_tool_use_in_a_cut_off_turn_is_not_run(fake, submit, engine):
    fake.script_tool_calls(Call("workspace_write", {"path": "a.txt", "content": "half"}, id="toolu_w"),
                           finish_reason="max_tokens")
    job = await engine.run_until((await submit()).pk, "error")
    assert await calls_of(job) == []
    assert "its tool call was not run" in job.error and "(finish reason: max_tokens)" in job.error


async def test_a_stream_that_fails_half_way_is_retried_and_the_answer_is_whole(fake, submit, engine, settings):
    settings.CORTEX_CHAT_MODEL = f"anthropic:{MODEL}"
    fake.script_text("Loop summary.")
    fake.script_text(chunks=["The answer ", "is ", "forty-two."], error_after=5)
    fake.script_text(chunks=["The answer ", "is ", "forty-two."])
    job = await engine.run_until((await submit(respond_with_final=True)).pk, "complete")
    assert job.response == "The answer is forty-two." == await deltas_after_last_reset(job)
    retry = await sync_to_async(JobEvent.objects.get)(job=job, type="model.retry")
    assert "overloaded" in retry.data["error"]
    # The failed attempt had read its prompt (Claude says so when the stream starts): counted too.
    assert fake.call_count == 3 and job.usage["model_calls"] == 3
    bodies = [r.body for r in fake.requests if fake.is_generation_path(r.path)]
    assert job.usage["input_tokens"] == sum(estimate_tokens(len(body)) for body in bodies)


async def test_a_stream_longer_than_the_timeout_completes_while_pieces_keep_coming(fake, submit, engine, settings):
    settings.CORTEX_CHAT_MODEL = f"anthropic:{MODEL}"
    # The stream takes about 2.75 s in all, longer than the engine would wait for a whole call
    # (1 s and a grace of 1 s), with a piece every 0.25 s.
    settings.CORTEX_MODEL_TIMEOUT = 1.0
    fake.script_text("Loop summary.")
    fake.script_text(chunks=[f"piece {n} " for n in range(12)], chunk_delay=0.25)
    job = await engine.run_until((await submit(respond_with_final=True)).pk, "complete")
    assert job.response == "".join(f"piece {n} " for n in range(12))
    assert fake.call_count == 2
    assert not await sync_to_async(JobEvent.objects.filter(job=job, type="model.retry").exists)()
