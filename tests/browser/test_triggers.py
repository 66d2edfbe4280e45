"""Settings → Schedules and Settings → Hooks in real Chromium against a running Cortex: a schedule's
next runs shown while its cron expression is typed, saved, run now and followed to its job; a hook
created with its secret shown once, a signed delivery received and listed with its job."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import httpx
import pytest
from playwright.sync_api import expect

from orchestrator import crypto
from orchestrator.triggers.models import Hook, Schedule

pytestmark = pytest.mark.browser


def test_a_schedule_shows_its_next_runs_as_typed_then_runs_now_and_leads_to_its_job(sign_in, owner,
                                                                                    default_persona, screenshot):
    page = sign_in(owner)
    page.goto("/settings/schedules/")
    expect(page.locator(".empty")).to_contain_text("No schedules yet")
    page.get_by_role("link", name="New schedule").click()
    page.get_by_label("Name").fill("Weekday plan")
    cron = page.get_by_label("When (cron)")
    cron.fill("0 25 * * *")
    expect(page.locator("#next-runs")).to_contain_text("not a cron expression")
    cron.fill("30 7 * * 1-5")
    page.get_by_label("Time zone").fill("America/New_York")
    runs = page.locator("#next-runs li")
    expect(runs).to_have_count(5)
    expect(runs.first).to_contain_text("07:30")
    expect(page.locator("#next-runs")).not_to_contain_text("Sat")
    expect(page.locator("#next-runs")).not_to_contain_text("Sun")
    assert not Schedule.objects.exists()  # nothing saved by looking
    page.get_by_label("Task").fill("Plan {weekday}, {date}")
    screenshot(page, "schedule-new")
    page.get_by_role("button", name="Save schedule").click()
    expect(page.locator(".flash")).to_contain_text("Schedule “Weekday plan” saved.")
    expect(page.locator("#offered-tools")).to_contain_text("calculator")
    expect(page.locator("#offered-tools")).not_to_contain_text("workspace_delete")

    page.get_by_role("button", name="Run now").click()
    expect(page.locator(".flash")).to_contain_text("its job is queued")
    page.locator(".runs-table").get_by_role("link").first.click()
    expect(page.locator("#job-origin")).to_contain_text("A schedule: Weekday plan")
    expect(page.locator("h1.job-title")).to_contain_text("Plan ")


def test_without_javascript_the_next_runs_are_shown_by_a_button(sign_in, owner):
    page = sign_in(owner, javascript=False)
    page.goto("/settings/schedules/new/")
    page.get_by_label("Name").fill("Hourly")
    page.get_by_label("When (cron)").fill("0 * * * *")
    page.get_by_label("Task").fill("Check")
    page.get_by_role("button", name="Show the next runs").click()
    expect(page.locator("#next-runs li")).to_have_count(5)
    expect(page.get_by_label("Task")).to_have_value("Check")
    assert not Schedule.objects.exists()


def test_a_hook_shows_its_secret_once_and_lists_a_signed_delivery_with_its_job(sign_in, owner, default_persona,
                                                                             app_server, screenshot):
    page = sign_in(owner)
    page.goto("/settings/hooks/")
    page.get_by_label("Slug").fill("repo-pushes")
    page.get_by_label("Task template").fill("Summarise the push to {payload.repository.full_name}")
    page.get_by_role("button", name="Create hook").click()
    secret_box = page.locator("#hook-secret")
    expect(secret_box).to_contain_text("whsec_")
    expect(secret_box).to_be_in_viewport()  # the page scrolls to it: it is shown only this once
    secret = secret_box.inner_text().strip()
    assert crypto.decrypt(Hook.objects.get().secret_encrypted) == secret
    expect(page.locator("#hook-repo-pushes")).to_contain_text("low")
    screenshot(page, "hook-created")

    body = json.dumps({"repository": {"full_name": "alice/garden"}}).encode()
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    response = httpx.post(f"{app_server.url}/hooks/repo-pushes", content=body,
                          headers={"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={signature}",
                                   "X-GitHub-Delivery": "delivery-42"})
    assert response.status_code == 202
    wrong = httpx.post(f"{app_server.url}/hooks/repo-pushes", content=body,
                       headers={"X-Hub-Signature-256": "sha256=" + "0" * 64})
    assert wrong.status_code == 401

    page.goto("/settings/hooks/")
    expect(page.locator("#hook-secret")).to_have_count(0)  # never shown again
    page.get_by_role("link", name="repo-pushes").click()
    table = page.locator(".deliveries-table")
    expect(table).to_contain_text("delivery-42")
    expect(table).to_contain_text("202 · accepted")
    expect(table).to_contain_text("401 · bad or missing signature")
    table.get_by_role("link").first.click()
    expect(page.locator("#job-origin")).to_contain_text("A webhook: repo-pushes")
    expect(page.locator(".full-task, h1.job-title").first).to_contain_text("alice/garden")


def test_the_schedule_form_saves_a_callback_and_a_time_limit_and_its_job_calls_back(sign_in, owner,
                                                                                    default_persona):
    from orchestrator.delivery import services as delivery_services
    from orchestrator.delivery.models import Delivery
    from tests.fakes.receivers import HttpReceiver
    from tests.test_callbacks import verifies

    secret = delivery_services.callback_secret_rotate(user=owner)
    receiver = HttpReceiver().start()
    try:
        page = sign_in(owner)
        page.goto("/settings/schedules/new/")
        page.get_by_label("Name").fill("Sums")
        page.get_by_label("When (cron)").fill("0 6 * * *")
        page.get_by_label("Task", exact=True).fill("Calculate (2+3)*7")
        page.get_by_label("Callback URL").fill(f"{receiver.url}/sums")
        page.get_by_label("Also call back when a job waits for a confirmation").check()
        page.get_by_label("Seconds a call may wait for you").fill("900")
        page.get_by_role("button", name="Save schedule").click()
        expect(page.locator(".flash")).to_contain_text("Schedule “Sums” saved.")
        schedule = Schedule.objects.get()
        assert (schedule.callback_url, schedule.callback_on_confirmation, schedule.confirmation_ttl) == (
            f"{receiver.url}/sums", True, 900)

        page.reload()  # the saved values, as the form shows them again
        expect(page.get_by_label("Callback URL")).to_have_value(f"{receiver.url}/sums")
        expect(page.get_by_label("Seconds a call may wait for you")).to_have_value("900")
        expect(page.get_by_label("Also call back when a job waits for a confirmation")).to_be_checked()

        page.get_by_role("button", name="Run now").click()
        expect(page.locator(".flash")).to_contain_text("its job is queued")
        page.locator(".runs-table").get_by_role("link").first.click()
        expect(page.locator("#job-origin")).to_contain_text("A schedule: Sums")
        deadline = time.monotonic() + 30
        while not Delivery.objects.filter(state="delivered").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        page.reload()
        expect(page.locator("#job-deliveries")).to_contain_text("Delivered")
        post = receiver.received[0]
        assert post.path == "/sums" and verifies(secret, post.body, post.headers["x-cortex-signature"])
        assert post.json()["status"] == "complete"
    finally:
        receiver.stop()
