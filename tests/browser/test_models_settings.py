"""Settings → Models in real Chromium against a running Cortex: a person adds a profile for an
OpenAI-compatible endpoint, tests the connection, makes it the orchestrator, and runs a job on it."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from orchestrator import services
from orchestrator.models import Job, ModelProfile
from tests.fakes.openai_fake import OpenAIFake

pytestmark = pytest.mark.browser

KEY = "sk-browser-7d1e44a0c9b2"


@pytest.fixture
def endpoint(transactional_db) -> Iterator[OpenAIFake]:
    with OpenAIFake(expect_key=KEY) as fake:
        yield fake
    assert fake.errors == []


def test_a_profile_is_added_tested_assigned_and_runs_a_job(sign_in, owner, default_persona, endpoint: OpenAIFake,
                                                          screenshot):
    endpoint.script_text("The fake endpoint says hello.")
    # Something set for the whole site, shown read-only beside alice's own.
    team = services.profile_save(by=None, owner=None, name="team-claude", provider="anthropic",
                                 model="claude-sonnet-4-6", temperature=0.3)
    services.role_assign(by=None, owner=None, role="chat", profile_id=team.pk)
    page = sign_in(owner)
    page.goto("/settings/models/")
    expect(page.locator("#role-orchestrator")).to_contain_text("Environment")

    form = page.locator("#profile-form")
    form.get_by_label("Name").fill("workbench")
    form.get_by_label("Provider").select_option("openai")
    form.get_by_label("Model", exact=True).fill("gpt-4o-mini")
    form.get_by_label("Base URL").fill(endpoint.base_url)
    form.get_by_label("API key").fill(KEY)
    form.get_by_label("Max tool rounds").fill("4")
    form.get_by_role("button", name="Add profile").click()
    expect(page.locator(".flash")).to_contain_text("Profile “workbench” added.")
    profile = ModelProfile.objects.get(owner=owner)
    expect(page.locator(f"#profile-{team.pk}")).to_contain_text("Site-wide")
    expect(page.locator(f"#profile-{team.pk}").get_by_role("link", name="Edit")).to_have_count(0)
    row = page.locator(f"#profile-{profile.pk}")
    expect(row).to_contain_text("Key set")
    expect(row).to_contain_text("4 rounds")

    page.locator("#role-orchestrator").get_by_role("link", name="Change").click()
    role_form = page.locator("#role-form")
    expect(role_form.get_by_role("heading")).to_contain_text("Change the orchestrator role")
    role_form.get_by_label("Model", exact=True).select_option(label="workbench · openai:gpt-4o-mini")
    role_form.get_by_role("button", name="Save role").click()
    expect(page.locator(".flash")).to_contain_text("Role “orchestrator” saved.")
    expect(page.locator("#role-orchestrator")).to_contain_text("workbench")
    expect(page.locator("#role-orchestrator")).to_contain_text("You")

    page.evaluate("window.cortexTestMark = 'same document'")
    page.locator(f"#profile-{profile.pk}").get_by_role("button", name="Test connection").click()
    result = page.locator(f"#profile-{profile.pk}-check")
    expect(result).to_contain_text("Works.")
    expect(result).to_contain_text("gpt-4o-mini is available")
    assert page.evaluate("window.cortexTestMark") == "same document"  # swapped in place
    assert KEY not in page.content()
    screenshot(page, "models-settings", full_page=True)

    page.goto("/jobs/")
    page.get_by_role("textbox", name="Task").fill("Say hello from the endpoint")
    page.get_by_label("Answer by the chat model").uncheck()
    page.get_by_role("button", name="Run task").click()
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f-]{36}/$"))
    job_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    expect(page.locator(f"#job-{job_id}-status")).to_have_text("Complete")
    expect(page.locator("#job-answer")).to_contain_text("The fake endpoint says hello.")
    expect(page.locator(".meta")).to_contain_text("OpenAI-compatible · gpt-4o-mini")
    job = Job.objects.get(pk=job_id)
    assert job.backend_label == "OpenAI-compatible · gpt-4o-mini" and job.orchestrator_model == "openai:gpt-4o-mini"
    assert endpoint.requests[-1].headers["authorization"] == f"Bearer {KEY}"


def test_the_connection_test_works_without_javascript(sign_in, owner):
    profile = services.profile_save(by=owner, owner=owner, name="unreachable", provider="openai", model="m",
                                    base_url="http://127.0.0.1:9/v1")
    page = sign_in(owner, javascript=False)
    page.goto("/settings/models/")
    page.locator(f"#profile-{profile.pk}").get_by_role("button", name="Test connection").click()
    expect(page.locator(".flash")).to_contain_text(
        "“unreachable” failed the connection test: could not connect to the model at http://127.0.0.1:9/v1")
