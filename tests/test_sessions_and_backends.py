"""A job whose tool loop runs on one backend and whose answer comes from another, configured
through model profiles; and session history trimmed to its budget."""

import pytest
from asgiref.sync import async_to_sync

from orchestrator import services
from orchestrator.models import Message, Session
from tests.fakes.anthropic_fake import AnthropicFake
from tests.fakes.gemini_fake import GeminiFake
from tests.fakes.http import ToolCall as Call

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fakes_on_loopback_are_reachable(settings):
    """The fake providers listen on 127.0.0.1, which people's own profiles may reach only when the
    site allows private addresses (see test_endpoint_safety.py for when it does not)."""
    settings.CORTEX_HTTP_ALLOW_PRIVATE = True


def test_gemini_runs_the_tools_and_claude_writes_the_answer(owner, api, engine, default_persona):
    with GeminiFake(expect_key="g-key") as gemini, AnthropicFake(expect_key="a-key") as claude:
        loop = services.profile_save(by=owner, owner=owner, name="loop", provider="gemini", model="gemini-3-pro",
                                     base_url=gemini.root_url, api_key="g-key")
        writer = services.profile_save(by=owner, owner=owner, name="writer", provider="anthropic",
                                       model="claude-sonnet-4-6", base_url=claude.root_url, api_key="a-key")
        services.role_assign(by=owner, owner=owner, role="orchestrator", profile_id=loop.pk)
        services.role_assign(by=owner, owner=owner, role="chat", profile_id=writer.pk, system_append="Be warm.")
        gemini.script_tool_calls(Call("calculator", {"expression": "6*7"}), Call("current_time", {}))
        gemini.script_text("It is 42, computed just now.")
        claude.script_text("Six times seven is 42.")

        job_id = api.post("/orchestrate", {"task": "What is 6*7, and when did you work it out?"}).json()["job_id"]
        async_to_sync(engine.run_until)(job_id, "complete", "error")
        body = api.get(f"/orchestrate/{job_id}").json()

        assert body["status"] == "complete", body["error"]
        assert body["response"] == "Six times seven is 42."
        assert body["gemini_summary"] == "It is 42, computed just now."
        assert body["backend"] == "anthropic:claude-sonnet-4-6" and body["backend_label"] == "Claude · claude-sonnet-4-6"
        assert [call["name"] for call in body["tool_calls"]] == ["calculator", "current_time"]
        assert body["host"]
        [brief] = claude.calls[0]["messages"]
        assert "calculator" in str(brief["content"]) and "Be warm." in str(claude.calls[0]["system"])
        assert len(gemini.calls) == 2
        answer = Message.objects.get(job_id=job_id, role="assistant")
        assert (answer.backend, answer.backend_label) == ("anthropic:claude-sonnet-4-6", "Claude · claude-sonnet-4-6")


def test_history_is_trimmed_to_its_budget_dropping_the_oldest_turns(owner, settings, default_persona):
    session = Session.objects.create(user=owner)
    for n in range(10):
        Message.objects.create(session=session, role="user", content=f"question {n} " + "x" * 80)
        Message.objects.create(session=session, role="assistant", content=f"answer {n} " + "y" * 80)
    settings.CORTEX_HISTORY_CHARS = 500
    job = services.job_submit(user=owner, task="And now?", session_id=str(session.pk))
    contents = [m["content"].split(" ")[0] + " " + m["content"].split(" ")[1] for m in job.transcript[:-1]]
    assert contents[-1] == "answer 9" and "question 0" not in contents
    assert job.transcript[0]["role"] == "user"
    assert sum(len(m["content"]) for m in job.transcript[:-1]) <= 500
    assert job.transcript[-1] == {"role": "user", "content": "And now?"}
