"""Decisions bound to what the person saw, in Chromium: a second click where Approve was never
approves another job's call, a card whose call changed underneath is refused, and an edited path
that would leave the workspace is refused on the card."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import Page, expect

from orchestrator import services
from orchestrator.models import Job, ToolCall

pytestmark = pytest.mark.browser


def waiting_job(owner, task: str) -> Job:
    """A job of `owner`'s that the server's executor runs until it waits for a decision."""
    job = services.job_submit(user=owner, task=task)
    deadline = time.monotonic() + 15
    while Job.objects.get(pk=job.pk).status != "awaiting_confirmation":
        assert time.monotonic() < deadline, "the job never asked"
        time.sleep(0.05)
    return Job.objects.get(pk=job.pk)


def inbox_cards(page: Page):
    return page.locator("#inbox-list article.confirm-card")


def decisions() -> dict[str, str]:
    return {call.job.task: call.decision for call in ToolCall.objects.select_related("job")}


def test_a_second_click_where_approve_was_approves_nothing_else(sign_in, owner, default_persona):
    first, second = waiting_job(owner, "Write a note: first"), waiting_job(owner, "Write a note: second")
    page = sign_in(owner)
    page.goto("/confirmations/")
    expect(inbox_cards(page)).to_have_count(2)
    expect(page.locator(".stream")).to_be_attached()
    approve = inbox_cards(page).first.get_by_role("button", name="Approve", exact=True)
    box = approve.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    page.mouse.click(x, y)
    page.mouse.click(x, y)  # a double click
    expect(inbox_cards(page).first).to_contain_text("Approved ✓ — undo is not possible.")
    expect(page.locator("#nav-confirmations")).to_have_text("1")  # the stream has redrawn the inbox
    page.wait_for_timeout(300)
    page.mouse.click(x, y)  # and a late second click, once everything has moved that was going to
    page.wait_for_timeout(500)

    assert decisions() == {first.task: "approved", second.task: ""}
    second_card = inbox_cards(page).filter(has_text="Write a note: second")
    expect(second_card.get_by_role("button", name="Approve", exact=True)).to_be_enabled()
    # The decided card leaves after a few seconds; the other one is still there to decide.
    expect(inbox_cards(page)).to_have_count(1, timeout=15_000)
    expect(inbox_cards(page).first).to_contain_text("Write a note: second")
    assert decisions() == {first.task: "approved", second.task: ""}


def test_a_cards_buttons_are_disabled_while_its_decision_is_on_its_way(sign_in, owner, default_persona):
    waiting_job(owner, "Write a note: slowly")
    page = sign_in(owner)
    page.goto("/confirmations/")
    held = []
    page.route("**/calls/*/approve/", lambda route: held.append(route))  # the answer is held back
    card = inbox_cards(page).first
    card.get_by_role("button", name="Approve", exact=True).click()
    expect(card.locator("fieldset.card-controls")).to_have_attribute("disabled", "")
    for name in ("Approve", "Approve for the rest of this job", "Deny"):
        expect(card.get_by_role("button", name=name, exact=True)).to_be_disabled()
    assert len(held) == 1
    held[0].continue_()
    expect(card).to_contain_text("Approved ✓ — undo is not possible.")
    assert ToolCall.objects.get().decision == "approved"


def test_a_card_whose_call_changed_since_it_was_shown_is_refused(sign_in, owner, default_persona):
    job = waiting_job(owner, "Write a note: buy milk")
    page = sign_in(owner)
    page.goto(f"/jobs/{job.pk}/")
    card = page.locator(f"#call-{job.tool_calls.get().pk}")
    expect(card).to_contain_text("buy milk")
    ToolCall.objects.filter(job=job).update(args={"path": "notes/demo-note.txt", "content": "sell the house"})

    card.get_by_role("button", name="Approve", exact=True).click()
    expect(card.get_by_role("alert")).to_contain_text("is not the call you were shown")
    expect(card.locator("pre.args")).to_contain_text("sell the house")  # what it says now, to decide on
    call = ToolCall.objects.get(job=job)
    assert call.status == "awaiting" and call.decision == ""
    assert not job.events.filter(type="tool.decided").exists()

    card.get_by_role("button", name="Deny").click()  # now on what the card shows
    expect(page.locator("#timeline")).to_contain_text("denied by alice")
    assert ToolCall.objects.get(job=job).decision == "denied"


def test_an_edited_path_that_leaves_the_workspace_is_refused_on_the_card(sign_in, owner, default_persona,
                                                                       workspaces):
    job = waiting_job(owner, "Write a note: buy milk")
    page = sign_in(owner)
    page.goto("/confirmations/")
    card = inbox_cards(page).first
    card.get_by_text("Edit arguments").click()
    path = card.get_by_label("path")
    path.fill("../../etc/passwd")
    card.get_by_role("button", name="Approve with these arguments").click()
    expect(card.get_by_role("alert")).to_contain_text("'../../etc/passwd' contains '..'; paths may not leave the "
                                                      "workspace")
    expect(path).to_have_value("../../etc/passwd")  # what was typed stays, to correct
    call = ToolCall.objects.get(job=job)
    assert call.status == "awaiting" and call.decision == ""

    path.fill("notes/fixed.txt")
    card.get_by_role("button", name="Approve with these arguments").click()
    expect(card).to_contain_text("approved with your arguments")
    call.refresh_from_db()
    assert call.decision == "edited" and call.args["path"] == "notes/fixed.txt"


def test_without_javascript_the_decided_card_keeps_its_place_too(sign_in, owner, default_persona):
    first, second = waiting_job(owner, "Write a note: first"), waiting_job(owner, "Write a note: second")
    page = sign_in(owner, javascript=False)
    page.goto("/confirmations/")
    approve = inbox_cards(page).first.get_by_role("button", name="Approve", exact=True)
    box = approve.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    expect(page.locator(".flash")).to_contain_text("workspace_write: approved")
    expect(inbox_cards(page).first).to_contain_text("Approved ✓ — undo is not possible.")
    expect(inbox_cards(page).first.get_by_role("button", name="Approve", exact=True)).to_be_disabled()
    assert decisions() == {first.task: "approved", second.task: ""}


def test_what_is_typed_into_a_card_survives_the_stream_redrawing_it(sign_in, owner, default_persona, workspaces):
    first, second = waiting_job(owner, "Write a note: first"), waiting_job(owner, "Write a note: second")
    page = sign_in(owner)
    page.goto("/confirmations/")
    expect(inbox_cards(page)).to_have_count(2)
    expect(page.locator(".stream")).to_be_attached()
    card = inbox_cards(page).filter(has_text="Write a note: second")
    card.get_by_text("Edit arguments").click()
    card.get_by_label("path").fill("notes/typed-here.txt")

    services.job_confirm(user=owner, job_id=first.pk)  # decided in another tab: the stream redraws the inbox
    expect(inbox_cards(page).filter(has_text="Write a note: first")).to_contain_text("Approved ✓")
    expect(card.get_by_label("path")).to_have_value("notes/typed-here.txt")
    card.get_by_role("button", name="Approve with these arguments").click()
    expect(card).to_contain_text("approved with your arguments")
    call = ToolCall.objects.get(job=second)
    assert call.decision == "edited" and call.args["path"] == "notes/typed-here.txt"
