"""When a session ends, the page says so by going to the sign-in page, and signing in again brings
the person back to the job they were looking at, with nothing decided behind their back."""

from __future__ import annotations

import re

import pytest
from django.contrib.sessions.models import Session
from playwright.sync_api import Page, expect

from orchestrator.models import Job, JobStatus
from tests.browser.test_web_app import card, submit

pytestmark = pytest.mark.browser


def sign_in_again(page: Page) -> None:
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("alice-password-1")
    page.get_by_role("button", name="Sign in").click()


def test_approving_after_the_session_expired_goes_through_sign_in_and_back(sign_in, owner, default_persona):
    page = sign_in(owner)
    job_id = submit(page, "Write a note: buy milk")
    expect(card(page)).to_contain_text("workspace_write")
    Session.objects.all().delete()  # the session expired and was cleared

    card(page).get_by_role("button", name="Approve", exact=True).click()
    expect(page).to_have_url(re.compile(rf"/login/\?next=%2Fjobs%2F{job_id}%2F$"))
    expect(page.locator("#job-confirmations")).to_have_count(0)  # no sign-in page inside a card
    assert Job.objects.get(pk=job_id).status == JobStatus.AWAITING_CONFIRMATION

    sign_in_again(page)
    expect(page).to_have_url(re.compile(rf"/jobs/{job_id}/$"))
    expect(card(page)).to_contain_text("workspace_write")
    card(page).get_by_role("button", name="Approve", exact=True).click()
    expect(page.locator(f"#job-{job_id}-status")).to_have_text("Complete")


def test_signing_out_in_another_tab_sends_this_one_to_sign_in(sign_in, owner, default_persona):
    page = sign_in(owner)
    job_id = submit(page, "Write a note: call mum")
    expect(page.locator("#job-stream")).to_have_attribute("data-state", "live")

    other = page.context.new_page()
    other.goto("/jobs/")
    other.get_by_role("button", name="Sign out").click()
    expect(other).to_have_url(re.compile(r"/login/"))

    expect(page).to_have_url(re.compile(rf"/login/\?next=/jobs/{job_id}/$"))
    sign_in_again(page)
    expect(page).to_have_url(re.compile(rf"/jobs/{job_id}/$"))
