"""Settings → Callbacks and Settings → Notifications, deliveries on the job page, the time a waiting
call has left, the API and admin for all of it: signed in, CSRF-checked, each person's own only,
secrets shown once and never again."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from orchestrator import crypto, services
from orchestrator.delivery import services as delivery_services
from orchestrator.delivery.models import CallbackSecret, ConfirmationDeadline, Delivery, NotificationSettings
from orchestrator.models import Job

pytestmark = pytest.mark.django_db(transaction=True)

HTMX = {"HX-Request": "true"}


def a_delivery(user, job=None, **fields) -> Delivery:
    job = job or Job.objects.create(user=user, task="Summarise the news", orchestrator_model="demo:demo")
    values = {"channel": "callback", "event": "job.finished", "target": "https://hooks.example.org/cortex",
              "body": "{}", "next_attempt_at": timezone.now(), **fields}
    return Delivery.objects.create(user=user, job=job, **values)


# --- Settings → Callbacks ------------------------------------------------------------------------

def test_the_callbacks_page_needs_a_sign_in(client):
    for name in ("settings-callbacks", "settings-notifications"):
        response = client.get(reverse(name))
        assert response.status_code == 302 and "/login/" in response["Location"]
    response = client.post(reverse("callback-secret-rotate"))
    assert response.status_code == 302 and not CallbackSecret.objects.exists()


def test_a_new_secret_is_shown_once_and_stored_encrypted(alice, owner):
    page = alice.get(reverse("settings-callbacks")).content.decode()
    assert 'id="no-secret"' in page and "Create a secret" in page

    response = alice.post(reverse("callback-secret-rotate"))
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    raw = re.search(r'id="new-secret">([^<]+)<', response.content.decode()).group(1)
    stored = CallbackSecret.objects.get(user=owner)
    assert raw not in stored.secret_encrypted and crypto.decrypt(stored.secret_encrypted) == raw

    again = alice.get(reverse("settings-callbacks")).content.decode()
    assert raw not in again and f"{raw[:10]}…" in again and "Rotate the secret" in again


def test_rotating_answers_the_panel_to_htmx(alice):
    response = alice.post(reverse("callback-secret-rotate"), headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 200 and html.lstrip().startswith('<div id="secret-panel"')
    assert "<html" not in html


def test_rotating_takes_a_post_with_a_csrf_token(owner):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(owner)
    assert browser.post(reverse("callback-secret-rotate")).status_code == 403
    assert not CallbackSecret.objects.exists()
    response = browser.get(reverse("callback-secret-rotate"))
    assert response.status_code == 303 and response["Location"] == reverse("settings-callbacks")
    assert not CallbackSecret.objects.exists()


def test_the_callbacks_page_lists_only_ones_own_deliveries(alice, owner, outsider):
    mine = a_delivery(owner, target="https://mine.example.org/hook")
    a_delivery(outsider, target="https://theirs.example.org/hook")
    page = alice.get(reverse("settings-callbacks")).content.decode()
    assert "mine.example.org" in page and f'id="delivery-{mine.pk}"' in page
    assert "theirs.example.org" not in page


# --- Settings → Notifications --------------------------------------------------------------------

def form_data(**changes) -> dict:
    return {"events": ["job.awaiting_confirmation"], "ntfy_enabled": "on", "ntfy_server": "http://127.0.0.1:8080",
            "ntfy_topic": "alice-cortex", "ntfy_token": "", **changes}


def test_notification_settings_are_saved_and_shown_again(alice, owner, settings):
    settings.CORTEX_HTTP_ALLOW_PRIVATE = True
    response = alice.post(reverse("settings-notifications"), form_data(ntfy_token="tk_live_secret"))
    assert response.status_code == 302
    chosen = NotificationSettings.objects.get(user=owner)
    assert chosen.events == ["job.awaiting_confirmation"] and chosen.ntfy_topic == "alice-cortex"
    assert crypto.decrypt(chosen.ntfy_token_encrypted) == "tk_live_secret"

    page = alice.get(reverse("settings-notifications")).content.decode()
    assert "alice-cortex" in page and 'id="ntfy-token-stored"' in page
    assert "tk_live_secret" not in page

    # Saving again without typing the token keeps it; ticking "remove" removes it.
    alice.post(reverse("settings-notifications"), form_data())
    assert crypto.decrypt(NotificationSettings.objects.get(user=owner).ntfy_token_encrypted) == "tk_live_secret"
    alice.post(reverse("settings-notifications"), form_data(ntfy_token_remove="on"))
    assert NotificationSettings.objects.get(user=owner).ntfy_token_encrypted == ""


def test_a_private_ntfy_server_is_refused_with_the_reason_and_nothing_is_saved(alice, owner):
    response = alice.post(reverse("settings-notifications"), form_data())
    assert response.status_code == 400
    assert "cannot be used" in response.content.decode() and "loopback" in response.content.decode()
    assert not NotificationSettings.objects.exists()


def test_the_notifications_page_says_when_email_is_not_set_up(alice, settings):
    settings.MAILERS = {}
    page = alice.get(reverse("settings-notifications")).content.decode()
    assert 'id="email-unavailable"' in page and 'name="email_address"' not in page


def test_the_notifications_page_warns_while_links_point_at_this_machine_only(alice, settings):
    settings.CORTEX_PUBLIC_URL = "http://127.0.0.1:8000"
    assert "CORTEX_PUBLIC_URL" in alice.get(reverse("settings-notifications")).content.decode()
    settings.CORTEX_PUBLIC_URL = "https://cortex.example.org"
    assert "CORTEX_PUBLIC_URL" not in alice.get(reverse("settings-notifications")).content.decode()


def test_the_settings_tabs_lead_to_callbacks_and_notifications(alice):
    page = alice.get(reverse("settings-tokens")).content.decode()
    assert reverse("settings-callbacks") in page and reverse("settings-notifications") in page


# --- The job page and the inbox ------------------------------------------------------------------

def test_the_job_page_lists_the_jobs_deliveries(alice, owner):
    delivery = a_delivery(owner, state="gave_up", attempts=16, last_error="the receiver answered 500")
    page = alice.get(reverse("job-detail", args=[delivery.job_id])).content.decode()
    assert 'id="job-deliveries"' in page and f'id="delivery-{delivery.pk}"' in page
    assert "Given up" in page and "the receiver answered 500" in page


def test_another_persons_job_page_is_a_404(bob, owner):
    delivery = a_delivery(owner)
    assert bob.get(reverse("job-detail", args=[delivery.job_id])).status_code == 404


@pytest.fixture
def waiting_call(owner, engine, default_persona, settings):
    settings.CORTEX_CONFIRMATION_TTL = 600
    job = services.job_submit(user=owner, task="Write a note: buy milk")
    job = async_to_sync(engine.run_until)(job.pk, "awaiting_confirmation")
    return job.tool_calls.get()


def test_the_inbox_and_the_job_page_show_the_time_left(alice, waiting_call):
    for url in (reverse("confirmations"), reverse("job-detail", args=[waiting_call.job_id])):
        page = alice.get(url).content.decode()
        expires = re.search(rf'id="call-{waiting_call.pk}-expires">Expires in <time datetime="([^"]+)" '
                            r'data-countdown>([^<]+)</time>', page)
        assert expires, url
        assert expires.group(2).strip() in ("9\xa0minutes", "10\xa0minutes")


def test_an_expired_call_says_so_on_its_card_and_in_the_timeline(alice, waiting_call):
    ConfirmationDeadline.objects.filter(call=waiting_call).update(expires_at=timezone.now() - timedelta(seconds=1))
    services.confirmation_expire(deadline_id=waiting_call.deadline.pk)
    page = alice.get(reverse("job-detail", args=[waiting_call.job_id])).content.decode()
    assert "by the system: nobody decided within 600 seconds" in page
    assert f'id="call-{waiting_call.pk}-expires"' not in page


def test_the_tools_page_saves_a_per_tool_time_limit(alice, owner):
    page = alice.get(reverse("settings-tools")).content.decode()
    data = {"max_risk": "high"}
    for name in re.findall(r'name="(override_[^"]+)"', page):
        data[name] = "default"
    for name in re.findall(r'name="(confirm_[^"]+)"', page):
        data[name] = "default"
    data["ttl_workspace_write"] = "90"
    response = alice.post(reverse("settings-tools"), data)
    assert response.status_code == 302
    assert owner.tool_policy.confirmation_ttls == {"workspace_write": 90}
    data["ttl_workspace_write"] = "0"
    response = alice.post(reverse("settings-tools"), data)
    assert response.status_code == 400
    owner.tool_policy.refresh_from_db()
    assert owner.tool_policy.confirmation_ttls == {"workspace_write": 90}


# --- The API -------------------------------------------------------------------------------------

def test_the_api_creates_a_secret_answering_it_once(api, owner):
    assert api.get("/callbacks/secret").status_code == 404
    response = api.post("/callbacks/secret")
    assert response.status_code == 201 and response["Cache-Control"] == "no-store"
    raw = response.json()["secret"]
    assert crypto.decrypt(CallbackSecret.objects.get(user=owner).secret_encrypted) == raw
    shown = api.get("/callbacks/secret").json()
    assert "secret" not in shown and shown["prefix"] == raw[:10]


def test_the_api_lists_a_jobs_deliveries_and_hides_other_peoples(api, outsider_api, owner):
    delivery = a_delivery(owner)
    listed = api.get(f"/orchestrate/{delivery.job_id}/deliveries").json()
    assert [item["id"] for item in listed] == [str(delivery.pk)]
    assert listed[0]["state"] == "pending" and "body" not in listed[0]
    assert outsider_api.get(f"/orchestrate/{delivery.job_id}/deliveries").status_code == 404


def test_the_api_reads_and_changes_notification_settings(api, owner, settings):
    settings.CORTEX_HTTP_ALLOW_PRIVATE = True
    assert api.get("/notifications").json()["events"] == []
    response = api.put("/notifications", {"events": ["job.failed"], "ntfy_enabled": True,
                                          "ntfy_server": "http://127.0.0.1:8080", "ntfy_topic": "t",
                                          "ntfy_token": "tk_secret"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["has_ntfy_token"] is True and "tk_secret" not in response.content.decode()
    assert NotificationSettings.objects.get(user=owner).events == ["job.failed"]


@pytest.mark.parametrize(("body", "status"), [
    ({"events": ["job.exploded"]}, 400),
    ({"ntfy_enabled": True, "ntfy_server": "http://10.0.0.5", "ntfy_topic": "t"}, 400),
    ({"unknown_field": 1}, 400),
])
def test_the_api_refuses_bad_notification_settings(api, body, status):
    response = api.put("/notifications", body)
    assert response.status_code == status and response.json()["detail"]
    assert not NotificationSettings.objects.exists()


def test_the_api_needs_a_token(client):
    for path in ("/notifications", "/callbacks/secret"):
        assert client.get(path).status_code == 401
    assert client.post("/callbacks/secret").status_code == 401
    assert not CallbackSecret.objects.exists()


# --- Admin ---------------------------------------------------------------------------------------

@pytest.fixture
def root(django_user_model) -> Client:
    user = django_user_model.objects.create_superuser("root", password="root-password-1")
    client = Client()
    client.force_login(user)
    return client


def test_admin_shows_deliveries_settings_and_secrets_but_never_a_secret(root, owner):
    raw = delivery_services.callback_secret_rotate(user=owner)
    delivery = a_delivery(owner)
    NotificationSettings.objects.create(user=owner, ntfy_token_encrypted=crypto.encrypt("tk_admin_secret"))
    for model in ("delivery", "notificationsettings", "callbacksecret", "confirmationdeadline"):
        assert root.get(reverse(f"admin:delivery_{model}_changelist")).status_code == 200
    secret_page = root.get(reverse("admin:delivery_callbacksecret_change",
                                   args=[CallbackSecret.objects.get().pk])).content.decode()
    assert raw not in secret_page and "fernet1:" not in secret_page
    settings_page = root.get(reverse("admin:delivery_notificationsettings_change",
                                     args=[NotificationSettings.objects.get().pk])).content.decode()
    assert "tk_admin_secret" not in settings_page and "fernet1:" not in settings_page
    assert root.get(reverse("admin:delivery_delivery_change", args=[delivery.pk])).status_code == 200


def test_admin_sends_a_given_up_delivery_again(root, owner):
    given_up = a_delivery(owner, state="gave_up", attempts=16)
    delivered = a_delivery(owner, state="delivered", attempts=1)
    response = root.post(reverse("admin:delivery_delivery_changelist"),
                         {"action": "send_again", "_selected_action": [str(given_up.pk), str(delivered.pk)]})
    assert response.status_code == 302
    given_up.refresh_from_db()
    delivered.refresh_from_db()
    assert given_up.state == "pending" and given_up.attempts == 0
    assert delivered.state == "delivered"


def test_admin_is_read_only_for_deliveries(root, owner):
    delivery = a_delivery(owner)
    assert root.get(reverse("admin:delivery_delivery_add")).status_code == 403
    assert root.post(reverse("admin:delivery_delivery_delete", args=[delivery.pk]), {"post": "yes"}).status_code == 403
    assert Delivery.objects.filter(pk=delivery.pk).exists()
