"""Models by role: profiles with encrypted keys, per-user and site-wide assignments, the chat-role
answer streamed as it is written, and off-the-record jobs."""

import json

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.management import call_command
from django.db import connection

from cortex_site.asgi import application
from orchestrator import roles, services
from orchestrator.models import Memory, Message, ModelProfile
from tests.fakes.http import ToolCall as Call
from tests.fakes.openai_fake import OpenAIFake

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fakes_on_loopback_are_reachable(settings):
    """The fake providers listen on 127.0.0.1, which people's own profiles may reach only when the
    site allows private addresses (see test_endpoint_safety.py for when it does not)."""
    settings.CORTEX_HTTP_ALLOW_PRIVATE = True


@pytest.fixture
def fake():
    with OpenAIFake(expect_key="sk-profile-key") as server:
        yield server


@pytest.fixture
def profile(owner, fake):
    return services.profile_save(by=owner, owner=owner, name="local", provider="openai", model="llama3.1",
                                 base_url=fake.base_url, api_key="sk-profile-key", max_rounds=3)


def test_a_profile_key_is_not_readable_in_the_database(profile):
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM orchestrator_modelprofile")
        rows = json.dumps(cursor.fetchall(), default=str)
    assert "sk-profile-key" not in rows and "fernet1:" in rows
    credentials = roles.credentials(profile.pk)
    assert (credentials.base_url, credentials.api_key) == (profile.base_url, "sk-profile-key")


def test_saving_a_profile_without_a_key_keeps_the_stored_one(owner, profile):
    services.profile_save(by=owner, owner=owner, name="local", provider="openai", model="llama3.2",
                          profile_id=profile.pk)
    assert roles.credentials(profile.pk).api_key == "sk-profile-key"


@pytest.mark.parametrize("field,value", [("provider", "skynet"), ("model", ""), ("base_url", "ftp://x"),
                                         ("temperature", 5), ("max_rounds", 0)])
def test_invalid_profiles_are_refused(owner, field, value):
    fields = {"name": "p", "provider": "openai", "model": "m", "base_url": "", **{field: value}}
    with pytest.raises(services.Invalid):
        services.profile_save(by=owner, owner=owner, **fields)


def test_a_users_assignment_wins_over_the_site_wide_one_which_wins_over_the_environment(owner, outsider, profile,
                                                                                         settings):
    settings.CORTEX_ORCHESTRATOR_MODEL = "demo:env-default"
    assert roles.role_config(owner, "orchestrator").model == "demo:env-default"
    site = services.profile_save(by=None, owner=None, name="site", provider="openai", model="site-model")
    services.role_assign(by=None, owner=None, role="orchestrator", profile_id=site.pk, system_append="Site rules.")
    assert roles.role_config(outsider, "orchestrator").model == "openai:site-model"
    services.role_assign(by=owner, owner=owner, role="orchestrator", profile_id=profile.pk)
    mine = roles.role_config(owner, "orchestrator")
    assert (mine.model, mine.label_source, mine.max_rounds) == ("openai:llama3.1", "yours", 3)
    assert roles.role_config(outsider, "orchestrator").system_append == "Site rules."


def test_roles_read_together_each_take_the_users_own_assignment_else_the_site_wide_one(owner, outsider, profile,
                                                                                      settings):
    settings.CORTEX_CHAT_MODEL = "demo:env-chat"
    site = services.profile_save(by=None, owner=None, name="site", provider="openai", model="site-model")
    services.role_assign(by=None, owner=None, role="orchestrator", profile_id=site.pk)
    services.role_assign(by=None, owner=None, role="poet", profile_id=site.pk, system_append="Site verse.")
    services.role_assign(by=owner, owner=owner, role="poet", profile_id=profile.pk, system_append="My verse.")
    orchestrator, poet, chat = roles.role_configs(owner, "orchestrator", "poet", "chat")
    assert (orchestrator.model, orchestrator.label_source) == ("openai:site-model", "site-wide")
    assert (poet.model, poet.label_source, poet.system_append) == ("openai:llama3.1", "yours", "My verse.")
    assert (chat.model, chat.label_source) == ("demo:env-chat", "environment")
    theirs = roles.role_configs(outsider, "poet", "orchestrator")
    assert [(config.role, config.system_append) for config in theirs] == [("poet", "Site verse."), ("orchestrator", "")]


def test_a_user_cannot_assign_someone_elses_profile(outsider, profile):
    with pytest.raises(services.NotFound):
        services.role_assign(by=outsider, owner=outsider, role="chat", profile_id=profile.pk)


def test_role_settings_shape_the_stored_prompts(owner, profile, default_persona):
    services.role_assign(by=owner, owner=owner, role="orchestrator", profile_id=profile.pk, system_append="Use tools.",
                         inject_datetime=False, inject_mode=True)
    services.role_assign(by=owner, owner=owner, role="poet", profile_id=None, system_append="Answer in verse.",
                         inject_mode=False)
    Memory.objects.create(user=owner, tier="long", content="Likes haiku")
    job = services.job_submit(user=owner, task="Hi", options=services.JobOptions(chat_role="poet", tier=1))
    assert job.system_prompt.endswith("Use tools.") and "Current date and time" not in job.system_prompt
    assert "Mode: chat." in job.system_prompt and "Likes haiku" in job.system_prompt
    assert job.chat_system_prompt.endswith("Answer in verse.") and "Mode:" not in job.chat_system_prompt
    assert "Current date and time" in job.chat_system_prompt
    assert job.system_prompt.startswith(default_persona.prompt)
    excluded = services.job_submit(user=owner, task="Hi", options=services.JobOptions(include_long=False))
    assert "Likes haiku" not in excluded.system_prompt


def test_the_role_allow_list_narrows_the_offered_tools(owner, profile, engine, fake, default_persona):
    services.role_assign(by=owner, owner=owner, role="orchestrator", profile_id=profile.pk, tools=["calculator"])
    fake.script_text("No tools needed.")
    job = services.job_submit(user=owner, task="Hi", options=services.JobOptions(respond_with_final=False))
    async_to_sync(engine.run_until)(job.pk, "complete")
    assert [t["function"]["name"] for t in fake.calls[0]["tools"]] == ["calculator"]


def test_orchestrator_and_chat_on_different_backends(owner, profile, engine, fake, api, default_persona):
    services.role_assign(by=owner, owner=owner, role="orchestrator", profile_id=profile.pk)
    fake.script_tool_calls(Call("calculator", {"expression": "6*7"}, id="c1"))
    fake.script_text("The product is 42.")
    job_id = api.post("/orchestrate", {"task": "What is six times seven?"}).json()["job_id"]
    async_to_sync(engine.run_until)(job_id, "complete")
    body = api.get(f"/orchestrate/{job_id}").json()
    assert fake.calls[0]["model"] == "llama3.1"
    assert fake.requests[0].headers["authorization"] == "Bearer sk-profile-key"
    assert body["gemini_summary"] == "The product is 42."
    assert body["backend"] == "demo:demo" and "Demo" in body["backend_label"]
    assert "The product is 42." in body["response"] and body["response"].startswith("**Final answer**")


def test_respond_with_final_false_returns_the_orchestrators_own_answer(owner, profile, engine, fake, api):
    services.role_assign(by=owner, owner=owner, role="orchestrator", profile_id=profile.pk)
    fake.script_text("Quick answer.")
    job_id = api.post("/orchestrate", {"task": "Quick", "respond_with_claude": False}).json()["job_id"]
    async_to_sync(engine.run_until)(job_id, "complete")
    body = api.get(f"/orchestrate/{job_id}").json()
    assert body["response"] == body["gemini_summary"] == "Quick answer."
    assert body["backend"] == "openai:llama3.1" and fake.call_count == 1


async def test_a_watcher_receives_deltas_that_add_up_to_the_stored_answer(owner, profile, engine, fake,
                                                                         default_persona):
    await sync_to_async(services.role_assign)(by=owner, owner=owner, role="chat", profile_id=profile.pk)
    pieces = [f"piece {n}, " for n in range(30)] + ["the end."]
    fake.script_text(chunks=pieces, chunk_delay=0.01)
    job = await sync_to_async(services.job_submit)(user=owner, task="Tell me a long story")
    token = (await sync_to_async(services.token_create)(user=owner))[1]
    communicator = WebsocketCommunicator(application, f"/ws/jobs/{job.pk}/",
                                         headers=[(b"authorization", f"Bearer {token}".encode())])
    assert (await communicator.connect())[0]
    finished = await engine.run_until(job.pk, "complete")
    received = []
    while not await communicator.receive_nothing(timeout=0.3):
        received.append(await communicator.receive_json_from())
    await communicator.disconnect()
    deltas = [event["data"]["text"] for event in received if event["type"] == "answer.delta"]
    assert len(deltas) > 1
    assert "".join(deltas) == finished.response == "".join(pieces)
    [chat_call] = fake.calls  # the demo model ran the loop; the fake only wrote the answer
    assert chat_call["stream"] is True and "tools" not in chat_call


def test_usage_is_recorded_per_model_call_and_per_job(owner, profile, engine, fake, default_persona):
    services.role_assign(by=owner, owner=owner, role="orchestrator", profile_id=profile.pk)
    services.role_assign(by=owner, owner=owner, role="chat", profile_id=profile.pk)
    fake.script_text("Loop answer.")
    fake.script_text("Final answer.")
    job = services.job_submit(user=owner, task="Hi")
    job = async_to_sync(engine.run_until)(job.pk, "complete")
    turns = list(job.events.filter(type="model.turn").values_list("data", flat=True))
    assert [turn["purpose"] for turn in turns] == ["tool_loop", "final"]
    assert all(turn["usage"]["input_tokens"] > 0 for turn in turns)
    assert job.usage["model_calls"] == 2
    assert job.usage["input_tokens"] == sum(turn["usage"]["input_tokens"] for turn in turns)


def test_an_off_the_record_turn_is_kept_marked_and_forgotten(owner, engine, default_persona):
    first = services.job_submit(user=owner, task="Calculate 1+1")
    async_to_sync(engine.run_until)(first.pk, "complete")
    secret = services.job_submit(user=owner, task="Calculate 2+2", session_id=str(first.session_id),
                                 options=services.JobOptions(off_record=True))
    assert "Mode: off the record" in secret.system_prompt
    async_to_sync(engine.run_until)(secret.pk, "complete")
    marks = list(Message.objects.filter(session=first.session).values_list("content", "off_record"))
    assert [mark for _, mark in marks] == [False, False, True, True]
    found = async_to_sync(_search)(owner, "Calculate")
    assert [hit["content"] for hit in found] == ["Calculate 1+1"]
    following = services.job_submit(user=owner, task="And then?", session_id=str(first.session_id))
    assert "Calculate 2+2" in [m["content"] for m in following.transcript]


async def _search(owner, query):
    from orchestrator.engine.loop import workspace_for
    from orchestrator.tools.registry import ToolContext, registry

    context = ToolContext(user_id=owner.pk, username="alice", job_id="j", workspace=workspace_for(owner.pk))
    return await registry.get("conversation_search").handler(context, query=query)


async def test_memory_refuses_to_save_off_the_record(owner):
    from orchestrator.tools.registry import ToolContext, ToolError, registry

    context = ToolContext(user_id=owner.pk, username="alice", job_id="j", workspace=None, off_record=True)
    with pytest.raises(ToolError, match="off the record"):
        await registry.get("memory_save").handler(context, content="my pin is 1234")
    assert await sync_to_async(Memory.objects.count)() == 0


def test_the_models_command_lists_and_assigns(owner, capsys, monkeypatch):
    monkeypatch.setenv("LOCAL_KEY", "sk-from-env")
    call_command("models", "add-profile", "local", "--provider", "openai", "--model", "llama3.1",
                 "--api-key-env", "LOCAL_KEY")
    call_command("models", "assign", "orchestrator", "local", "--system-append", "Be brief.",
                 "--max-output-tokens", "8000")
    call_command("models", "list")
    out = capsys.readouterr().out
    assert "orchestrator   openai:llama3.1" in out and "from site-wide (profile local)" in out
    assert "at most 8000 output tokens" in out and roles.role_config(None, "orchestrator").max_output_tokens == 8000
    assert "sk-from-env" not in out
    assert roles.credentials(ModelProfile.objects.get(name="local").pk).api_key == "sk-from-env"


def test_the_assembled_prompts_stay_viewable_on_the_job_page_and_in_admin(owner, client, django_user_model,
                                                                         default_persona):
    services.role_assign(by=owner, owner=owner, role="chat", profile_id=None, system_append="Sign as Cortex.")
    job = services.job_submit(user=owner, task="Hello there")
    client.force_login(owner)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "Sign as Cortex." in page and "Mode: chat." in page
    admin = django_user_model.objects.create_superuser("root", password="root-password-1")
    client.force_login(admin)
    change = client.get(f"/admin/orchestrator/job/{job.pk}/change/").content.decode()
    assert "Sign as Cortex." in change and default_persona.prompt in change
