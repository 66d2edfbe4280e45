"""axe-core over every page, in the light and the dark colour scheme: no serious or critical
violation. axe comes from the `axe-playwright-python` package (its bundled axe.min.js); it is
evaluated through the driver, which the page's Content-Security-Policy does not apply to."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from axe_playwright_python.base import AXE_SCRIPT
from playwright.sync_api import Page, expect

from orchestrator import services
from tests.browser.test_decisions import waiting_job

pytestmark = pytest.mark.browser

SERIOUS = ("serious", "critical")


def _job_page(owner) -> str:
    return f"/jobs/{waiting_job(owner, 'Write a note: buy milk').pk}/"


def _session_page(owner) -> str:
    return f"/sessions/{waiting_job(owner, 'Write a note: buy milk').session_id}/"


def _inbox(owner) -> str:
    waiting_job(owner, "Write a note: buy milk")
    return "/confirmations/"


def _memory(owner) -> str:
    services.memory_save(user=owner, content="Prefers short answers.", tier="long")
    return "/memories/"


def _schedule(owner) -> str:
    from orchestrator.triggers import services as triggers

    schedule = triggers.schedule_save(user=owner, name="Mornings", cron_expression="0 9 * * 1-5",
                                      time_zone="Europe/Berlin", task="Plan {date}")
    triggers.schedule_run_now(user=owner, schedule_id=schedule.pk)
    return f"/settings/schedules/{schedule.pk}/"


def _hook(owner) -> str:
    from orchestrator.triggers import services as triggers

    triggers.hook_create(user=owner, slug="pushes", task_template="Review {payload.repository.full_name}")
    return "/settings/hooks/pushes/"
def _tool_servers(owner) -> str:
    from orchestrator.mcp import services as mcp_services

    owner.is_staff = True  # the risk override's controls shown too
    owner.save()
    server = mcp_services.server_add(by=None, name="home", site_wide=True, url="https://ha.example.org/api/mcp",
                                     headers={"Authorization": "Bearer secret"})
    mcp_services.server_tools_store(server_id=server.pk, listing=[
        {"name": "GetLiveContext", "description": "Reads the home's state", "input_schema": {"type": "object"},
         "annotations": {"readOnlyHint": True}},
        {"name": "HassTurnOn", "description": "Turns a device on", "input_schema": {"type": "object"},
         "annotations": None}])
    return "/settings/tool-servers/"


PAGES: dict[str, Callable[..., str]] = {
    "jobs": lambda owner: "/jobs/",
    "job with a waiting card": _job_page,
    "inbox": _inbox,
    "sessions": lambda owner: "/sessions/",
    "session": _session_page,
    "memory": _memory,
    "settings: tools": lambda owner: "/settings/tools/",
    "settings: models": lambda owner: "/settings/models/",
    "settings: personas": lambda owner: "/settings/personas/",
    "settings: tokens": lambda owner: "/settings/tokens/",
    "settings: schedules": lambda owner: "/settings/schedules/",
    "settings: new schedule": lambda owner: "/settings/schedules/new/",
    "settings: a schedule": _schedule,
    "settings: hooks": lambda owner: "/settings/hooks/",
    "settings: a hook": _hook,
    "settings: callbacks": lambda owner: "/settings/callbacks/",
    "settings: notifications": lambda owner: "/settings/notifications/",
    "settings: tool servers": _tool_servers,
}


def serious_violations(page: Page) -> list[str]:
    page.evaluate(AXE_SCRIPT)
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [f"{violation['id']} ({violation['impact']}): {violation['help']} at "
            + "; ".join(f"{node['target']} {node.get('failureSummary', '')}" for node in violation["nodes"][:5])
            for violation in result["violations"] if violation["impact"] in SERIOUS]


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("name", list(PAGES))
def test_every_page_has_no_serious_accessibility_violation(sign_in, owner, default_persona, name, scheme):
    address = PAGES[name](owner)
    page = sign_in(owner)
    page.emulate_media(color_scheme=scheme)
    page.goto(address)
    expect(page.locator("main h1, main h2").first).to_be_visible()
    assert serious_violations(page) == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_sign_in_page_has_no_serious_accessibility_violation(anonymous, scheme):
    anonymous.emulate_media(color_scheme=scheme)
    anonymous.goto("/login/")
    expect(anonymous.get_by_label("Username")).to_be_visible()
    assert serious_violations(anonymous) == []
