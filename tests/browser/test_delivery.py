"""Callbacks and notifications in Chromium: the callback secret shown once, notification settings
saved from their page, a browser notification when a job starts waiting, and the time a waiting
call has left counting down on its card."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from orchestrator import crypto, services
from orchestrator.delivery import services as delivery_services
from orchestrator.delivery.models import CallbackSecret, NotificationSettings
from tests.browser.test_decisions import waiting_job

pytestmark = pytest.mark.browser

# Records each notification the page shows, and shows it as the browser would.
RECORD_NOTIFICATIONS = """
window.__notifications = [];
const Shown = window.Notification;
window.Notification = class extends Shown {
  constructor(title, options) {
    window.__notifications.push({title: title, body: (options || {}).body, tag: (options || {}).tag});
    super(title, options);
  }
};
"""


def test_the_callback_secret_is_shown_once(sign_in, owner):
    page = sign_in(owner)
    page.goto("/settings/")
    page.get_by_role("link", name="Callbacks").click()
    expect(page.locator("#no-secret")).to_be_visible()
    page.get_by_role("button", name="Create a secret").click()
    secret = page.locator("#new-secret")
    expect(secret).to_have_text(re.compile(r"^whsec_\S{20,}$"))
    raw = secret.inner_text()
    assert crypto.decrypt(CallbackSecret.objects.get(user=owner).secret_encrypted) == raw
    expect(page.get_by_role("button", name="Copy")).to_be_visible()

    page.reload()
    expect(page.locator("#new-secret")).to_have_count(0)
    expect(page.locator("#secret-prefix")).to_have_text(f"{raw[:10]}…")
    assert raw not in page.content()


def test_rotating_asks_first_and_replaces_the_secret(sign_in, owner):
    first = delivery_services.callback_secret_rotate(user=owner)
    page = sign_in(owner)
    page.goto("/settings/callbacks/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Rotate the secret").click()
    expect(page.locator("#new-secret")).to_be_visible()
    raw = page.locator("#new-secret").inner_text()
    assert raw != first and crypto.decrypt(CallbackSecret.objects.get(user=owner).secret_encrypted) == raw


def test_notification_settings_are_saved_from_their_page(sign_in, owner):
    page = sign_in(owner)
    page.goto("/settings/notifications/")
    page.get_by_label("A confirmation is waiting").check()
    page.get_by_label("Publish to ntfy").check()
    page.get_by_label("ntfy server").fill("http://127.0.0.1:9")
    page.get_by_label("Topic").fill("alice-cortex")
    page.get_by_label("Access token (optional)").fill("tk_browser_secret")
    page.get_by_label("Show a browser notification").check()
    page.get_by_role("button", name="Save notification settings").click()
    expect(page.locator(".flash")).to_contain_text("Notification settings saved.")

    chosen = NotificationSettings.objects.get(user=owner)
    assert chosen.events == ["job.awaiting_confirmation"] and chosen.ntfy_topic == "alice-cortex"
    assert chosen.browser_enabled and crypto.decrypt(chosen.ntfy_token_encrypted) == "tk_browser_secret"
    expect(page.locator("#ntfy-token-stored")).to_be_visible()
    expect(page.get_by_label("Access token (optional)")).to_have_value("")
    assert "tk_browser_secret" not in page.content()


def test_a_bad_channel_is_refused_on_the_page_and_nothing_is_saved(sign_in, owner):
    page = sign_in(owner, expected_errors=("status of 400",))
    page.goto("/settings/notifications/")
    page.get_by_label("Publish to ntfy").check()
    page.get_by_label("ntfy server").fill("http://127.0.0.1:9")
    page.get_by_role("button", name="Save notification settings").click()
    expect(page.get_by_role("alert")).to_contain_text("enter the ntfy topic")
    assert not NotificationSettings.objects.exists()


def test_a_waiting_job_shows_a_browser_notification_while_a_page_is_open(sign_in, owner, default_persona):
    delivery_services.notifications_update(user=owner, events=["job.awaiting_confirmation"], browser_enabled=True)
    page = sign_in(owner)
    page.context.grant_permissions(["notifications"])
    page.add_init_script(RECORD_NOTIFICATIONS)
    page.goto("/jobs/")
    expect(page.locator(".stream")).to_be_attached()
    page.wait_for_timeout(500)  # the stream is open: what happens from now on is shown

    job = waiting_job(owner, "Write a note: buy milk")
    deadline = time.monotonic() + 10
    while not page.evaluate("() => window.__notifications.length"):
        assert time.monotonic() < deadline, "no notification was shown"
        page.wait_for_timeout(100)
    shown_all = page.evaluate("() => window.__notifications")
    [shown] = shown_all
    assert shown["title"] == f"Waiting for you: {job.task}"
    assert shown["body"].startswith("workspace_write (medium risk):") and "buy milk" in shown["body"]


def test_the_time_a_waiting_call_has_left_counts_down(sign_in, owner, default_persona):
    services.policy_update(user=owner, max_risk="high", overrides={}, confirmations={},
                           confirmation_ttls={"workspace_write": 600})
    job = waiting_job(owner, "Write a note: buy milk")
    call = job.tool_calls.get()
    page = sign_in(owner)
    page.goto("/confirmations/")
    left = page.locator(f"#call-{call.pk}-expires time")
    expect(left).to_have_text(re.compile(r"^(9 min \d+ s|10 min 0 s)$"))
    first = left.inner_text()
    expect(left).not_to_have_text(first, timeout=3000)  # it counts down
