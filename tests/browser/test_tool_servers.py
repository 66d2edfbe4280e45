"""Settings → Tool servers in real Chromium against a running Cortex: staff add a stdio MCP server,
see its tools with the risk their annotations give, override one, test, disable and remove it; a
person adds their own HTTP server, whose header is never shown again."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from orchestrator.mcp.models import ServerTool, ToolServer
from tests.conftest import free_port, wait_for_port

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def http_server() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tests.fakes.mcp_server", "--http", str(port)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process=process)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(10)


def test_staff_add_a_stdio_server_see_its_tools_and_override_a_risk(sign_in, owner, default_persona):
    owner.is_staff = True
    owner.save()
    page = sign_in(owner, expected_errors=("status of 400",))  # the form sent empty is answered 400
    page.goto("/settings/")
    page.get_by_role("navigation", name="Settings").get_by_role("link", name="Tool servers").click()
    expect(page.get_by_role("heading", name="Tool servers")).to_be_visible()

    form = page.locator("#server-form")
    form.get_by_label("Name").fill("home")
    form.get_by_role("button", name="Add and list its tools").click()  # neither a URL nor a command
    expect(form).to_contain_text("Give either a URL (an HTTP server) or a command (a stdio server).")
    assert not ToolServer.objects.exists()
    form.get_by_label("Command").fill(f"{sys.executable} -m tests.fakes.mcp_server")
    form.get_by_label("Environment").fill("GREETING=hello-secret")
    form.get_by_label("For everyone (site-wide)").check()
    form.get_by_role("button", name="Add and list its tools").click()
    expect(page.locator(".flash")).to_contain_text("Added home; its tools are listed below.")

    server = ToolServer.objects.get(name="home")
    card = page.locator(f"#server-{server.pk}")
    expect(card).to_contain_text("Site-wide")
    expect(card).to_contain_text("GREETING=••••")
    expect(card).not_to_contain_text("hello-secret")
    expect(card.locator("#tool-home__read_note")).to_contain_text("Low risk")
    expect(card.locator("#tool-home__read_note")).to_contain_text("Offered, runs")
    expect(card.locator("#tool-home__delete_file")).to_contain_text("High risk")
    expect(card.locator("#tool-home__delete_file")).to_contain_text("Offered, asks first")
    expect(card.locator("#tool-home__send_message")).to_contain_text("from the spec default")
    expect(card.locator("#tool-home__set_thermostat")).to_contain_text("not read-only, not destructive, idempotent")

    row = card.locator("#tool-home__read_note")
    row.get_by_label("Risk of home__read_note").select_option("high")
    row.get_by_role("button", name="Set").click()
    expect(page.locator(".flash")).to_contain_text("home__read_note: risk high.")
    row = page.locator(f"#server-{server.pk} #tool-home__read_note")
    expect(row).to_contain_text("from the override")
    expect(row).to_contain_text("Offered, asks first")
    assert ServerTool.objects.get(exposed_name="home__read_note").risk_override == "high"

    page.locator(f"#server-{server.pk}").get_by_role("button", name="Test connection").click()
    expect(page.locator(".flash")).to_contain_text("home: connected; it offers")

    page.locator(f"#server-{server.pk}").get_by_role("button", name="Disable").click()
    expect(page.locator(".flash")).to_contain_text("home disabled")
    expect(page.locator(f"#server-{server.pk} #tool-home__set_light")).to_contain_text("the server is disabled")

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f"#server-{server.pk}").get_by_role("button", name="Remove").click()
    expect(page.locator(".flash")).to_contain_text("home removed")
    assert not ToolServer.objects.exists()


def test_a_person_adds_their_own_http_server_without_javascript(sign_in, owner, default_persona, http_server):
    page = sign_in(owner, javascript=False)
    page.goto("/settings/tool-servers/")
    form = page.locator("#server-form")
    expect(form.get_by_label("Command")).to_have_count(0)  # commands run on the host: staff only
    form.get_by_label("Name").fill("mine")
    form.get_by_label("URL").fill(http_server)
    form.get_by_label("Headers").fill("Authorization: Bearer top-secret-token")
    form.get_by_role("button", name="Add and list its tools").click()
    expect(page.locator(".flash")).to_contain_text("Added mine")
    server = ToolServer.objects.get(name="mine")
    assert server.owner == owner
    card = page.locator(f"#server-{server.pk}")
    expect(card).to_contain_text("Yours")
    expect(card).to_contain_text("Authorization: ••••")
    expect(page.locator("body")).not_to_contain_text("top-secret-token")
    expect(card.locator("#tool-mine__set_light")).to_contain_text("Medium risk")
    # Not staff: the override is shown, not offered.
    expect(card.locator("#tool-mine__set_light select")).to_have_count(0)
