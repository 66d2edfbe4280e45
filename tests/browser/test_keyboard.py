"""Keyboard and screen readers, in Chromium: after a decision the focus goes on to the next call
that waits (or to the card's error), the decision is read out in a live region and stays there
long enough to be read, and on a job page Approve comes before "Cancel job"."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.test_decisions import inbox_cards, waiting_job

pytestmark = pytest.mark.browser


def approve_button(card):
    return card.get_by_role("button", name="Approve", exact=True)


def test_after_approving_the_focus_moves_to_the_next_waiting_card_not_its_approve(sign_in, owner, default_persona):
    waiting_job(owner, "Write a note: first")
    waiting_job(owner, "Write a note: second")
    page = sign_in(owner)
    page.goto("/confirmations/")
    expect(inbox_cards(page)).to_have_count(2)
    expect(page.locator(".stream")).to_be_attached()
    first, second = inbox_cards(page).nth(0), inbox_cards(page).nth(1)
    approve_button(first).focus()
    page.keyboard.press("Enter")

    expect(first).to_contain_text("Approved ✓")
    expect(second).to_be_focused()
    announcer = page.get_by_role("status").filter(has_text="Approved ✓")
    expect(announcer).to_have_attribute("aria-live", "polite")
    expect(announcer).to_contain_text("undo is not possible")
    expect(page.locator("#nav-confirmations")).to_have_text("1")  # the stream redrew the inbox...
    expect(inbox_cards(page).nth(1)).to_be_focused()  # ...and the focus stayed
    page.keyboard.press("Enter")  # a second Enter out of habit approves nothing
    page.wait_for_timeout(1_000)
    expect(inbox_cards(page).nth(1)).not_to_contain_text("Approved ✓")
    expect(page.locator("#nav-confirmations")).to_have_text("1")
    second_approve = approve_button(inbox_cards(page).nth(1))
    for _ in range(4):  # its job link first, then its buttons
        page.keyboard.press("Tab")
        if second_approve.evaluate("button => button === document.activeElement"):
            break
    expect(second_approve).to_be_focused()
    page.wait_for_timeout(4_000)
    expect(page.locator("#announcer")).to_contain_text("Approved ✓")  # still there to be read


def test_after_the_last_decision_the_focus_is_on_what_was_decided(sign_in, owner, default_persona):
    waiting_job(owner, "Write a note: only")
    page = sign_in(owner)
    page.goto("/confirmations/")
    card = inbox_cards(page).first
    card.get_by_placeholder("Reason (optional)").fill("not now")
    card.get_by_role("button", name="Deny").focus()
    page.keyboard.press("Enter")
    expect(card.locator(".decision-note")).to_be_focused()
    expect(page.locator("#announcer")).to_contain_text("Denied ✓")
    expect(page.locator("#announcer")).to_contain_text("not now")


def test_after_a_refused_edit_the_focus_is_on_the_error(sign_in, owner, default_persona):
    job = waiting_job(owner, "Write a note: buy milk")
    page = sign_in(owner)
    page.goto(f"/jobs/{job.pk}/")
    card = page.locator("article.confirm-card")
    card.get_by_text("Edit arguments").click()
    card.get_by_label("path").fill("../../etc/passwd")
    card.get_by_role("button", name="Approve with these arguments").click()
    error = card.get_by_role("alert")
    expect(error).to_contain_text("paths may not leave the workspace")
    expect(error).to_be_focused()


def test_on_a_job_page_approve_comes_before_cancel_in_the_tab_order(sign_in, owner, default_persona):
    job = waiting_job(owner, "Write a note: buy milk")
    page = sign_in(owner)
    page.goto(f"/jobs/{job.pk}/")
    expect(page.get_by_role("button", name="Approve", exact=True)).to_be_visible()
    page.get_by_role("link", name="← All jobs").focus()
    reached = []
    for _ in range(40):
        page.keyboard.press("Tab")
        name = page.evaluate("document.activeElement.textContent.trim()")
        if name in ("Approve", "Cancel job"):
            reached.append(name)
        if len(reached) == 2:
            break
    assert reached == ["Approve", "Cancel job"]
