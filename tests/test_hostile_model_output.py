"""Hostile model output never ends a job: through the real engine, the real `openai` SDK and real HTTP,
a fake Chat Completions server answers with what a misbehaving model or server sends (NaN, lone
surrogates, NUL, absurd nesting, wrong types, endless ids, thousands of calls). Every bad call gets
an error result the model can read and the job goes on to its next turn.

The corpus runs on SQLite here and on PostgreSQL (which refuses NUL in text and jsonb) in the
scale-out run."""

from __future__ import annotations

import asyncio
import collections
import json
from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db import connection

from orchestrator import services
from orchestrator.engine.executor import Executor
from orchestrator.models import Job, JobStatus
from tests.fakes.http import ToolCall as Call
from tests.fakes.http import Turn
from tests.fakes.openai_fake import OpenAIFake

pytestmark = pytest.mark.django_db(transaction=True)

LOOP_ONLY = services.JobOptions(respond_with_final=False)
RECOVERED = "Recovered."
FINAL_TASK = "hostile final answer"
# The chat model's streamed answer, as the SDK hands it over: a NUL and a lone surrogate in it.
FINAL_CHUNKS = ("Answered", "\u0000 with ", "\ud800 care.")
FINISHED = {JobStatus.COMPLETE, JobStatus.ERROR, JobStatus.CANCELLED}


def completion(message: str) -> str:
    """A Chat Completions body around `message`, the JSON text of the assistant's message."""
    return ('{"id":"chatcmpl-hostile","object":"chat.completion","created":1,"model":"test-model",'
            f'"choices":[{{"index":0,"message":{message},"finish_reason":"tool_calls"}}],'
            '"usage":{"prompt_tokens":10,"completion_tokens":10,"total_tokens":20}}')


def call(*, name: str = '"current_time"', arguments: str = '"{}"', id: str = '"call_1"') -> str:
    """One tool call; each argument is JSON text as the server sends it."""
    return f'{{"id":{id},"type":"function","function":{{"name":{name},"arguments":{arguments}}}}}'


def message(*calls: str, content: str = "null") -> str:
    return f'{{"role":"assistant","content":{content},"tool_calls":[{",".join(calls)}]}}'


def text_arguments(text: str) -> str:
    """Arguments sent as the JSON text of a string, as the API specifies (`text` may be any JSON)."""
    return json.dumps(text)


@dataclass(frozen=True)
class Case:
    body: str
    # "refused": every call gets an error result and none runs; "runs": the calls run;
    # "retried": the body cannot be read at all, so the turn is asked for again.
    expect: str
    mentions: str = ""  # in the error result, when refused


DEEP = 100_000
CASES: dict[str, Case] = {
    "nan in the arguments": Case(completion(message(call(arguments=text_arguments('{"timezone": NaN}')))),
                                 "refused", "NaN"),
    "infinity in the arguments": Case(completion(message(call(arguments=text_arguments('{"x": Infinity}')))),
                                      "refused", "Infinity"),
    "minus infinity in the arguments": Case(completion(message(call(arguments=text_arguments('[-Infinity]')))),
                                            "refused", "Infinity"),
    "a number beyond a float": Case(completion(message(call(arguments=text_arguments('{"x": 1e400}')))),
                                    "refused", "too large"),
    "an integer of 5000 digits": Case(completion(message(call(arguments=text_arguments('{"x": ' + "9" * 5000 + "}")))),
                                      "refused", "not valid JSON"),
    "nan in arguments sent as an object": Case(completion(message(call(arguments='{"timezone": NaN}'))),
                                               "refused", "NaN"),
    "100,000-deep arguments": Case(completion(message(call(arguments=text_arguments("[" * DEEP + "]" * DEEP)))),
                                   "refused", "nesting deeper than 64 levels"),
    "100-deep arguments": Case(completion(message(call(arguments=text_arguments('{"a":' * 100 + "1" + "}" * 100)))),
                               "refused", "nesting deeper than 64 levels"),
    "100,000-deep arguments sent as an object": Case(completion(message(call(arguments="[" * DEEP + "]" * DEEP))),
                                                     "retried"),
    "an escaped lone surrogate in the arguments": Case(
        completion(message(call(arguments=text_arguments('{"timezone": "\\ud800"}')))), "refused", "surrogate"),
    "a raw lone surrogate in the arguments": Case(
        completion(message(call(arguments='"{\\"timezone\\": \\"\\udfff\\"}"'))), "refused", "surrogate"),
    "an escaped NUL in the arguments": Case(
        completion(message(call(arguments=text_arguments('{"timezone": "UTC\\u0000"}')))), "refused", "NUL"),
    "a raw NUL in the arguments": Case(
        completion(message(call(arguments='"{\\"timezone\\": \\"UTC\\u0000\\"}"'))), "refused", "not valid JSON"),
    "a NUL in an argument's name": Case(
        completion(message(call(arguments=text_arguments('{"time\\u0000zone": "UTC"}')))), "refused", "NUL"),
    "a NUL in the arguments sent as an object": Case(
        completion(message(call(arguments='{"timezone": "UTC\\u0000"}'))), "refused", "NUL"),
    "a lone surrogate in the name": Case(completion(message(call(name='"current_time\\ud800"'))),
                                         "refused", "no tool named"),
    "a NUL in the name": Case(completion(message(call(name='"current\\u0000time"'))), "refused", "no tool named"),
    "a number for a name": Case(completion(message(call(name="42"))), "refused", "no tool named '42'"),
    "null for a name": Case(completion(message(call(name="null"))), "refused", "no tool named ''"),
    "an object for a name": Case(completion(message(call(name='{"name": "current_time"}'))),
                                 "refused", "no tool named"),
    "a list for a name": Case(completion(message(call(name='["current_time"]'))), "refused", "no tool named"),
    "an empty name": Case(completion(message(call(name='""'))), "refused", "no tool named ''"),
    "a name of 10,000 characters": Case(completion(message(call(name=json.dumps("x" * 10_000)))),
                                        "refused", "no tool named"),
    "a list for the arguments": Case(completion(message(call(arguments="[1, 2]"))), "refused", "JSON object"),
    "a number for the arguments": Case(completion(message(call(arguments="42"))), "refused", "JSON object"),
    "arguments that are a JSON list": Case(completion(message(call(arguments=text_arguments("[1]")))),
                                           "refused", "JSON object"),
    "arguments of 3.5 million characters": Case(
        completion(message(call(arguments=text_arguments(json.dumps({"timezone": "x" * 3_500_000}))))),
        "refused", "the limit is"),
    "arguments sent as an object": Case(completion(message(call(arguments='{"timezone": "UTC"}'))), "runs"),
    "a call id of 300 characters": Case(completion(message(call(id=json.dumps("c" * 300)))), "runs"),
    "a number for a call id": Case(completion(message(call(id="7"))), "runs"),
    "a NUL in the call id": Case(completion(message(call(id='"call\\u0000one"'))), "runs"),
    "a repeated call id": Case(completion(message(call(), call())), "runs"),
    "content as a list of parts": Case(
        completion(message(call(), content='[{"type": "text", "text": "Checking the time."}]')), "runs"),
    "NUL and a lone surrogate in the content": Case(
        completion(message(call(), content='"Checking\\u0000 the \\ud800 time."')), "runs"),
    "content nested 900 deep": Case(completion(message(call(), content="[" * 900 + "]" * 900)), "runs"),
    "an object for the content": Case(completion(message(call(), content='{"text": "hm"}')), "runs"),
    "usage that is not numbers": Case(
        completion(message(call())).replace('"prompt_tokens":10', '"prompt_tokens":"lots"'), "runs"),
    "a function that is a string": Case(
        completion('{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":"x"}]}'),
        "retried"),
    "a body that is a list": Case("[1, 2, 3]", "retried"),
}


class HostileFake(OpenAIFake):
    """Answers each job's first request with its case's body, and every later one with text."""

    def __init__(self, bodies: dict[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bodies = bodies
        self.asked: collections.Counter[str] = collections.Counter()

    def default_turn(self, body: dict[str, Any]) -> Turn:
        if body.get("stream"):  # the chat model writing the final answer
            return Turn(chunks=FINAL_CHUNKS)
        task = task_of(body)
        self.asked[task] += 1
        if self.asked[task] == 1 and task in self.bodies:
            return Turn(raw=self.bodies[task])
        return Turn(text=RECOVERED)


def task_of(body: dict[str, Any]) -> str:
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


def requests_for(fake: OpenAIFake, task: str) -> list[dict[str, Any]]:
    return [body for body in fake.calls if isinstance(body, dict) and task_of(body) == task]


@pytest.fixture
def fake_model(settings):
    def start(bodies: dict[str, str]) -> HostileFake:
        server = HostileFake(bodies).start()
        started.append(server)
        settings.CORTEX_ORCHESTRATOR_MODEL = settings.CORTEX_CHAT_MODEL = "openai:test-model"
        settings.OPENAI_BASE_URL = server.base_url
        settings.OPENAI_API_KEY = "sk-test"
        return server

    started: list[HostileFake] = []
    yield start
    for server in started:
        server.stop()
        assert server.errors == []


async def run_all(job_ids: list[str], timeout: float = 60.0) -> None:
    """One real executor drives every job until each has finished."""
    from asgiref.sync import sync_to_async

    executor = Executor(concurrency=100)
    runner = asyncio.create_task(executor.run())
    try:
        async with asyncio.timeout(timeout):
            while await sync_to_async(Job.objects.filter(pk__in=job_ids).exclude(status__in=FINISHED).exists)():
                await asyncio.sleep(0.05)
    finally:
        await executor.stop()
        await runner


def submit(owner, task: str, options: services.JobOptions = LOOP_ONLY) -> str:
    return str(services.job_submit(user=owner, task=task, options=options).pk)


def hostile_corpus(owner, fake_model) -> None:
    tasks = {f"hostile case: {name}": case for name, case in CASES.items()}
    fake = fake_model({task: case.body for task, case in tasks.items()})
    jobs = {task: submit(owner, task) for task in tasks}
    final = submit(owner, FINAL_TASK, services.JobOptions(respond_with_final=True))
    async_to_sync(run_all)([*jobs.values(), final])

    job = Job.objects.get(pk=final)
    assert (job.status, job.response) == (JobStatus.COMPLETE, "Answered\ufffd with \ufffd care.")
    streamed = "".join(e.data["text"] for e in job.events.filter(type="answer.delta").order_by("seq"))
    assert streamed == job.response

    for task, case in tasks.items():
        job = Job.objects.get(pk=jobs[task])
        assert "internal error" not in (job.error or ""), task
        assert (job.status, job.response, job.error) == (JobStatus.COMPLETE, RECOVERED, None), task
        if case.expect == "retried":
            assert job.events.filter(type="model.retry").exists(), task
            assert not job.tool_calls.exists(), task
            continue
        calls = list(job.tool_calls.order_by("position"))
        assert calls, task
        # The model's next request answers each of its calls with exactly one readable result.
        follow_up = requests_for(fake, task)[1]["messages"]
        asked = next(m for m in follow_up if m["role"] == "assistant" and m.get("tool_calls"))
        results = [m for m in follow_up if m["role"] == "tool"]
        assert [m["tool_call_id"] for m in results] == [c["id"] for c in asked["tool_calls"]], task
        assert [m["tool_call_id"] for m in results] == [c.call_id for c in calls], task
        assert all(isinstance(m["content"], str) and m["content"] for m in results), task
        assert all(len(c.call_id) <= 64 for c in calls), task
        if case.expect == "refused":
            assert all(c.is_error and c.status in ("failed", "refused") for c in calls), task
            assert all(m["content"].startswith("Error: ") and case.mentions in m["content"] for m in results), \
                (task, [m["content"][:300] for m in results])
            assert not job.events.filter(type="tool.started").exists(), task
        else:
            assert all(c.status == "succeeded" and not c.is_error for c in calls), task


def test_hostile_model_output_never_ends_a_job(owner, default_persona, fake_model):
    assert len(CASES) >= 30
    hostile_corpus(owner, fake_model)


@pytest.mark.scaleout
def test_hostile_model_output_never_ends_a_job_on_postgres(owner, default_persona, fake_model):
    assert connection.vendor == "postgresql"
    hostile_corpus(owner, fake_model)


def test_a_turn_of_3000_calls_runs_at_most_the_cap_and_answers_every_call(owner, default_persona, settings):
    assert settings.CORTEX_MAX_CALLS_PER_TURN == 16
    with OpenAIFake() as fake:
        settings.CORTEX_ORCHESTRATOR_MODEL = "openai:test-model"
        settings.OPENAI_BASE_URL = fake.base_url
        settings.OPENAI_API_KEY = "sk-test"
        fake.script_tool_calls(*[Call("current_time", {}, id=f"c{n}") for n in range(3000)])
        fake.script_text("Done.")
        job_id = submit(owner, "Ask for the time three thousand times")
        async_to_sync(run_all)([job_id])
        follow_up = fake.calls[1]["messages"]
    assert fake.errors == []

    job = Job.objects.get(pk=job_id)
    assert (job.status, job.response) == (JobStatus.COMPLETE, "Done.")
    assert job.events.filter(type="tool.started").count() == 16
    calls = list(job.tool_calls.order_by("position"))
    assert [c.status for c in calls] == ["succeeded"] * 16 + ["failed"] * 2984
    assert "at most 16 run per turn" in calls[-1].result
    results = [m["tool_call_id"] for m in job.transcript if m["role"] == "tool"]
    assert sorted(results) == sorted(f"c{n}" for n in range(3000))
    assert [m["tool_call_id"] for m in follow_up if m["role"] == "tool"] == [f"c{n}" for n in range(3000)]


def test_an_unexpected_failure_tells_the_user_nothing_of_the_database(owner, default_persona, monkeypatch, caplog):
    """The last resort: whatever escapes the engine is logged in full, and the job's error is generic."""
    from django.db import DataError

    from orchestrator.engine import executor

    async def broken(job_id: str, **kwargs: object) -> None:
        raise DataError('unsupported Unicode escape sequence\nCONTEXT: INSERT INTO "orchestrator_jobevent" ...')

    monkeypatch.setattr(executor, "drive", broken)
    job_id = submit(owner, "Anything at all")
    async_to_sync(run_all)([job_id])

    job = Job.objects.get(pk=job_id)
    assert (job.status, job.error) == (JobStatus.ERROR, executor.INTERNAL_ERROR)
    assert "INSERT" not in json.dumps(list(job.events.values_list("data", flat=True)))
    assert 'INSERT INTO "orchestrator_jobevent"' in caplog.text
