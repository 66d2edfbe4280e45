"""Smaller things people noticed, in Chromium: a new token copied with one click, the task box
focused on the Jobs page, an icon for every page, and continuing a conversation stays in it."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import Page, expect

from orchestrator import services
from orchestrator.models import ApiToken, Job

pytestmark = pytest.mark.browser


def test_a_new_token_is_copied_with_one_click(sign_in, owner):
    page = sign_in(owner)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto("/settings/tokens/")
    page.get_by_label("Name").fill("backup script")
    page.get_by_role("button", name="Create token").click()
    token = page.locator("#new-token")
    expect(token).to_be_visible()
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#new-token-copied")).to_have_text("Copied.")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == token.inner_text().strip()
    assert ApiToken.objects.get().prefix == copied[:len(ApiToken.objects.get().prefix)]


def test_the_task_box_is_focused_on_the_jobs_page(sign_in, owner, default_persona):
    page = sign_in(owner)
    page.goto("/jobs/")
    expect(page.get_by_role("textbox", name="Task")).to_be_focused()


def test_every_page_has_an_icon_and_favicon_ico_is_found(sign_in, owner, app_server):
    page = sign_in(owner)
    page.goto("/jobs/")
    icon = page.locator('link[rel="icon"]').get_attribute("href")
    assert page.request.get(icon).ok
    answer = page.request.get("/favicon.ico")
    assert answer.ok and answer.headers["content-type"].startswith("image/svg")


def test_continuing_a_conversation_stays_in_it(sign_in, owner, default_persona):
    first = services.job_submit(user=owner, task="What time is it?")
    deadline = time.monotonic() + 15
    while Job.objects.get(pk=first.pk).status != "complete":  # the first turn is over
        assert time.monotonic() < deadline, "the first turn never finished"
        time.sleep(0.05)
    page = sign_in(owner)
    page.goto(f"/sessions/{first.session_id}/")
    expect(page.locator(".conversation")).to_contain_text("What time is it?")
    page.locator("#continue-form").get_by_label("Task").fill("And tomorrow?")
    with page.expect_response(lambda response: response.url.endswith("/continue/")) as sent:
        page.get_by_role("button", name="Send").click()
    assert sent.value.status == 200 and "x-cortex-invalid" not in sent.value.headers, sent.value.text()
    expect(page.locator(".conversation")).to_contain_text("And tomorrow?", timeout=10_000)
    assert page.url.endswith(f"/sessions/{first.session_id}/")
    expect(page.get_by_role("heading", level=1)).to_have_text("What time is it?")
    expect(page.locator(".conversation")).to_contain_text("And tomorrow?")


def test_a_conversation_is_renamed_on_its_page(sign_in, owner, default_persona):
    first = services.job_submit(user=owner, task="What time is it?")
    page: Page = sign_in(owner)
    page.goto(f"/sessions/{first.session_id}/")
    page.locator("details.rename > summary").click()
    page.get_by_label("Title").fill("Clocks")
    page.get_by_role("button", name="Rename").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Clocks")
    expect(page.locator(".flash")).to_contain_text("Conversation renamed.")
