"""Confirmations that expire: a call that waits longer than its time limit is denied by the system,
with a reason that says so and after how long; the model is told and the job goes on. A deadline
fires once, and a person's approval racing it either wins entirely or gets 409."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from orchestrator import dashboard, selectors, services
from orchestrator.delivery import outbox
from orchestrator.delivery.models import ConfirmationDeadline
from orchestrator.delivery.periodic import confirmations_expire
from orchestrator.models import Job, ToolCall
from tests.test_callbacks import run_executors_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def waiting(owner, engine, default_persona):
    def make(task: str = "Write a note: buy milk") -> tuple[Job, ToolCall]:
        job = services.job_submit(user=owner, task=task)
        job = async_to_sync(engine.run_until)(job.pk, "awaiting_confirmation")
        return job, job.tool_calls.get()
    return make


def overdue(call: ToolCall) -> ConfirmationDeadline:
    """Move the call's deadline into the past, as if its time had run out."""
    ConfirmationDeadline.objects.filter(call=call).update(expires_at=timezone.now() - timedelta(seconds=1))
    return ConfirmationDeadline.objects.get(call=call)


def test_with_a_ttl_of_two_seconds_the_call_is_denied_as_expired_and_the_job_completes(owner, waiting, settings):
    settings.CORTEX_CONFIRMATION_TTL = 2
    job, call = waiting()
    deadline = ConfirmationDeadline.objects.get(call=call)
    assert deadline.ttl_seconds == 2

    run_executors_until(lambda: Job.objects.get(pk=job.pk).status == "complete")

    call.refresh_from_db()
    assert call.status == "denied" and call.decision == "denied" and call.decided_by is None
    assert call.reason == "expired: nobody decided within 2 seconds"
    assert "within 2 seconds" in call.result and "expired" in call.result
    job.refresh_from_db()
    # The model was told: the tool's result in the transcript says the call expired.
    told = [m for m in job.transcript if m.get("role") == "tool"]
    assert told and "expired" in told[0]["content"]
    decided = job.events.get(type="tool.decided").data
    assert decided["by"] == "the system" and decided["expired"] is True and decided["ttl_seconds"] == 2
    assert ConfirmationDeadline.objects.get(call=call).expired
    # The activity dashboard tells it apart from a person's denial.
    figures = dashboard.activity(selectors.activity_scope(owner), days=7)
    assert figures.calls_by_tool["workspace_write"]["expired"] == 1
    assert figures.calls_by_tool["workspace_write"]["denied"] == 0


def test_without_a_ttl_nothing_expires(waiting, settings):
    settings.CORTEX_CONFIRMATION_TTL = None
    _, call = waiting()
    assert not ConfirmationDeadline.objects.filter(call=call).exists()


def test_a_deadline_fires_once(owner, waiting, settings):
    settings.CORTEX_CONFIRMATION_TTL = 60
    job, call = waiting()
    deadline = overdue(call)
    assert services.confirmation_expire(deadline_id=deadline.pk) is True
    assert services.confirmation_expire(deadline_id=deadline.pk) is False
    assert confirmations_expire(owner="another executor") == 0
    assert Job.objects.get(pk=job.pk).events.filter(type="tool.decided").count() == 1


def test_the_periodic_tick_expires_only_what_is_due(owner, waiting, settings):
    settings.CORTEX_CONFIRMATION_TTL = 3600
    _, later = waiting()
    _, due = waiting()
    overdue(due)
    assert confirmations_expire(owner="x") == 1
    assert ToolCall.objects.get(pk=due.pk).status == "denied"
    assert ToolCall.objects.get(pk=later.pk).status == "awaiting"


def test_an_approval_before_the_expiry_wins_entirely(owner, waiting, settings):
    settings.CORTEX_CONFIRMATION_TTL = 60
    job, call = waiting()
    services.job_confirm(user=owner, job_id=job.pk, tool_call_id=call.call_id)
    deadline = overdue(call)
    assert services.confirmation_expire(deadline_id=deadline.pk) is False
    call.refresh_from_db()
    assert call.status == "ready" and call.decided_by == owner and call.decision == "approved"


def test_an_approval_after_the_expiry_gets_409_and_changes_nothing(owner, waiting, settings):
    settings.CORTEX_CONFIRMATION_TTL = 60
    job, call = waiting()
    assert services.confirmation_expire(deadline_id=overdue(call).pk) is True
    seq = Job.objects.get(pk=job.pk).last_seq
    with pytest.raises(services.Conflict):
        services.job_confirm(user=owner, job_id=job.pk, tool_call_id=call.call_id, args_digest=call.args_digest)
    call.refresh_from_db()
    assert call.status == "denied" and call.decided_by is None
    assert Job.objects.get(pk=job.pk).last_seq == seq


def test_an_approval_through_the_api_after_the_expiry_is_a_409(api, owner, waiting, settings):
    settings.CORTEX_CONFIRMATION_TTL = 60
    job, call = waiting()
    services.confirmation_expire(deadline_id=overdue(call).pk)
    response = api.post(f"/orchestrate/{job.pk}/confirm", {"tool_call_id": call.call_id})
    assert response.status_code == 409


def test_a_simultaneous_approval_and_expiry_never_both_take_effect(owner, waiting, settings):
    settings.CORTEX_CONFIRMATION_TTL = 60
    for _ in range(4):
        job, call = waiting()
        deadline = overdue(call)
        start = threading.Barrier(2)
        outcome: dict[str, object] = {}

        def approve() -> None:
            start.wait()
            try:
                services.job_confirm(user=owner, job_id=job.pk, tool_call_id=call.call_id)
                outcome["approved"] = True
            except services.Conflict:
                outcome["approved"] = False
            finally:
                from django.db import connection
                connection.close()

        def expire() -> None:
            start.wait()
            try:
                outcome["expired"] = services.confirmation_expire(deadline_id=deadline.pk)
            finally:
                from django.db import connection
                connection.close()

        threads = [threading.Thread(target=approve), threading.Thread(target=expire)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert outcome["approved"] != outcome["expired"], outcome
        call.refresh_from_db()
        decisions = list(Job.objects.get(pk=job.pk).events.filter(type="tool.decided").values_list("data", flat=True))
        assert len(decisions) == 1
        if outcome["approved"]:
            assert call.decision == "approved" and call.decided_by == owner and call.status == "ready"
        else:
            assert call.decision == "denied" and call.decided_by is None and call.status == "denied"


# --- Which limit applies ---------------------------------------------------------------------------

def test_a_per_tool_limit_in_the_policy_replaces_the_site_default(owner, waiting, settings):
    settings.CORTEX_CONFIRMATION_TTL = 3600
    services.policy_update(user=owner, max_risk="high", overrides={}, confirmations={},
                           confirmation_ttls={"workspace_write": 30})
    _, call = waiting()
    assert ConfirmationDeadline.objects.get(call=call).ttl_seconds == 30


def test_a_per_tool_limit_applies_without_a_site_default(owner, waiting, settings):
    settings.CORTEX_CONFIRMATION_TTL = None
    services.policy_update(user=owner, max_risk="high", overrides={}, confirmations={},
                           confirmation_ttls={"workspace_write": 45})
    _, call = waiting()
    deadline = ConfirmationDeadline.objects.get(call=call)
    assert deadline.ttl_seconds == 45
    assert timedelta(seconds=40) < deadline.expires_at - call.created_at < timedelta(seconds=60)


def test_a_jobs_own_limit_holds_it_to_less_than_the_sites(owner, engine, default_persona, settings):
    settings.CORTEX_CONFIRMATION_TTL = 3600
    job = services.job_submit(user=owner, task="Write a note: x", confirmation_ttl=5)
    job = async_to_sync(engine.run_until)(job.pk, "awaiting_confirmation")
    assert ConfirmationDeadline.objects.get(call=job.tool_calls.get()).ttl_seconds == 5


@pytest.mark.parametrize("seconds", [0, -1, 10**9, True, "5"])
def test_a_bad_job_limit_is_refused(owner, default_persona, seconds):
    with pytest.raises(services.Invalid, match="confirmation_ttl"):
        services.job_submit(user=owner, task="Write a note: x", confirmation_ttl=seconds)
    assert not Job.objects.exists()


@pytest.mark.parametrize(("site", "tool", "job", "expected"), [
    (None, None, None, None), (60, None, None, 60), (60, 10, None, 10), (None, 10, None, 10),
    (60, None, 30, 30), (60, 90, 120, 90), (None, None, 15, 15), (20, None, 600, 20),
])
def test_the_limit_is_the_tools_or_the_sites_held_to_the_jobs_own(settings, site, tool, job, expected):
    settings.CORTEX_CONFIRMATION_TTL = site
    overrides = {"workspace_write": tool} if tool else {}
    assert outbox.ttl_for(tool="workspace_write", overrides=overrides, job_ttl=job) == expected


@pytest.mark.parametrize("seconds", [0, -5, 10**9, "60", 1.5, True])
def test_a_bad_per_tool_limit_is_refused(owner, seconds):
    with pytest.raises(services.Invalid):
        services.policy_update(user=owner, max_risk="high", overrides={}, confirmations={},
                               confirmation_ttls={"workspace_write": seconds})


def test_a_limit_for_an_unknown_tool_is_refused(owner):
    with pytest.raises(services.Invalid, match="unknown tools"):
        services.policy_update(user=owner, max_risk="high", overrides={}, confirmations={},
                               confirmation_ttls={"no_such_tool": 60})


def test_saving_the_policy_without_limits_keeps_the_stored_ones(owner):
    services.policy_update(user=owner, max_risk="high", overrides={}, confirmations={},
                           confirmation_ttls={"workspace_write": 60})
    policy = services.policy_update(user=owner, max_risk="medium", overrides={}, confirmations={})
    assert policy.confirmation_ttls == {"workspace_write": 60}
