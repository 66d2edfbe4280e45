"""MCP servers as tool sources, end to end: real servers (the project's own, built with the SDK, and
`mcp-server-time` from PyPI) over stdio and streamable HTTP on 127.0.0.1, reached through the SDK's
client; jobs driven by the real engine against a fake model speaking the real OpenAI protocol."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.core.management.base import CommandError

from orchestrator import services
from orchestrator.mcp import services as mcp_services
from orchestrator.mcp.models import ServerChange, ServerTool, ToolServer
from orchestrator.models import Job
from orchestrator.tools.registry import registry
from tests.conftest import free_port, signed_in, wait_for_port
from tests.fakes.http import ToolCall as Call
from tests.fakes.openai_fake import OpenAIFake

pytestmark = pytest.mark.django_db(transaction=True)
LOOP_ONLY = services.JobOptions(respond_with_final=False)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake(settings):
    with OpenAIFake(expect_key="sk-test") as server:
        settings.CORTEX_ORCHESTRATOR_MODEL = "openai:test-model"
        settings.OPENAI_BASE_URL = server.base_url
        settings.OPENAI_API_KEY = "sk-test"
        yield server


@pytest.fixture
def trace(tmp_path) -> Path:
    return tmp_path / "mcp-trace.log"


def lines(trace: Path) -> list[str]:
    return trace.read_text().splitlines() if trace.exists() else []


@pytest.fixture
def stdio_server(trace, settings):
    """The project's own test server over stdio, added site-wide as staff would, its tools listed."""
    settings.CORTEX_MCP_CONNECT_SECONDS = 30
    server = mcp_services.server_add(by=None, name="home", site_wide=True, command=sys.executable,
                                     args=["-m", "tests.fakes.mcp_server"], env={"MCP_TEST_TRACE": str(trace)},
                                     timeout=20)
    _, problem = mcp_services.server_refresh(by=None, server_id=server.pk)
    assert problem is None
    return server


@pytest.fixture
def http_server(trace):
    """The same server over streamable HTTP on 127.0.0.1, as its own process."""
    port = free_port()
    env = {**__import__("os").environ, "MCP_TEST_TRACE": str(trace), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "tests.fakes.mcp_server", "--http", str(port)], cwd=ROOT,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process=process)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(10)


def tool_messages(body: dict) -> list[dict]:
    return [m for m in body["messages"] if m["role"] == "tool"]


def offered(body: dict) -> set[str]:
    return {t["function"]["name"] for t in body.get("tools", [])}


async def submit(owner, task="Do it") -> Job:
    return await sync_to_async(services.job_submit)(user=owner, task=task, options=LOOP_ONLY)


# --- Discovery, naming, risk ---------------------------------------------------------------------

def test_discovery_names_every_tool_after_its_server_and_reads_the_risk_from_its_annotations(stdio_server):
    tools = {row.name: row for row in ServerTool.objects.filter(server=stdio_server)}
    assert tools["read_note"].exposed_name == "home__read_note"
    assert tools["read_note"].risk == ("low", "annotation")
    assert tools["set_light"].risk == ("medium", "annotation")
    assert tools["delete_file"].risk == ("high", "annotation")
    assert tools["send_message"].annotations is None and tools["send_message"].risk == ("high", "spec default")
    # The registry holds them beside the built-in tools, in the same shape.
    tool = registry.get("home__set_thermostat")
    assert (tool.risk, tool.idempotent) == ("medium", True)
    assert registry.get("home__set_light").idempotent is False
    assert tool.parameters["properties"]["degrees"]["type"] == "integer"
    assert "calculator" in registry.names()


def test_mcp_list_prints_each_tool_with_its_risk_and_where_the_risk_came_from(stdio_server):
    mcp_services.tool_risk_override(by=None, tool_id=ServerTool.objects.get(name="set_light").pk, risk="low")
    out = io.StringIO()
    call_command("mcp", "list", stdout=out)
    printed = out.getvalue().splitlines()
    assert "home__read_note  low  annotation" in printed
    assert "home__delete_file  high  annotation" in printed
    assert "home__send_message  high  spec default" in printed
    assert "home__set_light  low  override" in printed
    assert registry.get("home__set_light").risk == "low"


def test_names_are_cleaned_cut_to_64_characters_and_made_unique():
    from orchestrator.mcp.risk import exposed_name

    assert exposed_name("my server", "get.thing/now", set()) == "my_server__get_thing_now"
    long = exposed_name("s", "x" * 100, set())
    assert len(long) == 64 and long.startswith("s__x")
    assert exposed_name("s", "x" * 100, {long}) == long[:62] + "-2"
    assert exposed_name("a", "b", {"a__b", "a__b-2"}) == "a__b-3"


@pytest.mark.parametrize(("annotations", "risk"), [
    ({"readOnlyHint": True}, ("low", "annotation")),
    ({"readOnlyHint": True, "destructiveHint": True}, ("low", "annotation")),
    ({"readOnlyHint": False, "destructiveHint": False}, ("medium", "annotation")),
    ({"destructiveHint": False}, ("medium", "annotation")),
    ({"readOnlyHint": False, "destructiveHint": True}, ("high", "annotation")),
    ({"readOnlyHint": False}, ("high", "spec default")),
    ({"idempotentHint": True}, ("high", "spec default")),
    ({}, ("high", "spec default")),
    (None, ("high", "spec default")),
])
def test_risk_follows_the_specifications_defaults(annotations, risk):
    from orchestrator.mcp.risk import derived_risk

    assert derived_risk(annotations) == risk


# --- Acceptance: a job calls mcp-server-time ------------------------------------------------------

async def test_a_job_calls_the_time_server_added_with_the_command_and_its_result_reaches_the_model(
        fake, owner, default_persona, engine):
    out = io.StringIO()
    await sync_to_async(call_command)("mcp", "add", "time", "--", sys.executable, "-m", "mcp_server_time",
                                      stdout=out)
    assert "time: 2 tools" in out.getvalue()
    fake.script_tool_calls(Call("time__get_current_time", {"timezone": "Europe/Oslo"}, id="t1"))
    fake.script_text("It is late in Oslo.")
    job = await engine.run_until((await submit(owner, "What time is it in Oslo?")).pk, "complete")
    assert job.response == "It is late in Oslo."
    assert "time__get_current_time" in offered(fake.calls[0])
    [result] = tool_messages(fake.calls[1])
    assert json.loads(result["content"])["timezone"] == "Europe/Oslo"
    call = await sync_to_async(job.tool_calls.get)()
    assert (call.risk, call.verdict, call.status) == ("low", "run", "succeeded")


# --- Policy: the same layers, confirmations and decisions as built-in tools ------------------------

async def test_a_read_only_tool_runs_and_a_destructive_one_waits_then_runs_with_the_edited_arguments(
        fake, owner, default_persona, engine, stdio_server, trace):
    fake.script_tool_calls(Call("home__read_note", {"title": "shopping"}, id="r1"),
                           Call("home__delete_file", {"path": "/etc/important"}, id="d1"))
    fake.script_text("Done.")
    job = await engine.run_until((await submit(owner)).pk, "awaiting_confirmation")
    assert lines(trace) == ["read_note shopping"]  # the low-risk call ran; the high-risk one waits
    calls = {c.call_id: c for c in await sync_to_async(list)(job.tool_calls.all())}
    assert (calls["d1"].risk, calls["d1"].verdict, calls["d1"].status) == ("high", "ask", "awaiting")

    await sync_to_async(services.job_confirm)(user=owner, job_id=job.pk, tool_call_id="d1",
                                              args={"path": "/tmp/scratch"})
    job = await engine.run_until(job.pk, "complete")
    assert lines(trace) == ["read_note shopping", "delete_file /tmp/scratch"]
    results = {m["tool_call_id"]: m["content"] for m in tool_messages(fake.calls[1])}
    assert results["d1"] == "Deleted /tmp/scratch."


async def test_a_tool_approved_for_the_rest_of_the_job_runs_again_without_asking(
        fake, owner, default_persona, engine, stdio_server, trace):
    fake.script_tool_calls(Call("home__set_light", {"room": "hall", "on": True}, id="l1"))
    fake.script_tool_calls(Call("home__set_light", {"room": "hall", "on": False}, id="l2"))
    fake.script_text("Blinked.")
    job = await engine.run_until((await submit(owner)).pk, "awaiting_confirmation")
    await sync_to_async(services.job_confirm)(user=owner, job_id=job.pk, remember="job")
    job = await engine.run_until(job.pk, "complete")
    assert lines(trace) == ["set_light hall True", "set_light hall False"]
    verdicts = {c.call_id: (c.verdict, c.verdict_reason) for c in await sync_to_async(list)(job.tool_calls.all())}
    assert verdicts["l1"][0] == "ask"
    assert verdicts["l2"] == ("run", "approved for the rest of this job")


async def test_a_tool_without_annotations_waits_and_a_denied_call_never_runs(
        fake, owner, default_persona, engine, stdio_server, trace):
    fake.script_tool_calls(Call("home__send_message", {"to": "boss", "text": "I quit"}, id="m1"))
    fake.script_text("I did not send it.")
    job = await engine.run_until((await submit(owner)).pk, "awaiting_confirmation")
    await sync_to_async(services.job_deny)(user=owner, job_id=job.pk, reason="no")
    job = await engine.run_until(job.pk, "complete")
    assert lines(trace) == []
    [result] = tool_messages(fake.calls[1])
    assert "denied" in result["content"].lower()


async def test_the_settings_page_the_offer_and_the_verdict_agree_for_mcp_tools(
        fake, owner, default_persona, engine, stdio_server):
    await sync_to_async(services.policy_update)(
        user=owner, max_risk="medium", overrides={"home__send_message": "include"},
        confirmations={"home__set_light": "run", "home__read_note": "ask"})
    page = await sync_to_async(lambda: signed_in(owner).get("/settings/tool-servers/").content.decode())()
    tools_page = await sync_to_async(lambda: signed_in(owner).get("/settings/tools/").content.decode())()

    def effective(html: str, name: str) -> str:
        start = html.index(f'id="tool-{name}"') if f'id="tool-{name}"' in html else html.index(f'id="effective-{name}"')
        return html[start:start + 1500]

    fake.script_tool_calls(Call("home__read_note", {"title": "a"}, id="a"),
                           Call("home__set_light", {"room": "hall", "on": True}, id="b"),
                           Call("home__delete_file", {"path": "x"}, id="c"),
                           Call("home__send_message", {"to": "x", "text": "y"}, id="d"))
    job = await engine.run_until((await submit(owner)).pk, "awaiting_confirmation")
    verdicts = {c.name: c.verdict for c in await sync_to_async(list)(job.tool_calls.all())}
    offer = offered(fake.calls[0])
    expectations = {"home__read_note": ("Offered, asks first", "ask"),
                    "home__set_light": ("Offered, runs", "run"),
                    "home__delete_file": ("Not offered", "refuse"),
                    "home__send_message": ("Offered, asks first", "ask")}
    for name, (summary, verdict) in expectations.items():
        assert summary in effective(page, name), name
        assert summary in effective(tools_page, name), name
        assert verdicts[name] == verdict, name
        assert (name in offer) == (verdict != "refuse"), name


def test_a_persons_own_server_is_offered_to_them_alone(owner, outsider, http_server, settings):
    settings.CORTEX_HTTP_ALLOW_PRIVATE = True  # a person's URL on 127.0.0.1 needs the site's leave
    server = mcp_services.server_add(by=owner, name="mine", site_wide=False, url=http_server)
    _, problem = mcp_services.server_refresh(by=owner, server_id=server.pk)
    assert problem is None
    from orchestrator import selectors
    from orchestrator.policy import decide

    tool = registry.get("mine__read_note")
    assert tool.owner_id == owner.pk
    assert decide(tool.name, tool, selectors.policy_context_for_user(owner)).offered
    theirs = decide(tool.name, tool, selectors.policy_context_for_user(outsider))
    assert not theirs.offered and theirs.verdict == "refuse"
    assert "mine__read_note" not in signed_in(outsider).get("/settings/tools/").content.decode()
    assert signed_in(outsider).post(f"/settings/tool-servers/{server.pk}/refresh/").status_code == 404
    assert signed_in(outsider).get("/settings/tool-servers/").content.decode().count("mine__") == 0


# --- Transports, address guard, secrets -------------------------------------------------------------

def test_an_http_server_is_discovered_with_its_headers_which_are_stored_encrypted(http_server):
    server = mcp_services.server_add(by=None, name="web", site_wide=True, url=http_server,
                                     headers={"Authorization": "Bearer very-secret-value"})
    _, problem = mcp_services.server_refresh(by=None, server_id=server.pk)
    assert problem is None
    assert ServerTool.objects.filter(server=server, name="read_note").exists()
    stored = ToolServer.objects.filter(pk=server.pk).values_list("headers_encrypted", flat=True).get()
    assert "very-secret-value" not in stored and stored.startswith("fernet1:")
    assert server.secrets("headers") == {"Authorization": "Bearer very-secret-value"}


def test_a_person_may_not_point_a_server_at_a_private_address_unless_the_site_allows_it(owner, settings, alice):
    settings.CORTEX_HTTP_ALLOW_PRIVATE = False
    with pytest.raises(services.Invalid, match="not allowed"):
        mcp_services.server_add(by=owner, name="sneaky", site_wide=False, url="http://127.0.0.1:8123/mcp")
    response = alice.post("/settings/tool-servers/new/", {"name": "sneaky2", "url": "http://169.254.169.254/mcp"})
    assert response.status_code == 400 and "not allowed" in response.content.decode()
    assert not ToolServer.objects.exists()
    with pytest.raises(services.Forbidden):
        mcp_services.server_add(by=owner, name="shell", site_wide=False, command="sh")
    with pytest.raises(services.Forbidden):
        mcp_services.server_add(by=owner, name="everyone", site_wide=True, url="https://example.com/mcp")


async def test_an_address_that_became_private_is_refused_when_the_call_connects(owner, settings, default_persona,
                                                                               http_server, fake, engine):
    settings.CORTEX_HTTP_ALLOW_PRIVATE = True
    server = await sync_to_async(mcp_services.server_add)(by=owner, name="mine", site_wide=False, url=http_server)
    await sync_to_async(mcp_services.server_refresh)(by=owner, server_id=server.pk)
    settings.CORTEX_HTTP_ALLOW_PRIVATE = False  # the site changed its mind; the stored URL is now refused
    fake.script_tool_calls(Call("mine__read_note", {"title": "a"}, id="n"))
    fake.script_text("ok")
    await engine.run_until((await submit(owner)).pk, "complete")
    [result] = tool_messages(fake.calls[1])
    assert "not allowed" in result["content"]


# --- Results and failures -------------------------------------------------------------------------------

async def test_results_errors_pictures_structure_and_long_output_reach_the_model_as_text(
        fake, owner, default_persona, engine, stdio_server, settings):
    settings.CORTEX_MCP_MAX_OUTPUT_CHARS = 500
    fake.script_tool_calls(Call("home__fails", {}, id="f"), Call("home__picture", {}, id="p"),
                           Call("home__weather", {}, id="w"), Call("home__long_text", {"characters": 2000}, id="l"))
    fake.script_text("ok")
    job = await engine.run_until((await submit(owner)).pk, "complete")
    results = {m["tool_call_id"]: m["content"] for m in tool_messages(fake.calls[1])}
    assert "the disk is full" in results["f"] and results["f"].startswith("Error")
    assert "A red dot." in results["p"] and "an image (image/png, 64 bytes)" in results["p"]
    assert json.loads(results["w"]) == {"city": "Oslo", "celsius": -3}
    assert results["l"].startswith("x" * 500) and "1500 more characters not shown" in results["l"]
    statuses = {c.call_id: c.status for c in await sync_to_async(list)(job.tool_calls.all())}
    assert statuses == {"f": "failed", "p": "succeeded", "w": "succeeded", "l": "succeeded"}


async def test_a_server_that_crashes_mid_call_gives_a_clear_error_and_is_started_again_for_the_next_call(
        fake, owner, default_persona, engine, stdio_server, trace):
    fake.script_tool_calls(Call("home__whoami", {}, id="w1"))
    fake.script_tool_calls(Call("home__crash", {}, id="c"))
    fake.script_tool_calls(Call("home__whoami", {}, id="w2"))
    fake.script_text("ok")
    job = await engine.run_until((await submit(owner)).pk, "complete")
    assert job.status == "complete"
    [before] = tool_messages(fake.calls[1])
    crashed = tool_messages(fake.calls[2])[-1]
    after = tool_messages(fake.calls[3])[-1]
    assert "closed the connection" in crashed["content"] and "may have crashed" in crashed["content"]
    assert before["content"].startswith("process ") and after["content"].startswith("process ")
    assert before["content"] != after["content"]  # a new server process answered
    assert any(line.startswith("crash ") for line in lines(trace))


async def test_a_stdio_server_that_died_between_calls_is_started_again_by_the_next_call(stdio_server):
    import asyncio
    import os
    import signal

    from orchestrator.mcp import client
    from orchestrator.mcp.source import server_config

    config = await sync_to_async(server_config)(await sync_to_async(ToolServer.objects.get)(pk=stdio_server.pk))
    pool = client.Pool()
    try:
        first = client.result_text(await pool.call(config, "whoami", {}), 1000)
        os.kill(int(first.removeprefix("process ")), signal.SIGKILL)  # while no call is running
        async with asyncio.timeout(20):  # the session notices that its server went away
            while pool.is_open(config.id):
                await asyncio.sleep(0.05)
        second = await pool.call(config, "whoami", {})
        assert not second.is_error and client.result_text(second, 1000) != first
    finally:
        await pool.close()


async def test_one_session_serves_every_call_to_a_server(fake, owner, default_persona, engine, stdio_server):
    fake.script_tool_calls(Call("home__whoami", {}, id="w1"))
    fake.script_tool_calls(Call("home__whoami", {}, id="w2"), Call("home__read_note", {"title": "x"}, id="r"))
    fake.script_text("ok")
    await engine.run_until((await submit(owner)).pk, "complete")
    first = tool_messages(fake.calls[1])[0]["content"]
    second = {m["tool_call_id"]: m["content"] for m in tool_messages(fake.calls[2])}["w2"]
    assert first.startswith("process ") and first == second  # the same server process: not one per call


async def test_a_server_that_is_down_gives_the_model_a_clear_error(fake, owner, default_persona, engine, http_server):
    server = await sync_to_async(mcp_services.server_add)(by=None, name="web", site_wide=True, url=http_server)
    await sync_to_async(mcp_services.server_refresh)(by=None, server_id=server.pk)
    await sync_to_async(ToolServer.objects.filter(pk=server.pk).update)(url=f"http://127.0.0.1:{free_port()}/mcp")
    from orchestrator.mcp.models import Catalog

    await sync_to_async(Catalog.touch)()
    fake.script_tool_calls(Call("web__read_note", {"title": "a"}, id="n"))
    fake.script_text("The server is down.")
    job = await engine.run_until((await submit(owner)).pk, "complete")
    [result] = tool_messages(fake.calls[1])
    assert result["content"].startswith("Error") and "could not be reached" in result["content"]
    assert (await sync_to_async(job.tool_calls.get)()).status == "failed"


async def test_a_hanging_call_is_cancelled_with_its_job_and_the_server_is_told(
        fake, owner, default_persona, engine, stdio_server, trace):
    fake.script_tool_calls(Call("home__hang", {"label": "forever"}, id="h"))
    job = await submit(owner)
    import asyncio

    from orchestrator.engine.executor import Executor

    executor = Executor(concurrency=5)
    runner = asyncio.create_task(executor.run())
    try:
        async with asyncio.timeout(30):
            while "hang forever" not in lines(trace):
                await asyncio.sleep(0.05)
        await sync_to_async(services.job_cancel)(user=owner, job_id=job.pk)
        async with asyncio.timeout(30):
            while "cancelled forever" not in lines(trace):
                await asyncio.sleep(0.05)
    finally:
        await executor.stop()
        await runner
    job = await sync_to_async(Job.objects.get)(pk=job.pk)
    assert job.status == "cancelled"


async def test_a_call_that_takes_too_long_is_cancelled_and_the_model_told(
        fake, owner, default_persona, engine, stdio_server, trace):
    await sync_to_async(ToolServer.objects.filter(pk=stdio_server.pk).update)(timeout_seconds=1)
    from orchestrator.mcp.models import Catalog

    await sync_to_async(Catalog.touch)()
    fake.script_tool_calls(Call("home__hang", {"label": "slow"}, id="h"))
    fake.script_text("It took too long.")
    await engine.run_until((await submit(owner)).pk, "complete")
    [result] = tool_messages(fake.calls[1])
    assert "did not answer within 1 s" in result["content"]
    assert "cancelled slow" in lines(trace)


# --- Changes while running ------------------------------------------------------------------------------

async def test_a_tool_list_change_is_picked_up_and_a_vanished_tool_gets_a_clear_error(
        fake, owner, default_persona, engine, stdio_server, trace):
    fake.script_tool_calls(Call("home__grow", {}, id="g"))
    fake.script_text("grown")
    first = await engine.run_until((await submit(owner)).pk, "awaiting_confirmation")
    await sync_to_async(services.job_confirm)(user=owner, job_id=first.pk)
    # The engine's session heard `notifications/tools/list_changed` and listed the tools again.
    import asyncio

    from orchestrator.engine.executor import Executor

    executor = Executor(concurrency=5)
    runner = asyncio.create_task(executor.run())
    try:
        async with asyncio.timeout(30):
            while not await sync_to_async(ServerTool.objects.filter(name="late_arrival").exists)():
                await asyncio.sleep(0.05)
    finally:
        await executor.stop()
        await runner
    assert not await sync_to_async(ServerTool.objects.filter(name="delete_file").exists)()

    fake.script_tool_calls(Call("home__late_arrival", {}, id="late"), Call("home__delete_file", {"path": "x"}, id="gone"))
    fake.script_text("ok")
    await engine.run_until((await submit(owner, "again")).pk, "complete")
    results = {m["tool_call_id"]: m["content"] for m in tool_messages(fake.calls[-1])}
    assert "home__late_arrival" in offered(fake.calls[-2]) and "home__delete_file" not in offered(fake.calls[-2])
    assert results["late"] == "I arrived late."
    assert "no tool named 'home__delete_file'" in results["gone"]
    assert "delete_file x" not in lines(trace)


def test_a_server_added_while_running_is_offered_to_the_next_job(stdio_server):
    assert registry.get("home__read_note") is not None  # a process that looked before the change...
    mcp_services.server_add(by=None, name="clock", site_wide=True, command=sys.executable, args=["-m", "mcp_server_time"])
    mcp_services.server_refresh(by=None, server_id=ToolServer.objects.get(name="clock").pk)
    assert registry.get("clock__get_current_time") is not None  # ...sees the new one at its next look
    mcp_services.server_set_enabled(by=None, server_id=ToolServer.objects.get(name="clock").pk, enabled=False)
    assert registry.get("clock__get_current_time") is None


def test_the_command_refuses_bad_input_and_keeps_nothing(capsys):
    with pytest.raises(CommandError, match="give the server's command"):
        call_command("mcp", "add", "x")
    with pytest.raises(CommandError, match="1 to 40 letters"):
        call_command("mcp", "add", "no spaces", "--", "true")
    with pytest.raises(CommandError, match="starting with a letter"):
        call_command("mcp", "add", "1password", "--", "true")
    with pytest.raises(CommandError, match="Name: value"):
        call_command("mcp", "add", "h", "--url", "https://example.com/mcp", "--header", "nocolon")
    with pytest.raises(CommandError, match="no tool server named"):
        call_command("mcp", "remove", "ghost")
    assert not ToolServer.objects.exists()


def test_removing_a_server_removes_its_tools_and_the_audit_keeps_the_story(stdio_server):
    out = io.StringIO()
    call_command("mcp", "remove", "home", stdout=out)
    assert registry.get("home__read_note") is None and not ServerTool.objects.exists()
    actions = list(ServerChange.objects.filter(server_name="home").order_by("at", "id").values_list("action", flat=True))
    assert actions == ["added", "tools refreshed", "removed"]
    assert set(ServerChange.objects.values_list("actor_label", flat=True)) == {"command line"}
