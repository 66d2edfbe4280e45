"""A job's status transitions: each leaves the job consistent, and `FIELDS` is all they change."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from orchestrator import transitions
from orchestrator.models import Job, JobStatus, ToolCall, ToolCallStatus

pytestmark = pytest.mark.django_db

EXECUTOR = "host:1:abcd"


def held_job(owner, **fields) -> Job:
    """A running job an executor holds, with one call waiting for a person."""
    job = Job.objects.create(user=owner, task="Write a note: milk", orchestrator_model="demo:demo",
                             status=JobStatus.RUNNING, started_at=timezone.now(), lease_owner=EXECUTOR,
                             lease_expires_at=timezone.now() + timedelta(seconds=30), **fields)
    ToolCall.objects.create(job=job, call_id="note", round=1, position=0, name="workspace_write", args={},
                            verdict=ToolCall.Verdict.ASK, status=ToolCallStatus.AWAITING)
    return job


def last_status_event(job: Job) -> dict:
    return job.events.filter(type="job.status").order_by("-seq").first().data


TRANSITIONS = {
    "pause": lambda job: transitions.pause(job, awaiting=list(job.tool_calls.all())),
    "resume": transitions.resume,
    "complete": lambda job: transitions.complete(job, response="Done.", backend="demo:demo",
                                                 backend_label="Demo", summary="Done."),
    "fail": lambda job: transitions.fail(job, "the model broke"),
    "cancel": lambda job: transitions.cancel(job, by="alice"),
}


@pytest.mark.parametrize("name", TRANSITIONS)
def test_saving_the_transition_fields_saves_everything_a_transition_changed(owner, name):
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=held_job(owner).pk)
        TRANSITIONS[name](job)
        job.save(update_fields=transitions.FIELDS)
    stored = Job.objects.get(pk=job.pk)
    for field in Job._meta.concrete_fields:
        assert getattr(stored, field.attname) == getattr(job, field.attname), field.name


@pytest.mark.parametrize("name", TRANSITIONS)
def test_every_transition_lets_the_executor_go(owner, name):
    job = held_job(owner)
    with transaction.atomic():
        TRANSITIONS[name](job)
        job.save()
    assert job.lease_owner == "" and job.lease_expires_at is None
    assert last_status_event(job)["status"] == job.status


@pytest.mark.parametrize("name", ["complete", "fail", "cancel"])
def test_a_finished_job_has_a_completion_time_and_no_open_call(owner, name):
    job = held_job(owner)
    with transaction.atomic():
        TRANSITIONS[name](job)
        job.save()
    assert job.is_finished and job.completed_at is not None
    if name != "complete":
        call = job.tool_calls.get()
        assert call.status == ToolCallStatus.CANCELLED and call.is_error and call.result
        assert job.events.filter(type="tool.finished", data__id="note").count() == 1


@pytest.mark.parametrize("name", ["pause", "complete", "fail"])
def test_the_executor_that_made_a_transition_is_on_record(owner, name):
    job = held_job(owner)
    with transaction.atomic():
        TRANSITIONS[name](job)
        job.save()
    assert last_status_event(job)["executor"] == EXECUTOR


def test_only_runnable_jobs_nobody_holds_are_claimed(owner):
    now = timezone.now()
    later, earlier = now + timedelta(minutes=1), now - timedelta(minutes=1)

    def job(status: str, **fields) -> Job:
        return Job.objects.create(user=owner, task=status, orchestrator_model="demo:demo", status=status, **fields)

    claimable = {job(JobStatus.QUEUED).pk,
                 job(JobStatus.RUNNING, lease_owner="gone", lease_expires_at=earlier, claims=1).pk,
                 job(JobStatus.QUEUED, not_before=earlier).pk}
    job(JobStatus.RUNNING, lease_owner="alive", lease_expires_at=later, claims=1)
    job(JobStatus.QUEUED, not_before=later)
    job(JobStatus.AWAITING_CONFIRMATION)
    job(JobStatus.COMPLETE)

    transitions.claim(Job.objects.filter(transitions.claimable(now)), owner=EXECUTOR, now=now)
    held = Job.objects.filter(lease_owner=EXECUTOR)
    assert set(held.values_list("pk", flat=True)) == claimable
    assert all(job.lease_expires_at > now for job in held)
    assert sorted(held.values_list("claims", flat=True)) == [1, 1, 2]

    transitions.release(held)
    assert not Job.objects.filter(lease_owner=EXECUTOR).exists()
    assert Job.objects.filter(pk__in=claimable, lease_expires_at=None).count() == 3


def test_an_executor_claims_runnable_jobs_oldest_first_and_learns_which_it_lost(owner, outsider):
    from orchestrator.engine import state

    def job(status: str, **fields) -> Job:
        return Job.objects.create(user=owner, task=status, orchestrator_model="demo:demo", status=status, **fields)

    first, second, third = job(JobStatus.QUEUED), job(JobStatus.QUEUED), job(JobStatus.QUEUED)
    job(JobStatus.QUEUED, not_before=timezone.now() + timedelta(minutes=1))
    assert state.jobs_claim(owner=EXECUTOR, limit=2) == [str(first.pk), str(second.pk)]
    assert state.jobs_claim(owner="host:2:ef01", limit=5) == [str(third.pk)]
    assert state.jobs_claim(owner=EXECUTOR, limit=5) == []
    held = [str(first.pk), str(second.pk)]
    assert state.jobs_lost(owner=EXECUTOR, job_ids=held) == set()
    # One taken over by another executor, one cancelled: both lost; a job never held is lost too.
    Job.objects.filter(pk=first.pk).update(lease_owner="host:2:ef01")
    Job.objects.filter(pk=second.pk).update(status=JobStatus.CANCELLED)
    assert state.jobs_lost(owner=EXECUTOR, job_ids=[*held, str(third.pk)]) == {*held, str(third.pk)}
    assert state.jobs_lost(owner="host:2:ef01", job_ids=[str(first.pk), str(third.pk)]) == set()
    assert state.jobs_heartbeat(owner="host:2:ef01", job_ids=[str(first.pk), str(second.pk)]) == {str(second.pk)}
