"""The web app in real Chromium against a running Cortex (web + executor), with the demo model.

Each test walks through what a person does: sign in, run tasks, watch them live, decide on gated
calls, cancel, change tool settings. The README's screenshots come from these walks."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from orchestrator import selectors, services
from orchestrator.models import Job, JobStatus
from tests.fakes.http import ToolCall as FakeCall
from tests.fakes.openai_fake import OpenAIFake

pytestmark = pytest.mark.browser


def submit(page: Page, task: str) -> str:
    """Run a task from the jobs page; returns the job's id once its page is open."""
    page.goto("/jobs/")
    page.get_by_role("textbox", name="Task").fill(task)
    page.get_by_role("button", name="Run task").click()
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f-]{36}/$"))
    return page.url.rstrip("/").rsplit("/", 1)[-1]


def timeline_ids(page: Page) -> list[int]:
    return [int(value.removeprefix("event-")) for value in
            page.locator("#timeline > li").evaluate_all("items => items.map(item => item.id)")]


def mark_document(page: Page) -> None:
    page.evaluate("window.cortexTestMark = 'still the same document'")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.cortexTestMark") == "still the same document"


def card(page: Page):
    return page.locator("#job-confirmations article.confirm-card")


def assert_timeline_matches_the_log(page: Page, job_id: str) -> None:
    """Each of the job's steps shown once, in order. The status badge has its own stream and may
    change first, so wait for the timeline to hold as many entries as the log before comparing."""
    steps = steps_of(job_id)
    expect(page.locator("#timeline > li")).to_have_count(len(steps))
    assert timeline_ids(page) == steps


def steps_of(job_id: str) -> list[int]:
    """The sequence numbers of the job's events the timeline shows (streamed text is not a step)."""
    return list(Job.objects.get(pk=job_id).events.exclude(type__in=("answer.delta", "answer.reset"))
                .order_by("seq").values_list("seq", flat=True))


def test_sign_in_run_a_task_approve_its_call_and_watch_it_live(anonymous: Page, owner, default_persona,
                                                              screenshot):
    page = anonymous
    page.goto("/jobs/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/jobs/$"))
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("alice-password-1")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()

    job_id = submit(page, "Write a note: buy milk")
    mark_document(page)
    expect(card(page)).to_contain_text("workspace_write")
    expect(card(page).locator(".badge.risk-medium")).to_have_text("Medium risk")
    expect(page.locator("#nav-confirmations")).to_have_text("1")
    expect(page.locator("#job-stream")).to_have_attribute("data-state", "live")
    screenshot(page, "confirmation")
    before = len(timeline_ids(page))

    card(page).get_by_role("button", name="Approve", exact=True).click()
    timeline = page.locator("#timeline")
    expect(timeline).to_contain_text("approved by alice")
    expect(timeline.locator(".outcome-succeeded")).to_have_count(1)
    expect(page.locator(f"#job-{job_id}-status")).to_have_text("Complete")
    expect(page.locator("#job-answer")).to_contain_text("notes/demo-note.txt")
    expect(page.locator("#nav-confirmations")).to_have_text("0")
    expect(card(page)).to_have_count(0)
    expect(page.locator("#job-stream")).to_be_hidden()  # a finished job closes its stream
    assert_not_reloaded(page)
    assert_timeline_matches_the_log(page, job_id)
    assert len(timeline_ids(page)) > before
    screenshot(page, "job", full_page=True)


def test_a_low_risk_tool_runs_without_asking(sign_in, owner, default_persona):
    page = sign_in(owner)
    job_id = submit(page, "Calculate (2+3)*7")
    timeline = page.locator("#timeline")
    expect(timeline).to_contain_text("calculator")
    expect(timeline.locator(".verdict-run")).to_have_text("runs")
    expect(page.locator(f"#job-{job_id}-status")).to_have_text("Complete")
    expect(page.locator("#job-answer")).to_contain_text("35")
    expect(card(page)).to_have_count(0)


def test_deny_a_call_with_a_reason(sign_in, owner, default_persona):
    page = sign_in(owner)
    job_id = submit(page, "Write a note: sell the car")
    card(page).get_by_label("Reason for denying (optional)").fill("not without asking me")
    card(page).get_by_role("button", name="Deny").click()
    expect(page.locator("#timeline")).to_contain_text("denied by alice: “not without asking me”")
    expect(page.locator(f"#job-{job_id}-status")).to_have_text("Complete · 1 call denied or failed")
    expect(page.locator("#job-answer")).to_contain_text("failed or was not allowed")
    assert Job.objects.get(pk=job_id).tool_calls.get().reason == "not without asking me"


def test_edit_the_arguments_and_the_edited_call_runs(sign_in, owner, default_persona, workspaces):
    page = sign_in(owner)
    job_id = submit(page, "Write a note: buy milk")
    card(page).get_by_text("Edit arguments").click()
    path = card(page).get_by_label("path")
    path.fill("x" * 1100)
    card(page).get_by_role("button", name="Approve with these arguments").click()
    expect(card(page).get_by_role("alert")).to_contain_text("invalid arguments for workspace_write: path")
    expect(path).to_have_value("x" * 1100)  # what was typed survives the redraw

    path.fill("notes/oat-milk.txt")
    card(page).get_by_label("content").fill("buy oat milk")
    card(page).get_by_role("button", name="Approve with these arguments").click()
    timeline = page.locator("#timeline")
    expect(timeline.locator(".decision-edited")).to_have_count(1)
    expect(timeline).to_contain_text("notes/oat-milk.txt")
    expect(page.locator(f"#job-{job_id}-status")).to_have_text("Complete")
    expect(timeline.locator(".outcome-succeeded")).to_have_count(1)
    assert (workspaces / str(owner.pk) / "notes" / "oat-milk.txt").read_text() == "buy oat milk"


@pytest.fixture
def scripted_model(transactional_db, owner) -> Iterator[OpenAIFake]:
    """Alice's orchestrator is a fake OpenAI-compatible server that each test scripts."""
    with OpenAIFake() as model:
        profile = services.profile_save(by=owner, owner=owner, name="scripted", provider="openai", model="gpt-4o-mini",
                                        base_url=model.base_url, api_key="sk-test")
        services.role_assign(by=owner, owner=owner, role="orchestrator", profile_id=profile.pk)
        yield model


def test_cancel_a_running_job(sign_in, owner, default_persona, scripted_model):
    scripted_model.script_delay(60)
    page = sign_in(owner)
    job_id = submit(page, "Think about it for a long while")
    status = page.locator(f"#job-{job_id}-status")
    expect(status).to_have_text("Running")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel job").click()
    expect(status).to_have_text("Cancelled")
    expect(page.locator("#timeline")).to_contain_text("Cancelled by alice")
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    assert Job.objects.get(pk=job_id).status == JobStatus.CANCELLED


def test_tool_settings_show_their_effect_before_saving_and_persist(sign_in, owner, screenshot):
    page = sign_in(owner)
    page.goto("/settings/tools/")
    note = page.locator("#effective-workspace_write")
    fetch = page.locator("#effective-http_get")
    expect(note).to_contain_text("Offered, asks first")

    page.get_by_role("radio", name="Low").check()
    expect(note).to_contain_text("Not offered")
    expect(note).to_contain_text("medium risk above low")
    expect(fetch).to_contain_text("Not offered")
    page.get_by_label("Override for http_get").select_option("include")
    expect(fetch).to_contain_text("Offered, asks first")
    expect(fetch).to_contain_text("Medium risk asks by default")
    page.get_by_label("Confirmation for calculator").select_option("ask")
    expect(page.locator("#effective-calculator")).to_contain_text("Offered, asks first")
    expect(page.locator("#policy-summary")).to_contain_text("not saved yet")
    screenshot(page, "tools-settings", full_page=True)

    page.get_by_role("button", name="Save tool settings").click()
    expect(page.get_by_text("Tool settings saved.")).to_be_visible()
    page.reload()
    expect(page.get_by_role("radio", name="Low")).to_be_checked()
    expect(page.get_by_label("Override for http_get")).to_have_value("include")
    expect(page.get_by_label("Confirmation for calculator")).to_have_value("ask")
    expect(note).to_contain_text("Not offered")
    policy = selectors.risk_policy_for_user(owner)
    assert (policy.max_risk, dict(policy.overrides), dict(policy.confirmations)) == (
        "low", {"http_get": "include"}, {"calculator": "ask"})


def test_a_second_user_sees_none_of_the_first_users_jobs(sign_in, owner, outsider, default_persona):
    alice = sign_in(owner)
    job_id = submit(alice, "Write a note: the safe code is 1234")
    expect(card(alice)).to_have_count(1)

    bob = sign_in(outsider, expected_errors=("status of 404",))
    bob.goto("/jobs/")
    expect(bob.locator("#job-list")).to_contain_text("No jobs yet")
    expect(bob.locator("#nav-confirmations")).to_have_text("0")
    bob.goto("/confirmations/")
    expect(bob.locator("#inbox-list")).to_contain_text("Nothing waits for you")
    response = bob.goto(f"/jobs/{job_id}/")
    assert response.status == 404
    expect(bob.get_by_role("heading", name="Not found")).to_be_visible()
    assert "1234" not in bob.content()

    # Alice's live updates do not reach Bob's open pages either.
    bob.goto("/confirmations/")
    card(alice).get_by_role("button", name="Approve", exact=True).click()
    expect(alice.locator(f"#job-{job_id}-status")).to_have_text("Complete")
    expect(bob.locator("#inbox-list")).to_contain_text("Nothing waits for you")
    expect(bob.locator("#nav-confirmations")).to_have_text("0")


def test_a_reload_mid_job_loses_nothing(sign_in, owner, default_persona):
    page = sign_in(owner)
    job_id = submit(page, "Write a note: water the plants")
    expect(card(page)).to_have_count(1)
    page.reload()
    expect(page.locator("#job-stream")).to_have_attribute("data-state", "live")
    assert timeline_ids(page) == steps_of(job_id) == list(range(1, Job.objects.get(pk=job_id).last_seq + 1))

    card(page).get_by_role("button", name="Approve", exact=True).click()
    expect(page.locator(f"#job-{job_id}-status")).to_have_text("Complete")
    assert_timeline_matches_the_log(page, job_id)


def test_a_lost_connection_resumes_after_the_last_event_seen(sign_in, owner, default_persona, app_server,
                                                             scripted_model):
    # The model takes a moment, so the page is rendered before the job gets far.
    scripted_model.script_tool_calls(FakeCall("workspace_write", {"path": "notes/cat.txt", "content": "feed the cat"}),
                                     delay=1.0)
    scripted_model.script_text("The note is written.")
    # While the server is down the socket fails, and htmx logs the error event it got.
    page = sign_in(owner, expected_errors=("WebSocket connection to", "[object Event]"))
    job_id = submit(page, "Write a note: feed the cat")
    mark_document(page)
    expect(card(page)).to_have_count(1)
    opened_after = int(page.locator("[ws-connect*='/html/']").get_attribute("ws-connect").rsplit("=", 1)[1])
    seen = int(page.locator("#job-cursor").get_attribute("data-after"))
    assert opened_after < seen  # the stream delivered events since the page was rendered

    app_server.restart()  # every socket drops; the page reconnects after the last event it applied
    expect(page.locator("#job-stream")).to_have_attribute("data-state", "live", timeout=15_000)
    card(page).get_by_role("button", name="Approve", exact=True).click()
    expect(page.locator(f"#job-{job_id}-status")).to_have_text("Complete")
    assert_not_reloaded(page)
    assert_timeline_matches_the_log(page, job_id)  # each event once, none missing


def test_deciding_twice_in_two_tabs_gives_a_clear_message(sign_in, owner, default_persona):
    first = sign_in(owner)
    job_id = submit(first, "Write a note: call the plumber")
    expect(card(first)).to_have_count(1)
    # A second tab without JavaScript: plain forms, no live updates, so its card stays stale.
    second = sign_in(owner, javascript=False)
    second.goto(f"/jobs/{job_id}/")
    expect(second.locator("#job-confirmations")).to_contain_text("workspace_write")

    card(first).get_by_role("button", name="Approve", exact=True).click()
    expect(first.locator(f"#job-{job_id}-status")).to_have_text("Complete")
    second.get_by_role("button", name="Deny").click()
    expect(second.locator(".flash")).to_have_text("This call was already approved by alice; nothing was changed.")
    expect(second.locator(f"#job-{job_id}-status")).to_have_text("Complete")


def reload_until(page: Page, ready) -> None:
    """Without JavaScript nothing updates by itself: look again, as a person would."""
    for _ in range(50):
        if ready():
            return
        page.wait_for_timeout(200)
        page.reload()
    raise AssertionError("the page never got there")


def test_forms_work_without_javascript(sign_in, owner, default_persona):
    page = sign_in(owner, javascript=False)
    page.goto("/jobs/")
    page.get_by_role("textbox", name="Task").fill("Write a note: no scripts needed")
    page.get_by_role("button", name="Run task").click()
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f-]{36}/$"))
    job_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    reload_until(page, lambda: card(page).count() == 1)
    card(page).get_by_role("button", name="Approve", exact=True).click()
    expect(page.locator(".flash")).to_contain_text("workspace_write: approved")
    status = page.locator(f"#job-{job_id}-status")
    reload_until(page, lambda: status.inner_text() == "Complete")
    expect(page.locator("#job-answer")).to_contain_text("notes/demo-note.txt")
