"""Notifications when someone is needed: a job that waits for a confirmation sends an e-mail (through
an SMTP server that insists on STARTTLS and AUTH) and an ntfy message, each saying what waits and
linking straight to the confirmation; failed and finished jobs notify those who chose so."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import pytest
from asgiref.sync import async_to_sync

from cortex_site.settings import email_from_url
from orchestrator import services
from orchestrator.delivery import services as delivery_services
from orchestrator.delivery.models import Delivery, NotificationSettings
from orchestrator.models import Job
from tests.conftest import free_port
from tests.fakes.receivers import HttpReceiver, NtfyServer, SmtpServer, local_ca
from tests.test_callbacks import run_executors_until, verifies

pytestmark = pytest.mark.django_db(transaction=True)

PUBLIC = "https://cortex.example.org"


@pytest.fixture
def smtp(tmp_path, monkeypatch, settings):
    ca = local_ca(tmp_path / "tls")
    # The mailer verifies the server's certificate against the system's store: this CA is in it.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.ca_file))
    server = SmtpServer(ca=ca, port=free_port()).start()
    settings.MAILERS = {"default": email_from_url(server.url)}
    yield server
    server.stop()


@pytest.fixture
def ntfy():
    server = NtfyServer(token="tk_ntfy_secret_value").start()
    yield server
    server.stop()


@pytest.fixture
def notify(settings):
    settings.CORTEX_HTTP_ALLOW_PRIVATE = True  # the fakes listen on 127.0.0.1
    settings.CORTEX_PUBLIC_URL = PUBLIC
    settings.CORTEX_DELIVERY_BACKOFF_SECONDS = 0.2


def sent(job: Job) -> bool:
    rows = Delivery.objects.filter(job=job)
    return rows.exists() and not rows.filter(state="pending").exists()


def path_of(link: str) -> tuple[str, str]:
    parts = urlsplit(link)
    assert f"{parts.scheme}://{parts.netloc}" == PUBLIC
    return parts.path, parts.fragment


def test_a_waiting_job_sends_an_email_and_an_ntfy_message_each_with_a_working_link(
        owner, alice, smtp, ntfy, notify, engine, default_persona):
    delivery_services.notifications_update(
        user=owner, events=["job.awaiting_confirmation"], email_enabled=True, email_address="alice@example.org",
        ntfy_enabled=True, ntfy_server=ntfy.url, ntfy_topic="alice-cortex", ntfy_token="tk_ntfy_secret_value")
    job = services.job_submit(user=owner, task="Write a note: buy milk")
    job = async_to_sync(engine.run_until)(job.pk, "awaiting_confirmation")
    call = job.tool_calls.get()

    run_executors_until(lambda: sent(job))
    assert set(Delivery.objects.filter(job=job).values_list("channel", "state")) == {("email", "delivered"),
                                                                                      ("ntfy", "delivered")}

    # The e-mail: through STARTTLS and AUTH, to the address chosen, saying what waits.
    assert smtp.logins == ["cortex"]
    [mail] = smtp.messages
    assert mail["To"] == "alice@example.org"
    assert "workspace_write" in mail["Subject"]
    text = mail.get_content()
    assert "workspace_write" in text and "medium risk" in text and "buy milk" in text
    mail_link = re.search(r"https://\S+", text).group(0)

    # The ntfy message: to the topic, with the token, the same link to click.
    [message] = ntfy.messages("alice-cortex")
    assert message.headers["authorization"] == "Bearer tk_ntfy_secret_value"
    assert "workspace_write" in message.headers["title"]
    body = message.body.decode()
    assert "workspace_write" in body and "medium risk" in body
    assert message.headers["click"] == mail_link

    # The link opens the job page on the call's card, with its Approve button.
    path, fragment = path_of(mail_link)
    assert fragment == f"call-{call.pk}"
    page = alice.get(path)
    assert page.status_code == 200
    html = page.content.decode()
    assert f'id="call-{call.pk}"' in html and f'action="/jobs/{job.pk}/calls/{call.pk}/approve/"' in html

    # No secret in either.
    for secret in ("tk_ntfy_secret_value", smtp.password):
        assert secret not in text and secret not in body


def test_a_finished_job_notifies_those_who_chose_so(owner, notify, engine, default_persona):
    ntfy = NtfyServer().start()  # an open server: no token needed
    try:
        delivery_services.notifications_update(user=owner, events=["job.finished"], ntfy_enabled=True,
                                               ntfy_server=ntfy.url, ntfy_topic="done")
        finished = services.job_submit(user=owner, task="Calculate 2+2")
        waiting = services.job_submit(user=owner, task="Write a note: x")
        async_to_sync(engine.run_until)(finished.pk, "complete")
        async_to_sync(engine.run_until)(waiting.pk, "awaiting_confirmation")
        assert list(Delivery.objects.values_list("job_id", "event")) == [(finished.pk, "job.finished")]
        run_executors_until(lambda: sent(finished))
    finally:
        ntfy.stop()
    [message] = ntfy.messages("done")
    assert "authorization" not in message.headers
    assert "Job finished" in message.headers["title"]
    assert f"{PUBLIC}/jobs/{finished.pk}/" == message.headers["click"]


def test_a_failed_job_says_why_in_short(owner, notify):
    delivery_services.notifications_update(user=owner, events=["job.failed"], ntfy_enabled=True,
                                           ntfy_server="http://127.0.0.1:9", ntfy_topic="t")
    job = Job.objects.create(user=owner, task="t", orchestrator_model="demo:demo", status="running")
    from django.db import transaction

    from orchestrator import transitions

    with transaction.atomic():
        transitions.fail(job, "the model (demo) returned an empty answer " + "x" * 5000)
        job.save()
    delivery = Delivery.objects.get(job=job)
    body = json.loads(delivery.body)
    assert delivery.event == "job.failed" and body["title"].startswith("Job failed")
    assert "returned an empty answer" in body["message"] and len(body["message"]) < 600


def test_a_notification_never_carries_the_tools_output(owner, notify, engine, default_persona):
    delivery_services.notifications_update(user=owner, events=["job.finished"], ntfy_enabled=True,
                                           ntfy_server="http://127.0.0.1:9", ntfy_topic="done")
    job = services.job_submit(user=owner, task="Calculate 1234*5678")
    job = async_to_sync(engine.run_until)(job.pk, "complete")
    assert "7006652" in (job.response or "") or "7,006,652" in (job.response or "")
    delivery = Delivery.objects.get(job=job)
    assert "7006652" not in delivery.body and "7,006,652" not in delivery.body


def test_a_webhook_notification_is_signed_like_a_callback(owner, notify, engine, default_persona):
    secret = delivery_services.callback_secret_rotate(user=owner)
    hook = HttpReceiver().start()
    try:
        delivery_services.notifications_update(user=owner, events=["job.awaiting_confirmation"],
                                               webhook_enabled=True, webhook_url=f"{hook.url}/cortex")
        job = services.job_submit(user=owner, task="Write a note: x")
        job = async_to_sync(engine.run_until)(job.pk, "awaiting_confirmation")
        run_executors_until(lambda: sent(job))
    finally:
        hook.stop()
    [post] = hook.received
    assert verifies(secret, post.body, post.headers["x-cortex-signature"])
    assert post.headers["x-cortex-event"] == "job.awaiting_confirmation"
    payload = json.loads(post.body)
    call = job.tool_calls.get()
    assert payload["tools"][0]["name"] == "workspace_write"
    assert payload["tools"][0]["link"] == f"{PUBLIC}/jobs/{job.pk}/#call-{call.pk}"


def test_an_ntfy_server_that_refuses_the_token_keeps_the_message_pending(owner, ntfy, notify, engine,
                                                                         default_persona):
    delivery_services.notifications_update(user=owner, events=["job.finished"], ntfy_enabled=True,
                                           ntfy_server=ntfy.url, ntfy_topic="done", ntfy_token="wrong")
    job = services.job_submit(user=owner, task="Calculate 2+2")
    run_executors_until(lambda: Delivery.objects.filter(job=job, attempts__gte=1).exclude(last_error="").exists())
    delivery = Delivery.objects.get(job=job)
    assert delivery.state == "pending" and delivery.response_status == 401
    assert ntfy.messages("done") == []


def test_nothing_is_sent_for_events_not_chosen(owner, notify, engine, default_persona):
    delivery_services.notifications_update(user=owner, events=["job.failed"], ntfy_enabled=True,
                                           ntfy_server="http://127.0.0.1:9", ntfy_topic="t")
    job = services.job_submit(user=owner, task="Calculate 2+2")
    async_to_sync(engine.run_until)(job.pk, "complete")
    assert not Delivery.objects.exists()


# --- Saving the settings -----------------------------------------------------------------------------

def test_the_ntfy_token_is_stored_encrypted_and_kept_when_not_given_again(owner, notify):
    delivery_services.notifications_update(user=owner, events=[], ntfy_enabled=True, ntfy_server="http://127.0.0.1:9",
                                           ntfy_topic="t", ntfy_token="tk_secret")
    stored = NotificationSettings.objects.get(user=owner)
    assert "tk_secret" not in stored.ntfy_token_encrypted and stored.ntfy_token_encrypted
    delivery_services.notifications_update(user=owner, events=[], ntfy_enabled=True, ntfy_server="http://127.0.0.1:9",
                                           ntfy_topic="t", ntfy_token=None)
    assert NotificationSettings.objects.get(user=owner).ntfy_token_encrypted == stored.ntfy_token_encrypted


@pytest.mark.parametrize("field", ["ntfy_server", "webhook_url"])
@pytest.mark.parametrize("url", ["http://127.0.0.1/x", "http://192.168.1.10/", "http://[fe80::1]/"])
def test_a_private_address_is_refused_for_a_channel(owner, field, url):
    delivery_services.callback_secret_rotate(user=owner)
    extra = {"ntfy_topic": "t"} if field == "ntfy_server" else {}
    with pytest.raises(services.Invalid, match="cannot be used"):
        delivery_services.notifications_update(user=owner, events=[], **{field: url}, **extra)
    assert not NotificationSettings.objects.exists()


def test_email_cannot_be_chosen_where_the_site_has_no_mailer(owner, settings):
    settings.MAILERS = {}
    with pytest.raises(services.Invalid, match="CORTEX_EMAIL_URL"):
        delivery_services.notifications_update(user=owner, events=[], email_enabled=True,
                                               email_address="a@example.org")


@pytest.mark.parametrize(("changes", "message"), [
    ({"events": ["job.exploded"]}, "unknown events"),
    ({"email_enabled": True, "email_address": "not an address"}, "e-mail address"),
    ({"ntfy_enabled": True, "ntfy_server": "http://127.0.0.1:9"}, "topic"),
    ({"ntfy_server": "http://127.0.0.1:9", "ntfy_topic": "a/b"}, "topic"),
    ({"webhook_enabled": True, "webhook_url": "http://127.0.0.1:9"}, "callback secret"),
])
def test_an_incomplete_channel_is_refused_with_a_clear_error(owner, notify, changes, message, settings):
    settings.MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}
    arguments = {"events": [], **changes}
    with pytest.raises(services.Invalid, match=message):
        delivery_services.notifications_update(user=owner, **arguments)


def test_the_email_url_reads_starttls_and_implicit_tls():
    starttls = email_from_url("smtp://u%40x:p%3Ass@mail.example.org:587")["OPTIONS"]
    assert starttls["use_tls"] and not starttls["use_ssl"]
    assert (starttls["host"], starttls["port"], starttls["username"], starttls["password"]) == \
        ("mail.example.org", 587, "u@x", "p:ss")
    implicit = email_from_url("smtps://u:p@mail.example.org")["OPTIONS"]
    assert implicit["use_ssl"] and not implicit["use_tls"] and implicit["port"] == 465
    plain = email_from_url("smtp://localhost:25?starttls=off")["OPTIONS"]
    assert not plain["use_tls"] and not plain["use_ssl"]


@pytest.mark.parametrize("url", ["http://mail.example.org", "smtp://", "smtp://h:99999", "smtp://h?starttls=maybe"])
def test_a_bad_email_url_fails_loudly(url):
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="CORTEX_EMAIL_URL"):
        email_from_url(url)
