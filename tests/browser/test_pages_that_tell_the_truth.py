"""Badges and text that tell the truth, and pages that never dead-end, in real Chromium against a
running Cortex: the outcome of a job whose call was denied, answers as CommonMark, a GET on a form's
address, a job page without JavaScript, the job list following new jobs, leaving unsaved tool
settings, and the navigation on a phone."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect

from orchestrator import services
from tests.browser.test_web_app import assert_not_reloaded, card, mark_document, submit
from tests.fakes.openai_fake import OpenAIFake

pytestmark = pytest.mark.browser

TROUBLED = "Complete · 1 call denied or failed"


def test_a_job_whose_call_was_denied_says_so_on_its_page_and_in_the_list(sign_in, owner, default_persona):
    page = sign_in(owner)
    job_id = submit(page, "Write a note: sell the car")
    card(page).get_by_role("button", name="Deny").click()
    badge = page.locator(f"#job-{job_id}-status")
    expect(badge).to_have_text(TROUBLED)  # live, as the job completes
    expect(badge).to_have_class(re.compile(r"\bstatus-complete_with_problems\b"))
    page.reload()
    expect(badge).to_have_text(TROUBLED)

    page.goto("/jobs/")
    expect(page.locator(f"#job-list #job-{job_id}-status")).to_have_text(TROUBLED)
    page.get_by_role("link", name="Calls denied or failed 1").click()
    expect(page).to_have_url(re.compile(r"/jobs/\?status=complete_with_problems$"))
    expect(page.locator("#job-rows .row")).to_have_count(1)
    page.get_by_role("link", name="Complete 0").click()
    expect(page.locator("#job-rows")).to_contain_text("No jobs with this outcome.")


@pytest.fixture
def scripted_model(transactional_db, owner) -> Iterator[OpenAIFake]:
    with OpenAIFake() as model:
        profile = services.profile_save(by=owner, owner=owner, name="scripted", provider="openai", model="gpt-4o-mini",
                                        base_url=model.base_url, api_key="sk-test")
        services.role_assign(by=owner, owner=owner, role="orchestrator", profile_id=profile.pk)
        yield model


def test_a_list_in_an_answer_is_shown_as_a_list(sign_in, owner, default_persona, scripted_model):
    scripted_model.script_text("Here is what I found:\n- apples\n- pears\n\n```\nx < y\n```\n\n"
                               "<img src=x onerror=alert(1)>")
    page = sign_in(owner)
    page.goto("/jobs/")
    page.get_by_role("textbox", name="Task").fill("List the fruit")
    page.get_by_label("Answer by the chat model").uncheck()
    page.get_by_role("button", name="Run task").click()
    answer = page.locator("#job-answer .prose")
    expect(answer.locator("ul > li")).to_have_text(["apples", "pears"])
    expect(answer.locator("pre code")).to_have_text("x < y\n")
    expect(answer.locator("img")).to_have_count(0)
    expect(page.locator("#job-meta")).to_contain_text("OpenAI-compatible · gpt-4o-mini")


def test_a_get_on_a_form_address_shows_the_page_it_belongs_to(sign_in, owner, default_persona):
    page = sign_in(owner)
    job_id = submit(page, "Write a note: feed the fish")
    expect(card(page)).to_have_count(1)
    response = page.goto(f"/jobs/{job_id}/cancel/")
    assert response.status == 200
    expect(page).to_have_url(re.compile(rf"/jobs/{job_id}/$"))
    expect(card(page)).to_have_count(1)  # nothing was cancelled
    expect(page.get_by_role("button", name="Cancel job")).to_be_visible()


def test_opening_a_form_address_again_after_its_error_shows_the_page(sign_in, owner):
    page = sign_in(owner, javascript=False, expected_errors=("status of 400",))
    page.goto("/memories/")
    page.get_by_label("What to remember").fill("   ")  # passes the browser's check, not the server's
    page.get_by_role("button", name="Save memory").click()
    expect(page.get_by_text("This field is required.")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/memories/new/$"))  # the error is shown at the form's address
    response = page.goto(page.url)  # from the address bar, a bookmark or the history
    assert response.status == 200
    expect(page).to_have_url(re.compile(r"/memories/$"))
    expect(page.get_by_label("What to remember")).to_be_visible()


def test_without_javascript_the_job_page_says_it_does_not_update_by_itself(sign_in, owner, default_persona):
    page = sign_in(owner, javascript=False)
    page.goto("/jobs/")
    page.get_by_role("textbox", name="Task").fill("Write a note: no scripts here")
    page.get_by_role("button", name="Run task").click()
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f-]{36}/$"))
    note = page.locator("#no-live-updates")
    expect(note).to_be_visible()
    expect(note).to_contain_text("does not update by itself")
    expect(page.locator("#job-stream")).to_be_hidden()  # no "Connecting…" that never connects
    for _ in range(50):  # the refresh link is how the page moves on
        if card(page).count():
            break
        page.wait_for_timeout(200)
        note.get_by_role("link", name="Refresh the page").click()
    expect(card(page)).to_have_count(1)


def test_the_job_list_follows_a_job_submitted_elsewhere(sign_in, owner, default_persona, app_server):
    page = sign_in(owner)
    page.goto("/jobs/")
    expect(page.locator("#job-list")).to_contain_text("No jobs yet")
    mark_document(page)
    token = services.token_create(user=owner, name="cron")[1]
    response = httpx.post(f"{app_server.url}/orchestrate", json={"task": "What time is it, from cron?"},
                          headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 202
    job_id = response.json()["job_id"]

    expect(page.locator("#job-rows")).to_contain_text("What time is it, from cron?")
    expect(page.get_by_role("link", name=re.compile(r"^All "))).to_have_text("All 1")
    expect(page.locator(f"#job-{job_id}-status")).to_have_text("Complete")
    expect(page.get_by_role("link", name=re.compile(r"^Complete "))).to_have_text("Complete 1")
    assert_not_reloaded(page)


def test_leaving_unsaved_tool_settings_asks_first(sign_in, owner):
    page = sign_in(owner)
    page.goto("/settings/tools/")
    page.get_by_role("radio", name="Low").check()
    expect(page.locator("#policy-summary")).to_contain_text("not saved yet")
    asked = []

    def answer(dialog) -> None:
        asked.append(dialog.type)
        dialog.dismiss()  # stay

    page.on("dialog", answer)
    page.get_by_role("link", name="Jobs", exact=True).click()
    expect(page).to_have_url(re.compile(r"/settings/tools/$"))
    assert asked == ["beforeunload"]

    page.get_by_role("button", name="Save tool settings").click()  # saving does not ask
    expect(page.get_by_text("Tool settings saved.")).to_be_visible()
    assert asked == ["beforeunload"]


def test_on_a_phone_the_navigation_shows_every_section(sign_in, owner):
    page = sign_in(owner)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/jobs/")
    links = page.locator("nav.mainnav a")
    expect(links).to_have_text([re.compile(r"^Jobs"), re.compile(r"^Confirmations"), re.compile(r"^Sessions"),
                                re.compile(r"^Memory"), re.compile(r"^Activity"), re.compile(r"^Settings")])
    for index in range(links.count()):
        box = links.nth(index).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (index, box)
        assert 0 <= box["y"] and box["y"] + box["height"] <= 844, (index, box)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
