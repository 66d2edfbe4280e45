"""Schedules and hooks with a callback and a confirmation time limit: every job they start calls
back to the schedule's or hook's address, signed with the owner's callback secret, and a call of
theirs that waits longer than their limit is denied as expired. Both are checked when the schedule
or hook is saved, as POST /orchestrate checks them, so a refused address is said at once."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from orchestrator import services as core_services
from orchestrator.delivery.models import ConfirmationDeadline, Delivery
from orchestrator.models import Job
from orchestrator.triggers import services
from orchestrator.triggers.models import Hook, Schedule
from tests.fakes.receivers import HttpReceiver
from tests.test_callbacks import (  # noqa: F401 (fixtures: private_allowed, receiver, secret)
    delivered, private_allowed, receiver, run_executors_until, secret, verifies)
from tests.test_hooks import sign

pytestmark = pytest.mark.django_db(transaction=True)


def every_minute(user, **fields) -> Schedule:
    return services.schedule_save(user=user, name=fields.pop("name", "Minutely"), cron_expression="* * * * *",
                                  time_zone="UTC", task=fields.pop("task", "Calculate (2+3)*7"), **fields)


def deliver(hook: Hook, secret: str, payload: dict, delivery_id: str = "d-1"):
    body = json.dumps(payload).encode()
    return Client().post(f"/hooks/{hook.slug}", data=body, content_type="application/json",
                         headers={"X-Cortex-Signature": f"sha256={sign(secret, body)}",
                                  "X-Cortex-Delivery": delivery_id})


def the_one_post(receiver: HttpReceiver, job: Job, secret: str):
    assert len(receiver.received) == 1
    post = receiver.received[0]
    assert verifies(secret, post.body, post.headers["x-cortex-signature"])
    assert post.headers["x-cortex-delivery"] == str(Delivery.objects.get(job=job).pk)
    assert post.json()["job_id"] == str(job.pk)
    return post


# --- Callbacks from the jobs they start ------------------------------------------------------------

def test_a_due_schedules_job_calls_back_signed_with_the_persons_secret(owner, secret, receiver, private_allowed,
                                                                      default_persona, settings, tmp_path):
    settings.CORTEX_CLOCK_FILE = str(tmp_path / "now")
    (tmp_path / "now").write_text("2026-03-02T08:59:30+00:00")
    schedule = every_minute(owner, callback_url=f"{receiver.url}/scheduled")
    (tmp_path / "now").write_text("2026-03-02T09:00:05+00:00")
    (run,) = services.schedules_fire_due(owner="executor-a")

    run_executors_until(lambda: delivered(run.job))

    post = the_one_post(receiver, run.job, secret)
    assert post.path == "/scheduled" and post.headers["x-cortex-event"] == "job.finished"
    assert post.json()["status"] == "complete" and "35" in post.json()["response"]
    assert Job.objects.get(pk=run.job_id).options["callback_url"] == schedule.callback_url


def test_run_now_calls_back_too(owner, secret, receiver, private_allowed, default_persona):
    schedule = every_minute(owner, callback_url=receiver.url)
    run = services.schedule_run_now(user=owner, schedule_id=schedule.pk)
    run_executors_until(lambda: delivered(run.job))
    the_one_post(receiver, run.job, secret)


def test_a_hook_deliverys_job_calls_back_signed_with_the_persons_secret(owner, secret, receiver, private_allowed,
                                                                       default_persona):
    hook, hook_secret = services.hook_create(user=owner, slug="sums", task_template="Calculate {payload.sum}",
                                             callback_url=f"{receiver.url}/hooked")
    response = deliver(hook, hook_secret, {"sum": "(2+3)*7"})
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["job_id"])

    run_executors_until(lambda: delivered(job))

    post = the_one_post(receiver, job, secret)
    assert post.path == "/hooked" and post.json()["status"] == "complete"
    # Signed with the person's callback secret, not with the hook's own.
    assert not verifies(hook_secret, post.body, post.headers["x-cortex-signature"])


def test_a_hook_asked_to_calls_back_when_its_job_waits(owner, secret, receiver, private_allowed, default_persona,
                                                       engine):
    from asgiref.sync import async_to_sync

    hook, hook_secret = services.hook_create(user=owner, slug="notes", task_template="Write a note: {payload.text}",
                                             max_risk="medium", callback_url=receiver.url,
                                             callback_on_confirmation=True)
    job_id = deliver(hook, hook_secret, {"text": "buy milk"}).json()["job_id"]
    async_to_sync(engine.run_until)(job_id, "awaiting_confirmation")
    assert Delivery.objects.get(job_id=job_id).event == "job.awaiting_confirmation"


def test_without_a_callback_url_nothing_is_sent(owner, secret, default_persona, engine):
    from asgiref.sync import async_to_sync

    schedule = every_minute(owner)
    job = services.schedule_run_now(user=owner, schedule_id=schedule.pk).job
    async_to_sync(engine.run_until)(job.pk, "complete")
    assert "callback_url" not in Job.objects.get(pk=job.pk).options and not Delivery.objects.exists()


# --- Their own confirmation time limit ----------------------------------------------------------------

def test_a_schedules_time_limit_makes_its_waiting_call_expire(owner, default_persona, settings):
    settings.CORTEX_CONFIRMATION_TTL = None  # no site default: the schedule's own limit alone
    schedule = every_minute(owner, task="Write a note: water the plants", max_risk="medium", confirmation_ttl=2)
    job = services.schedule_run_now(user=owner, schedule_id=schedule.pk).job

    run_executors_until(lambda: Job.objects.get(pk=job.pk).status == "complete")

    call = Job.objects.get(pk=job.pk).tool_calls.get()
    assert call.status == "denied" and call.decided_by is None
    assert call.reason == "expired: nobody decided within 2 seconds"
    assert ConfirmationDeadline.objects.get(call=call).ttl_seconds == 2


def test_a_hooks_time_limit_makes_its_waiting_call_expire(owner, default_persona, settings):
    settings.CORTEX_CONFIRMATION_TTL = None
    hook, hook_secret = services.hook_create(user=owner, slug="notes", task_template="Write a note: {payload.text}",
                                             max_risk="medium", confirmation_ttl=2)
    job = Job.objects.get(pk=deliver(hook, hook_secret, {"text": "buy milk"}).json()["job_id"])

    run_executors_until(lambda: Job.objects.get(pk=job.pk).status == "complete")

    call = Job.objects.get(pk=job.pk).tool_calls.get()
    assert call.status == "denied" and call.reason == "expired: nobody decided within 2 seconds"
    decided = job.events.get(type="tool.decided").data
    assert decided["by"] == "the system" and decided["expired"] is True and decided["ttl_seconds"] == 2


def test_their_limit_holds_the_sites_to_less_but_never_lengthens_it(owner, default_persona, settings, engine):
    from asgiref.sync import async_to_sync

    settings.CORTEX_CONFIRMATION_TTL = 600
    shorter = every_minute(owner, name="shorter", task="Write a note: a", max_risk="medium", confirmation_ttl=30)
    longer = every_minute(owner, name="longer", task="Write a note: b", max_risk="medium", confirmation_ttl=86400)
    limits = []
    for schedule in (shorter, longer):
        job = services.schedule_run_now(user=owner, schedule_id=schedule.pk).job
        job = async_to_sync(engine.run_until)(job.pk, "awaiting_confirmation")
        limits.append(ConfirmationDeadline.objects.get(call=job.tool_calls.get()).ttl_seconds)
    assert limits == [30, 600]


# --- Checked when saved ---------------------------------------------------------------------------------

PRIVATE = ["http://127.0.0.1:9/x", "http://10.1.2.3/x", "http://[::1]/x", "http://169.254.169.254/latest/meta-data",
           "http://localhost/x"]


@pytest.mark.parametrize("url", PRIVATE)
def test_a_private_callback_url_is_refused_when_a_schedule_or_hook_is_saved(owner, secret, url):
    with pytest.raises(core_services.Invalid, match="callback_url cannot be used"):
        every_minute(owner, callback_url=url)
    with pytest.raises(core_services.Invalid, match="callback_url cannot be used"):
        services.hook_create(user=owner, slug="h", task_template="t", callback_url=url)
    assert not Schedule.objects.exists() and not Hook.objects.exists()


def test_an_edit_to_a_private_callback_url_is_refused_and_the_saved_one_kept(owner, secret, private_allowed,
                                                                           receiver, settings):
    schedule = every_minute(owner, callback_url=receiver.url)
    hook, _ = services.hook_create(user=owner, slug="h", task_template="t", callback_url=receiver.url)
    settings.CORTEX_HTTP_ALLOW_PRIVATE = False
    with pytest.raises(core_services.Invalid, match="callback_url cannot be used"):
        every_minute(owner, callback_url="http://10.0.0.1/x", schedule_id=schedule.pk)
    with pytest.raises(core_services.Invalid, match="callback_url cannot be used"):
        services.hook_update(user=owner, slug="h", task_template="t", options={}, max_risk="low", enabled=True,
                             callback_url="http://10.0.0.1/x")
    assert Schedule.objects.get().callback_url == receiver.url and Hook.objects.get().callback_url == receiver.url


def test_a_callback_needs_a_secret_to_sign_with_before_it_is_saved(owner, private_allowed):
    with pytest.raises(core_services.Invalid, match="Settings → Callbacks"):
        every_minute(owner, callback_url="http://127.0.0.1:9/x")
    with pytest.raises(core_services.Invalid, match="Settings → Callbacks"):
        services.hook_create(user=owner, slug="h", task_template="t", callback_url="http://127.0.0.1:9/x")
    assert not Schedule.objects.exists() and not Hook.objects.exists()


@pytest.mark.parametrize(("fields", "refusal"), [
    ({"callback_url": "ftp://example.org/x"}, "callback_url must be an http"),
    ({"callback_on_confirmation": True}, "callback_on_confirmation needs a callback_url"),
    ({"confirmation_ttl": 0}, "confirmation_ttl must be between"),
    ({"confirmation_ttl": 10**9}, "confirmation_ttl must be between"),
])
def test_other_bad_values_are_refused_by_name(owner, secret, fields, refusal):
    with pytest.raises(core_services.Invalid, match=refusal):
        every_minute(owner, **fields)
    with pytest.raises(core_services.Invalid, match=refusal):
        services.hook_create(user=owner, slug="h", task_template="t", **fields)


def test_a_callback_refused_by_the_time_it_fires_starts_no_job_and_says_why(owner, secret, private_allowed,
                                                                          receiver, settings, default_persona):
    schedule = every_minute(owner, callback_url=receiver.url)
    hook, hook_secret = services.hook_create(user=owner, slug="h", task_template="t {payload}",
                                             callback_url=receiver.url)
    settings.CORTEX_HTTP_ALLOW_PRIVATE = False
    run = services.schedule_run_now(user=owner, schedule_id=schedule.pk)
    assert run.job is None and "callback_url cannot be used" in run.error
    response = deliver(hook, hook_secret, {"a": 1})
    assert response.status_code == 422 and "callback_url cannot be used" in response.json()["detail"]
    assert not Job.objects.exists()


def test_a_schedule_whose_callback_is_now_refused_can_be_disabled_not_enabled(alice, owner, secret, private_allowed,
                                                                             receiver, settings):
    schedule = every_minute(owner, callback_url=receiver.url)
    settings.CORTEX_HTTP_ALLOW_PRIVATE = False
    response = alice.post(f"/settings/schedules/{schedule.pk}/enabled/", {"enabled": "false"})
    assert response.status_code == 302
    assert not Schedule.objects.get().enabled and Schedule.objects.get().next_run_at is None
    response = alice.post(f"/settings/schedules/{schedule.pk}/enabled/", {"enabled": "true"}, follow=True)
    assert "The schedule stays disabled: callback_url cannot be used" in response.content.decode()
    assert not Schedule.objects.get().enabled and Schedule.objects.get().callback_url == receiver.url


def test_enabling_and_disabling_keeps_the_callback_and_the_limit(owner, secret, private_allowed, receiver):
    schedule = every_minute(owner, callback_url=receiver.url, callback_on_confirmation=True, confirmation_ttl=90)
    services.schedule_set_enabled(user=owner, schedule_id=schedule.pk, enabled=False)
    services.schedule_set_enabled(user=owner, schedule_id=schedule.pk, enabled=True)
    saved = Schedule.objects.get()
    assert (saved.callback_url, saved.callback_on_confirmation, saved.confirmation_ttl) == (receiver.url, True, 90)


# --- Pages, API, commands, admin -----------------------------------------------------------------------

SCHEDULE_FORM = {"name": "Mornings", "cron": "0 9 * * *", "time_zone": "UTC", "task": "Plan {date}",
                 "max_risk": "low", "chat_role": "chat", "respond_with_final": "on", "enabled": "on"}
HOOK_FORM = {"slug": "deploys", "task_template": "Check deploy {payload.id}", "max_risk": "low", "chat_role": "chat",
             "respond_with_final": "on", "enabled": "on", "max_body_bytes": "65536", "max_per_minute": "10"}


def test_the_schedule_page_saves_and_shows_the_callback_and_the_limit(alice, owner, secret, private_allowed,
                                                                      receiver):
    response = alice.post("/settings/schedules/new/", {**SCHEDULE_FORM, "callback_url": receiver.url,
                                                        "callback_on_confirmation": "on", "confirmation_ttl": "300"})
    assert response.status_code == 302, response.content.decode()
    schedule = Schedule.objects.get()
    assert (schedule.callback_url, schedule.callback_on_confirmation, schedule.confirmation_ttl) == (
        receiver.url, True, 300)
    page = alice.get(f"/settings/schedules/{schedule.pk}/").content.decode()
    assert f'value="{receiver.url}"' in page and 'value="300"' in page
    # Emptied on the page: no callback, no limit of its own.
    alice.post(f"/settings/schedules/{schedule.pk}/", SCHEDULE_FORM)
    schedule.refresh_from_db()
    assert (schedule.callback_url, schedule.callback_on_confirmation, schedule.confirmation_ttl) == ("", False, None)


def test_the_schedule_page_refuses_a_private_callback_url_next_to_the_field(alice, owner, secret):
    response = alice.post("/settings/schedules/new/", {**SCHEDULE_FORM, "callback_url": "http://10.0.0.7/in"})
    assert response.status_code == 400
    page = response.content.decode()
    field = page.split('name="callback_url"')[1].split("</div>")[0]
    assert "callback_url cannot be used" in field and "Plan {date}" in page
    assert not Schedule.objects.exists()


def test_the_hook_pages_save_the_callback_and_the_limit_and_refuse_a_private_address(alice, owner, secret,
                                                                                    settings, receiver):
    refused = alice.post("/settings/hooks/new/", {**HOOK_FORM, "callback_url": "http://192.168.1.1/x"})
    assert refused.status_code == 400 and "callback_url cannot be used" in refused.content.decode()
    assert not Hook.objects.exists()
    created = alice.post("/settings/hooks/new/", {**HOOK_FORM, "confirmation_ttl": "120"})
    assert created.status_code == 200 and Hook.objects.get().confirmation_ttl == 120
    settings.CORTEX_HTTP_ALLOW_PRIVATE = True
    edited = alice.post("/settings/hooks/deploys/", {**HOOK_FORM, "callback_url": receiver.url,
                                                     "callback_on_confirmation": "on"})
    assert edited.status_code == 302
    hook = Hook.objects.get()
    assert (hook.callback_url, hook.callback_on_confirmation, hook.confirmation_ttl) == (receiver.url, True, None)
    assert f'value="{receiver.url}"' in alice.get("/settings/hooks/deploys/").content.decode()


def test_the_api_takes_and_answers_the_callback_and_the_limit(api, owner, secret, private_allowed, receiver):
    created = api.post("/schedules", {"name": "Digest", "cron": "0 18 * * *", "task": "Digest",
                                      "callback_url": receiver.url, "callback_on_confirmation": True,
                                      "confirmation_ttl": 45})
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["callback_url"], body["callback_on_confirmation"], body["confirmation_ttl"]) == (
        receiver.url, True, 45)
    job = Job.objects.get(pk=api.post(f"/schedules/{body['id']}/run").json()["job_id"])
    assert (job.options["callback_url"], job.options["confirmation_ttl"]) == (receiver.url, 45)
    replaced = api.put(f"/schedules/{body['id']}", {"name": "Digest", "cron": "0 18 * * *", "task": "Digest"})
    assert (replaced.json()["callback_url"], replaced.json()["confirmation_ttl"]) == (None, None)


def test_the_api_refuses_a_private_callback_url_and_a_bad_limit(api, owner, secret):
    private = api.post("/schedules", {"name": "x", "cron": "* * * * *", "task": "t",
                                      "callback_url": "http://169.254.169.254/latest"})
    assert private.status_code == 400 and "callback_url cannot be used" in private.json()["detail"]
    too_long = api.post("/schedules", {"name": "x", "cron": "* * * * *", "task": "t", "confirmation_ttl": 0})
    assert too_long.status_code in (400, 422)
    assert not Schedule.objects.exists()


def run_command(name: str, *args: str) -> str:
    out = StringIO()
    call_command(name, *args, stdout=out)
    return out.getvalue()


def test_the_commands_add_with_a_callback_and_a_limit(owner, secret, private_allowed, receiver):
    run_command("schedules", "add", "alice", "0 9 * * *", "UTC", "Plan", "--callback-url", receiver.url,
                "--callback-on-confirmation", "--confirmation-ttl", "60")
    schedule = Schedule.objects.get()
    assert (schedule.callback_url, schedule.callback_on_confirmation, schedule.confirmation_ttl) == (
        receiver.url, True, 60)
    run_command("hooks", "add", "alice", "ci", "--task", "CI {payload}", "--callback-url", receiver.url,
                "--confirmation-ttl", "30")
    hook = Hook.objects.get()
    assert (hook.callback_url, hook.callback_on_confirmation, hook.confirmation_ttl) == (receiver.url, False, 30)


def test_the_commands_refuse_a_private_callback_url(owner, secret):
    with pytest.raises(CommandError, match="callback_url cannot be used"):
        run_command("schedules", "add", "alice", "0 9 * * *", "UTC", "Plan", "--callback-url", "http://10.0.0.1/")
    with pytest.raises(CommandError, match="callback_url cannot be used"):
        run_command("hooks", "add", "alice", "ci", "--task", "t", "--callback-url", "http://10.0.0.1/")
    assert not Schedule.objects.exists() and not Hook.objects.exists()


def test_the_admin_shows_the_callback_and_the_limit(owner, secret, private_allowed, receiver, django_user_model):
    schedule = every_minute(owner, callback_url=receiver.url, confirmation_ttl=77)
    hook, _ = services.hook_create(user=owner, slug="h", task_template="t", callback_url=receiver.url,
                                   confirmation_ttl=88)
    staff = django_user_model.objects.create_superuser("root", password="root-password-1")
    admin = Client()
    admin.force_login(staff)
    page = admin.get(f"/admin/triggers/schedule/{schedule.pk}/change/").content.decode()
    assert receiver.url in page and "77" in page
    page = admin.get(f"/admin/triggers/hook/{hook.pk}/change/").content.decode()
    assert receiver.url in page and "88" in page
    assert admin.get("/admin/triggers/schedule/").status_code == 200
    assert admin.get("/admin/triggers/hook/").status_code == 200
