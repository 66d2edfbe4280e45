"""Completion callbacks: a job submitted with `callback_url` has its JSON POSTed there when it ends,
signed with the person's callback secret, by the executor's periodic tick, retried with backoff
until the receiver takes it, and given up (and marked) after the last attempt."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.utils import timezone

from orchestrator import crypto, services
from orchestrator.delivery import dispatch
from orchestrator.delivery import services as delivery_services
from orchestrator.delivery.models import CallbackSecret, Delivery
from orchestrator.engine.executor import Executor
from orchestrator.models import Job
from tests.conftest import free_port
from tests.fakes.receivers import HttpReceiver

pytestmark = pytest.mark.django_db(transaction=True)


def run_executors_until(condition, *, count: int = 1, timeout: float = 30.0) -> None:
    """Real executors (jobs and periodic work) on one event loop until `condition()` holds."""
    async def main() -> None:
        executors = [Executor(concurrency=10) for _ in range(count)]
        runners = [asyncio.create_task(executor.run()) for executor in executors]
        try:
            async with asyncio.timeout(timeout):
                while not await sync_to_async(condition)():
                    await asyncio.sleep(0.05)
        finally:
            for executor in executors:
                await executor.stop()
            await asyncio.gather(*runners)

    async_to_sync(main)()


def delivered(job: Job) -> bool:
    # One read: with two, a job ending between them (its delivery made pending) would count as delivered.
    states = set(Delivery.objects.filter(job=job).values_list("state", flat=True))
    return bool(states) and Delivery.State.PENDING not in states


def verifies(secret: str, body: bytes, header: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


@pytest.fixture
def private_allowed(settings):
    settings.CORTEX_HTTP_ALLOW_PRIVATE = True  # the receivers listen on 127.0.0.1
    settings.CORTEX_DELIVERY_BACKOFF_SECONDS = 0.2
    settings.CORTEX_DELIVERY_BACKOFF_MAX_SECONDS = 0.5


@pytest.fixture
def secret(owner) -> str:
    return delivery_services.callback_secret_rotate(user=owner)


@pytest.fixture
def receiver():
    server = HttpReceiver().start()
    yield server
    server.stop()


# --- The acceptance --------------------------------------------------------------------------------

def test_the_receiver_gets_one_post_whose_signature_verifies_with_the_persons_secret(
        api, owner, secret, receiver, private_allowed, default_persona):
    response = api.post("/orchestrate", {"task": "Calculate (2+3)*7", "callback_url": f"{receiver.url}/done"})
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["job_id"])

    run_executors_until(lambda: delivered(job), count=2)  # two executors: still one POST

    assert len(receiver.received) == 1
    post = receiver.received[0]
    assert post.path == "/done"
    assert verifies(secret, post.body, post.headers["x-cortex-signature"])
    assert not verifies(secret + "x", post.body, post.headers["x-cortex-signature"])
    assert post.headers["x-cortex-event"] == "job.finished"
    delivery = Delivery.objects.get(job=job)
    assert post.headers["x-cortex-delivery"] == str(delivery.pk)
    assert delivery.state == "delivered" and delivery.response_status == 200
    # The same JSON as GET /orchestrate/<id>.
    assert post.json() == json.loads(json.dumps(api.get(f"/orchestrate/{job.pk}").json()))
    assert post.json()["status"] == "complete" and "35" in post.json()["response"]


def test_a_receiver_down_for_a_while_gets_the_delivery_once_it_is_back(
        api, owner, secret, private_allowed, default_persona):
    port = free_port()  # nothing listens here yet
    response = api.post("/orchestrate", {"task": "Calculate (2+3)*7", "callback_url": f"http://127.0.0.1:{port}/in"})
    job = Job.objects.get(pk=response.json()["job_id"])

    def failed_twice() -> bool:
        return Delivery.objects.filter(job=job, attempts__gte=2, state="pending").exclude(last_error="").exists()

    run_executors_until(failed_twice)
    delivery = Delivery.objects.get(job=job)
    assert "Connect" in delivery.last_error and delivery.delivered_at is None

    back = HttpReceiver(port=port).start()
    try:
        run_executors_until(lambda: delivered(job))
    finally:
        back.stop()
    assert len(back.received) == 1
    assert back.received[0].headers["x-cortex-delivery"] == str(delivery.pk)
    assert verifies(secret, back.received[0].body, back.received[0].headers["x-cortex-signature"])
    assert Delivery.objects.get(pk=delivery.pk).state == "delivered"


def test_a_failing_receiver_is_tried_again_with_the_same_delivery_id(
        api, owner, secret, private_allowed, default_persona):
    flaky = HttpReceiver(statuses=(500, 503, 200)).start()
    try:
        response = api.post("/orchestrate", {"task": "Calculate 1+1", "callback_url": flaky.url})
        job = Job.objects.get(pk=response.json()["job_id"])
        run_executors_until(lambda: delivered(job))
    finally:
        flaky.stop()
    assert [r.headers["x-cortex-delivery"] for r in flaky.received] == [str(Delivery.objects.get(job=job).pk)] * 3
    assert len({r.body for r in flaky.received}) == 1


def test_a_delivery_is_given_up_and_marked_after_the_last_attempt(
        api, owner, secret, private_allowed, default_persona, settings):
    settings.CORTEX_DELIVERY_ATTEMPTS = 2
    refusing = HttpReceiver(statuses=(500,)).start()
    try:
        response = api.post("/orchestrate", {"task": "Calculate 1+1", "callback_url": refusing.url})
        job = Job.objects.get(pk=response.json()["job_id"])
        run_executors_until(lambda: delivered(job))
    finally:
        refusing.stop()
    delivery = Delivery.objects.get(job=job)
    assert delivery.state == "gave_up" and delivery.attempts == 2 and len(refusing.received) == 2
    assert delivery.last_error == "the receiver answered 500"


def test_a_job_that_waits_calls_back_only_when_asked_to(api, owner, secret, receiver, private_allowed,
                                                        default_persona, engine):
    quiet = api.post("/orchestrate", {"task": "Write a note: one", "callback_url": receiver.url}).json()["job_id"]
    asked = api.post("/orchestrate", {"task": "Write a note: two", "callback_url": receiver.url,
                                      "callback_on_confirmation": True}).json()["job_id"]
    async_to_sync(engine.run_until)(quiet, "awaiting_confirmation")
    async_to_sync(engine.run_until)(asked, "awaiting_confirmation")
    assert not Delivery.objects.filter(job_id=quiet).exists()
    delivery = Delivery.objects.get(job_id=asked)
    assert delivery.event == "job.awaiting_confirmation"
    body = json.loads(delivery.body)
    assert body["status"] == "awaiting_confirmation"
    assert [tool["name"] for tool in body["pending_confirmation"]["tools"]] == ["workspace_write"]


def test_a_cancelled_job_calls_back_too(api, owner, secret, receiver, private_allowed, default_persona, engine):
    job_id = api.post("/orchestrate", {"task": "Write a note: x", "callback_url": receiver.url}).json()["job_id"]
    async_to_sync(engine.run_until)(job_id, "awaiting_confirmation")
    assert api.post(f"/orchestrate/{job_id}/cancel").status_code == 200
    delivery = Delivery.objects.get(job_id=job_id)
    assert delivery.event == "job.cancelled" and json.loads(delivery.body)["status"] == "cancelled"


# --- What is accepted ------------------------------------------------------------------------------

def test_a_callback_needs_a_secret_to_sign_with(api, owner, private_allowed, default_persona):
    response = api.post("/orchestrate", {"task": "Calculate 1+1", "callback_url": "http://127.0.0.1:9/x"})
    assert response.status_code == 400 and "Settings → Callbacks" in response.json()["detail"]
    assert not Job.objects.exists()


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "http://10.1.2.3/x", "http://[::1]/x",
                                 "http://169.254.169.254/latest/meta-data", "http://localhost/x"])
def test_a_callback_to_a_private_address_is_refused_and_nothing_is_created(api, owner, secret, url,
                                                                          default_persona):
    response = api.post("/orchestrate", {"task": "Calculate 1+1", "callback_url": url})
    assert response.status_code == 400 and "callback_url cannot be used" in response.json()["detail"]
    assert not Job.objects.exists()


@pytest.mark.parametrize("url", ["ftp://example.org/x", "example.org/x", "http://", "javascript:alert(1)"])
def test_a_callback_url_must_be_http(api, owner, secret, url, default_persona):
    response = api.post("/orchestrate", {"task": "Calculate 1+1", "callback_url": url})
    assert response.status_code == 400 and "callback_url" in response.json()["detail"]
    assert not Job.objects.exists()


def test_on_confirmation_needs_a_url(api, owner, secret, default_persona):
    response = api.post("/orchestrate", {"task": "Calculate 1+1", "callback_on_confirmation": True})
    assert response.status_code == 400 and not Job.objects.exists()


def test_every_connection_is_checked_again_when_it_is_sent(api, owner, secret, receiver, private_allowed,
                                                           default_persona, settings):
    """An address allowed when the job was submitted is refused at delivery time once it is not."""
    response = api.post("/orchestrate", {"task": "Calculate 1+1", "callback_url": receiver.url})
    job = Job.objects.get(pk=response.json()["job_id"])
    settings.CORTEX_HTTP_ALLOW_PRIVATE = False
    settings.CORTEX_DELIVERY_ATTEMPTS = 1
    run_executors_until(lambda: delivered(job))
    delivery = Delivery.objects.get(job=job)
    assert receiver.received == []
    assert delivery.state == "gave_up" and "loopback" in delivery.last_error


# --- The outbox and its lease ------------------------------------------------------------------------

def test_the_callback_row_commits_with_the_jobs_end_and_nothing_is_sent_in_the_step(
        api, owner, secret, receiver, private_allowed, default_persona, engine):
    job_id = api.post("/orchestrate", {"task": "Calculate 1+1", "callback_url": receiver.url}).json()["job_id"]
    # The engine alone (its periodic work not yet run) ends the job: the row waits, nothing was sent.
    async_to_sync(engine.run_until)(job_id, "complete")
    delivery = Delivery.objects.get(job_id=job_id)
    assert delivery.state == "pending" and delivery.attempts == 0 and receiver.received == []


def test_a_delivery_is_claimed_by_one_executor_at_a_time_and_again_after_its_lease(owner, secret, receiver,
                                                                                  private_allowed):
    job = Job.objects.create(user=owner, task="t", orchestrator_model="demo:demo")
    row = Delivery.objects.create(user=owner, job=job, channel="callback", event="job.finished", target=receiver.url,
                                  body="{}", next_attempt_at=timezone.now())
    assert dispatch.deliveries_claim(owner="one", limit=5) == [str(row.pk)]
    assert dispatch.deliveries_claim(owner="two", limit=5) == []
    # Not "one"'s any more: what it sends is not recorded as delivered.
    Delivery.objects.filter(pk=row.pk).update(held_until=timezone.now() - timedelta(seconds=1))
    assert dispatch.deliveries_claim(owner="two", limit=5) == [str(row.pk)]
    assert dispatch.delivery_attempt(owner="one", delivery_id=str(row.pk)) is None
    assert receiver.received == []
    outcome = dispatch.delivery_attempt(owner="two", delivery_id=str(row.pk))
    assert outcome.delivered and Delivery.objects.get(pk=row.pk).attempts == 2


def test_a_delivery_whose_sender_died_is_sent_once_its_lease_runs_out(owner, secret, receiver, private_allowed):
    """An executor claimed it and stopped before it could send: after a restart another one sends it."""
    job = Job.objects.create(user=owner, task="t", orchestrator_model="demo:demo")
    row = Delivery.objects.create(user=owner, job=job, channel="callback", event="job.finished", target=receiver.url,
                                  body='{"status": "complete"}', next_attempt_at=timezone.now())
    assert dispatch.deliveries_claim(owner="gone", limit=1) == [str(row.pk)]
    Delivery.objects.filter(pk=row.pk).update(held_until=timezone.now() - timedelta(seconds=1))

    run_executors_until(lambda: Delivery.objects.get(pk=row.pk).state == "delivered")
    assert len(receiver.received) == 1 and receiver.received[0].headers["x-cortex-delivery"] == str(row.pk)


def test_the_backoff_starts_short_grows_and_is_capped(settings):
    settings.CORTEX_DELIVERY_BACKOFF_SECONDS = 5
    settings.CORTEX_DELIVERY_BACKOFF_MAX_SECONDS = 3600
    waits = [dispatch.backoff(attempt).total_seconds() for attempt in range(1, 16)]
    assert waits[:4] == [5, 10, 20, 40]
    assert waits[-1] == 3600 and waits == sorted(waits)


def test_the_default_schedule_keeps_trying_for_hours(settings):
    attempts = settings.CORTEX_DELIVERY_ATTEMPTS
    total = sum(dispatch.backoff(attempt).total_seconds() for attempt in range(1, attempts))
    assert 3 * 3600 < total < 48 * 3600


def test_the_secret_is_stored_encrypted_and_a_rotation_replaces_it(owner):
    first = delivery_services.callback_secret_rotate(user=owner)
    stored = CallbackSecret.objects.get(user=owner)
    assert first not in stored.secret_encrypted and crypto.decrypt(stored.secret_encrypted) == first
    second = delivery_services.callback_secret_rotate(user=owner)
    assert second != first and crypto.decrypt(CallbackSecret.objects.get(user=owner).secret_encrypted) == second
    assert CallbackSecret.objects.filter(user=owner).count() == 1


def test_a_delivery_is_signed_with_the_secret_current_when_it_is_sent(api, owner, secret, receiver,
                                                                      private_allowed, default_persona):
    job_id = api.post("/orchestrate", {"task": "Calculate 1+1", "callback_url": receiver.url}).json()["job_id"]
    rotated = delivery_services.callback_secret_rotate(user=owner)
    run_executors_until(lambda: delivered(Job.objects.get(pk=job_id)))
    post = receiver.received[0]
    assert verifies(rotated, post.body, post.headers["x-cortex-signature"])
    assert not verifies(secret, post.body, post.headers["x-cortex-signature"])


def test_services_job_submit_stores_the_callback_on_the_job(owner, secret, private_allowed, default_persona):
    job = services.job_submit(user=owner, task="Calculate 1+1", callback_url="http://127.0.0.1:9/x")
    assert job.options["callback_url"] == "http://127.0.0.1:9/x"
    assert job.options["callback_on_confirmation"] is False
