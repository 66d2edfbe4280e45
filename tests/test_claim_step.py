"""A claim takes the first step of the jobs it leases, in its own transaction (`jobs_claim_and_step`):
each step commits with the claim or not at all, and the drive goes on from it without taking it again."""

from collections import Counter

import pytest
from asgiref.sync import sync_to_async

from orchestrator import services
from orchestrator.engine import state
from orchestrator.models import Job, JobStatus
from tests.test_engine_openai import fake  # noqa: F401  (the fixture: a fake Chat Completions server)

pytestmark = pytest.mark.django_db(transaction=True)

EXECUTOR = "host:1:abcd"


def submit(owner, count: int) -> list[str]:
    options = services.JobOptions(respond_with_final=False)
    return [str(services.job_submit(user=owner, task=f"Task {n}", options=options).pk) for n in range(count)]


def statuses(job_ids: list[str]) -> list[str]:
    found = {str(pk): status for pk, status in Job.objects.filter(pk__in=job_ids).values_list("pk", "status")}
    return [found[job_id] for job_id in job_ids]


def running_events(job_id: str) -> int:
    return Job.objects.get(pk=job_id).events.filter(type="job.status", data__status=JobStatus.RUNNING).count()


def test_a_claim_starts_up_to_its_limit_of_jobs_and_leaves_busy_ones_to_their_drive(fake, owner, default_persona):
    ids = submit(owner, state.FIRST_STEPS + 2)
    claimed = state.jobs_claim_and_step(owner=EXECUTOR, limit=len(ids), busy=frozenset({ids[0]}))

    assert [c.job_id for c in claimed] == ids  # oldest first, every one leased
    assert Job.objects.filter(pk__in=ids, lease_owner=EXECUTOR).count() == len(ids)
    stepped = [c for c in claimed if c.action is not None]
    assert [c.job_id for c in stepped] == ids[1:state.FIRST_STEPS + 1]
    assert all(isinstance(c.action, state.CallModel) and c.action.messages[-1]["content"].startswith("Task ")
               for c in stepped)
    # A step taken commits with the claim: the job is running, once, in the executor's name.
    assert statuses(ids) == [JobStatus.QUEUED] + [JobStatus.RUNNING] * state.FIRST_STEPS + [JobStatus.QUEUED]
    assert [running_events(job_id) for job_id in ids] == [0] + [1] * state.FIRST_STEPS + [0]

    # The drive goes on from the claim's memo: its next step finds the job as the claim left it.
    first = stepped[0]
    again = state.next_action(owner=EXECUTOR, job_id=first.job_id, memo=first.memo)
    assert again == first.action and first.memo.job is not None
    assert running_events(first.job_id) == 1


def test_a_first_step_that_fails_leaves_its_job_claimed_and_the_others_started(fake, owner, default_persona,
                                                                               monkeypatch):
    broken, fine = submit(owner, 2)
    take = state._next_action

    def failing(job, owner, *, memo):
        action = take(job, owner, memo=memo)  # its writes (running, the event) are made, then undone
        if str(job.pk) == broken:
            raise RuntimeError("the policy tables are unreadable")
        return action

    monkeypatch.setattr(state, "_next_action", failing)
    claimed = state.jobs_claim_and_step(owner=EXECUTOR, limit=5)

    assert [(c.job_id, c.action is None, c.memo.job is None) for c in claimed] == [(broken, True, True),
                                                                                   (fine, False, False)]
    assert statuses([broken, fine]) == [JobStatus.QUEUED, JobStatus.RUNNING]
    assert Job.objects.filter(pk__in=[broken, fine], lease_owner=EXECUTOR).count() == 2
    assert (running_events(broken), running_events(fine)) == (0, 1)


async def test_the_executor_takes_each_first_step_once(fake, owner, default_persona, engine, monkeypatch):
    for _ in range(3):
        fake.script_text("Done.")
    ids = await sync_to_async(submit)(owner, 3)
    taken: Counter[str] = Counter()
    take = state.next_action

    def counted(*, owner: str, job_id: str, memo: state.Memo | None = None) -> state.Action:
        taken[job_id] += 1
        return take(owner=owner, job_id=job_id, memo=memo)

    monkeypatch.setattr(state, "next_action", counted)
    for job_id in ids:
        job = await engine.run_until(job_id, "complete")
        assert job.response == "Done."
    assert taken == dict.fromkeys(ids, 1)
    assert len(fake.calls) == 3
