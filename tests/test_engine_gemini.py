"""The tool loop through the real `google-genai` SDK over real HTTP, against a fake Gemini API that
checks thought signatures the way Gemini 3 does."""

import base64
import json
import time

import pytest
from asgiref.sync import sync_to_async

from orchestrator import providers, services
from orchestrator.models import Job, JobEvent
from orchestrator.providers.base import ModelRequest, ProviderError
from orchestrator.providers.gemini import CALL_ID, SIGNATURE
from tests.fakes.gemini_fake import GeminiFake, quota_exceeded
from tests.fakes.http import ToolCall as Call
from tests.fakes.http import Turn

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "gemini-3-pro"


@pytest.fixture
def fake(settings):
    with GeminiFake(expect_key="gemini-key") as server:
        settings.CORTEX_ORCHESTRATOR_MODEL = f"gemini:{MODEL}"
        settings.CORTEX_GEMINI_BASE_URL = server.base_url
        settings.GEMINI_API_KEY = "gemini-key"
        yield server
    assert server.errors == []


@pytest.fixture
def submit(owner, default_persona):
    async def make(task: str = "Do the thing", *, respond_with_final: bool = False) -> Job:
        options = services.JobOptions(respond_with_final=respond_with_final)
        return await sync_to_async(services.job_submit)(user=owner, task=task, options=options)

    return make


def responses(body: dict) -> list[dict]:
    """Every function response in a request, in order."""
    return [part["functionResponse"] for content in body["contents"] for part in content["parts"]
            if "functionResponse" in part]


def call_parts(content: dict) -> list[dict]:
    return [part for part in content["parts"] if "functionCall" in part]


def issued(fake: GeminiFake) -> set[str]:
    """The signatures the fake handed out, as the base64 text the transcript stores."""
    return {base64.b64encode(raw).decode("ascii") for raw in fake.signatures}


async def calls_of(job: Job) -> list:
    return await sync_to_async(lambda: list(job.tool_calls.order_by("round", "position")))()


async def reload(job: Job) -> Job:
    return await sync_to_async(Job.objects.get)(pk=job.pk)


async def test_two_calls_in_one_turn_then_another_round_with_signatures_replayed(fake, submit, engine):
    # Gemini often gives calls no id; the engine invents them, and the replay must not send them.
    fake.script_tool_calls(Call("current_time", {"timezone": "UTC"}), Call("calculator", {"expression": "6*7"}),
                           text="Let me look.")
    fake.script_tool_calls(Call("calculator", {"expression": "42+1"}, id="gem-3"))
    fake.script_text("It is late and the answer is 43.")
    job = await engine.run_until((await submit()).pk, "complete")

    assert job.response == "It is late and the answer is 43."
    assert job.backend == f"gemini:{MODEL}" and job.backend_label == f"Gemini · {MODEL}"
    calls = await calls_of(job)
    assert [c.status for c in calls] == ["succeeded", "succeeded", "succeeded"]
    assert calls[0].call_id.startswith("call_1_0_") and calls[2].call_id == "gem-3"

    first, second, third = fake.calls
    declarations = {d["name"]: d for d in first["tools"][0]["functionDeclarations"]}
    assert {"current_time", "calculator", "http_get"} <= set(declarations)
    # The SDK passes declarations through with its field names; Gemini reads either spelling.
    calculator = declarations["calculator"]
    schema = calculator.get("parametersJsonSchema") or calculator["parameters_json_schema"]
    assert schema["required"] == ["expression"] and schema["additionalProperties"] is False
    assert first["systemInstruction"]["parts"][0]["text"]

    model_turn = second["contents"][1]
    assert model_turn["role"] == "model" and model_turn["parts"][0] == {"text": "Let me look."}
    replayed = call_parts(model_turn)
    assert [p["functionCall"]["name"] for p in replayed] == ["current_time", "calculator"]
    assert all("id" not in p["functionCall"] for p in replayed)
    answers = second["contents"][2]
    assert answers["role"] == "user" and [r["name"] for r in responses(second)] == ["current_time", "calculator"]
    assert responses(second)[1]["response"] == {"result": {"expression": "6*7", "result": 42}}

    # Round two replays round one's signatures too, and Gemini's own id on both sides of the pair.
    assert [p["functionCall"].get("id") for p in call_parts(third["contents"][3])] == ["gem-3"]
    assert responses(third)[2]["id"] == "gem-3"
    assert job.usage["model_calls"] == 3 and job.usage["input_tokens"] > 0

    stored = [call for message in job.transcript for call in message.get("tool_calls") or ()]
    # Gemini 3 signs the first of parallel calls only; the second goes back unsigned, as it came.
    assert [SIGNATURE in call.get("extra", {}) for call in stored] == [True, False, True]
    assert {call["extra"][SIGNATURE] for call in stored if SIGNATURE in call.get("extra", {})} == issued(fake)
    assert CALL_ID not in stored[0]["extra"]
    assert stored[2]["extra"][CALL_ID] == "gem-3"


async def test_signatures_survive_a_pause_for_confirmation_and_a_new_executor(fake, submit, engine, owner):
    fake.script_tool_calls(Call("current_time", {}), Call("gated_charge", {"label": "rent"}))
    fake.script_text("Charged the rent.")
    job = await engine.run_until((await submit()).pk, "awaiting_confirmation")
    stored = (await reload(job)).transcript[-1]["tool_calls"]
    assert [call.get("extra", {}).get(SIGNATURE) for call in stored][1] is None
    assert {stored[0]["extra"][SIGNATURE]} == issued(fake)

    # As after a restart: no provider or SDK client of the first run survives, only the database.
    providers._gemini.cache_clear()
    await sync_to_async(services.job_confirm)(user=owner, job_id=job.pk)
    job = await engine.run_until(job.pk, "complete")

    assert job.response == "Charged the rent."
    assert [c.status for c in await calls_of(job)] == ["succeeded", "succeeded"]
    replayed = call_parts(fake.calls[1]["contents"][1])
    assert "thoughtSignature" not in replayed[1]
    sent = {part["thoughtSignature"] for part in replayed[:1]}
    # The SDK sends the URL-safe alphabet; the bytes are what must not change.
    assert {base64.urlsafe_b64decode(s) for s in sent} == set(fake.signatures)


async def test_a_tampered_signature_fails_the_job_with_a_clear_error(fake, submit, engine, owner):
    fake.script_tool_calls(Call("gated_charge", {"label": "rent"}))
    job = await engine.run_until((await submit()).pk, "awaiting_confirmation")
    transcript = (await reload(job)).transcript
    extra = transcript[-1]["tool_calls"][0]["extra"]
    raw = bytearray(base64.b64decode(extra[SIGNATURE]))
    raw[-1] ^= 0x01
    extra[SIGNATURE] = base64.b64encode(bytes(raw)).decode("ascii")
    await sync_to_async(Job.objects.filter(pk=job.pk).update)(transcript=transcript)

    await sync_to_async(services.job_confirm)(user=owner, job_id=job.pk)
    job = await engine.run_until(job.pk, "error")
    assert "thought signature" in job.error and "not valid" in job.error
    assert fake.call_count == 2


async def test_a_signature_that_is_not_base64_any_more_fails_clearly(fake, submit, engine, owner):
    fake.script_tool_calls(Call("gated_charge", {"label": "rent"}))
    job = await engine.run_until((await submit()).pk, "awaiting_confirmation")
    transcript = (await reload(job)).transcript
    transcript[-1]["tool_calls"][0]["extra"][SIGNATURE] = "not base64!"
    await sync_to_async(Job.objects.filter(pk=job.pk).update)(transcript=transcript)

    await sync_to_async(services.job_confirm)(user=owner, job_id=job.pk)
    job = await engine.run_until(job.pk, "error")
    assert "thought signature" in job.error and "damaged" in job.error
    assert fake.call_count == 1


async def test_a_rate_limit_is_retried_after_the_delay_gemini_asks_for(fake, submit, engine):
    fake.script_error(429, retry_after=0.3)
    fake.script_text("Made it.")
    started = time.monotonic()
    job = await engine.run_until((await submit()).pk, "complete")
    assert time.monotonic() - started >= 0.3
    assert job.response == "Made it." and fake.call_count == 2
    retry = await sync_to_async(JobEvent.objects.get)(job=job, type="model.retry")
    assert retry.data["wait_seconds"] == 0.3 and "rate limited (429)" in retry.data["error"]


async def test_an_unavailable_model_is_retried(fake, submit, engine):
    fake.script_error(503)
    fake.script_text("Back again.")
    job = await engine.run_until((await submit()).pk, "complete")
    assert job.response == "Back again." and fake.call_count == 2


async def test_a_rejected_key_fails_the_job_at_once_and_says_so(fake, submit, engine, settings):
    settings.GEMINI_API_KEY = "not-the-key"
    job = await engine.run_until((await submit()).pk, "error")
    assert fake.call_count == 1
    assert "the API key was rejected (400)" in job.error and "API key not valid" in job.error


async def test_a_slow_answer_times_out_and_is_retried(fake, submit, engine, settings):
    settings.CORTEX_MODEL_TIMEOUT = 1.5  # far below the scripted 5 s, far above a quick answer on a loaded machine
    fake.script_delay(5)
    fake.script_text("Second try was quick.")
    job = await engine.run_until((await submit()).pk, "complete")
    assert job.response == "Second try was quick."
    retry = await sync_to_async(JobEvent.objects.get)(job=job, type="model.retry")
    assert "Gemini did not answer in time" in retry.data["error"]


async def test_an_unknown_tool_goes_back_to_the_model_as_an_error(fake, submit, engine):
    fake.script_tool_calls(Call("launch_rockets", {"count": 3}))
    fake.script_text("I can't do that.")
    job = await engine.run_until((await submit()).pk, "complete")
    [response] = responses(fake.calls[1])
    assert response["name"] == "launch_rockets"
    assert "no tool named 'launch_rockets'" in response["response"]["error"]
    assert (await calls_of(job))[0].status == "refused"  # not offered, so refused like any such call


async def test_arguments_that_break_the_schema_go_back_as_an_error(fake, submit, engine):
    fake.script_tool_calls(Call("calculator", {"expr": "1"}))
    fake.script_text("Oops.")
    job = await engine.run_until((await submit()).pk, "complete")
    [response] = responses(fake.calls[1])
    assert "invalid arguments for calculator" in response["response"]["error"]
    # The call goes back as Gemini wrote it, so its signature still matches.
    assert call_parts(fake.calls[1]["contents"][1])[0]["functionCall"]["args"] == {"expr": "1"}
    assert job.status == "complete"


async def test_a_safety_block_fails_the_job_and_says_why(fake, submit, engine):
    fake.script_text("", finish_reason="SAFETY")
    job = await engine.run_until((await submit()).pk, "error")
    assert job.error == f"the model (Gemini · {MODEL}) was blocked before it finished its answer (finish reason: SAFETY)"
    assert job.response is None and fake.call_count == 1


async def test_a_blocked_prompt_fails_the_job_and_says_why(fake, submit, engine):
    fake.script_error(200, body={"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                                 "usageMetadata": {"promptTokenCount": 5, "totalTokenCount": 5}})
    job = await engine.run_until((await submit()).pk, "error")
    assert job.error == "model call failed: Gemini blocked the request: PROHIBITED_CONTENT"


async def test_the_last_round_forbids_calls_and_asks_in_the_same_user_turn(fake, submit, engine, settings):
    settings.CORTEX_MAX_ROUNDS = 1
    fake.script_tool_calls(Call("current_time", {}))
    # The model would call again; with calling forbidden it answers instead.
    fake.script_tool_calls(Call("current_time", {}), text="Final, without tools.")
    job = await engine.run_until((await submit()).pk, "complete")
    last = fake.calls[1]
    assert [d["name"] for d in last["tools"][0]["functionDeclarations"]] == ["current_time"]
    assert last["toolConfig"] == {"functionCallingConfig": {"mode": "NONE"}}
    assert [c["role"] for c in last["contents"]] == ["user", "model", "user"]
    results, ask = last["contents"][2]["parts"]
    assert "functionResponse" in results and "Answer now" in ask["text"]
    assert job.response == "Final, without tools." and job.rounds == 1


async def test_the_final_answer_streams_from_gemini(fake, submit, engine, settings):
    settings.CORTEX_CHAT_MODEL = f"gemini:{MODEL}"
    fake.script_text("Loop summary.")
    fake.script_text(chunks=["The answer ", "is ", "forty-two."])
    job = await engine.run_until((await submit(respond_with_final=True)).pk, "complete")
    assert job.response == "The answer is forty-two."
    deltas = await sync_to_async(lambda: [e.data["text"] for e in JobEvent.objects.filter(
        job=job, type="answer.delta").order_by("seq")])()
    assert "".join(deltas) == "The answer is forty-two."
    assert fake.requests[-1].query.get("alt") == "sse"


async def test_the_provider_streams_text_to_on_delta(fake):
    provider, model = providers.resolve(f"gemini:{MODEL}")
    fake.script_text(chunks=["Streaming ", "works ", "fine."])
    pieces: list[str] = []

    async def on_delta(text: str) -> None:
        pieces.append(text)

    request = ModelRequest(model=model, system="Be brief.", messages=[{"role": "user", "content": "Hi"}])
    response = await provider.complete(request, on_delta=on_delta)
    assert pieces == ["Streaming ", "works ", "fine."]
    assert "".join(pieces) == response.text == "Streaming works fine."
    assert response.usage.output_tokens > 0
    assert (response.finish_reason, response.raw_finish_reason) == ("stop", "STOP")


async def test_a_streamed_turn_with_calls_keeps_their_signatures(fake):
    provider, model = providers.resolve(f"gemini:{MODEL}")
    fake.script_tool_calls(Call("current_time", {}), Call("calculator", {"expression": "1+1"}), text="Checking.")
    pieces: list[str] = []

    async def on_delta(text: str) -> None:
        pieces.append(text)

    tools = [{"name": name, "description": name, "parameters": {"type": "object"}}
             for name in ("current_time", "calculator")]
    request = ModelRequest(model=model, system="", messages=[{"role": "user", "content": "Hi"}], tools=tools)
    response = await provider.complete(request, on_delta=on_delta)
    assert "".join(pieces) == response.text == "Checking."
    assert [json.loads(c.arguments) for c in response.tool_calls] == [{}, {"expression": "1+1"}]
    assert [SIGNATURE in c.extra for c in response.tool_calls] == [True, False]
    assert {response.tool_calls[0].extra[SIGNATURE]} == issued(fake)


async def test_a_stream_cut_half_way_is_a_retryable_error(fake):
    provider, model = providers.resolve(f"gemini:{MODEL}")
    fake.script(Turn(chunks=["one ", "two ", "three ", "four"], abort_after=2))

    async def on_delta(text: str) -> None:
        pass

    request = ModelRequest(model=model, system="", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(ProviderError) as caught:
        await provider.complete(request, on_delta=on_delta)
    assert caught.value.retryable and "connection to Gemini failed" in caught.value.message


LONG = "word " * 100


async def test_an_answer_cut_off_at_the_role_limit_ends_the_job_in_error(fake, submit, engine, owner):
    await sync_to_async(services.role_assign)(by=None, owner=owner, role="orchestrator", profile_id=None,
                                              max_output_tokens=20)
    fake.script_text(LONG)
    job = await engine.run_until((await submit()).pk, "error")
    assert fake.calls[0]["generationConfig"]["maxOutputTokens"] == 20
    assert job.error.startswith(f"the model (Gemini · {MODEL}) was cut off at the output limit of 20 tokens")
    assert "(finish reason: MAX_TOKENS)" in job.error and job.response == LONG[:80]


async def test_a_chat_answer_cut_off_or_recited_keeps_its_part(fake, submit, engine, settings):
    settings.CORTEX_CHAT_MODEL = f"gemini:{MODEL}"
    fake.script_text("Loop summary.")
    fake.script_text(chunks=["As the song ", "goes"], finish_reason="RECITATION")
    job = await engine.run_until((await submit(respond_with_final=True)).pk, "error")
    assert job.error == (f"the chat model (Gemini · {MODEL}) was blocked before it finished its answer "
                         "(finish reason: RECITATION)")
    assert job.response == "As the song goes"


async def test_a_call_in_a_cut_off_turn_is_not_run(fake, submit, engine):
    fake.script_tool_calls(Call("workspace_write", {"path": "a.txt", "content": "half"}), finish_reason="MAX_TOKENS")
    job = await engine.run_until((await submit()).pk, "error")
    assert await calls_of(job) == []
    assert "its tool call was not run" in job.error and "(finish reason: MAX_TOKENS)" in job.error


async def test_a_daily_quota_fails_at_once_and_says_so(fake, submit, engine):
    fake.script(Turn(error=quota_exceeded(per_day=True)))
    job = await engine.run_until((await submit()).pk, "error")
    assert fake.call_count == 1
    assert job.error.startswith("model call failed: the quota is used up (429)") and "daily" in job.error


async def test_a_per_minute_quota_is_waited_out(fake, submit, engine, settings):
    settings.CORTEX_RETRY_MAX_SECONDS = 0.05  # Gemini asks for 27 s; the test caps the wait
    fake.script(Turn(error=quota_exceeded(per_day=False)))
    fake.script_text("Made it.")
    job = await engine.run_until((await submit()).pk, "complete")
    assert job.response == "Made it." and fake.call_count == 2


async def test_a_stream_that_fails_half_way_is_retried_and_the_answer_is_whole(fake, submit, engine, settings):
    settings.CORTEX_CHAT_MODEL = f"gemini:{MODEL}"
    fake.script_text("Loop summary.")
    fake.script_text(chunks=["The answer ", "is ", "forty-two."], error_after=2)
    fake.script_text(chunks=["The answer ", "is ", "forty-two."])
    job = await engine.run_until((await submit(respond_with_final=True)).pk, "complete")
    assert job.response == "The answer is forty-two."
    retry = await sync_to_async(JobEvent.objects.get)(job=job, type="model.retry")
    assert "503" in retry.data["error"]
    assert fake.call_count == 3 and job.usage["model_calls"] == 3


async def test_a_stream_longer_than_the_timeout_completes_while_pieces_keep_coming(fake, submit, engine, settings):
    settings.CORTEX_CHAT_MODEL = f"gemini:{MODEL}"
    # The stream takes about 2.75 s in all, longer than the engine would wait for a whole call
    # (1 s and a grace of 1 s), with a piece every 0.25 s.
    settings.CORTEX_MODEL_TIMEOUT = 1.0
    fake.script_text("Loop summary.")
    fake.script_text(chunks=[f"piece {n} " for n in range(12)], chunk_delay=0.25)
    job = await engine.run_until((await submit(respond_with_final=True)).pk, "complete")
    assert job.response == "".join(f"piece {n} " for n in range(12))
    assert fake.call_count == 2
    assert not await sync_to_async(JobEvent.objects.filter(job=job, type="model.retry").exists)()
