"""A property of the engine, over random policies, allow-lists, groups, standing approvals, model
outputs (hallucinated names, repeated call ids, calls to tools that were not offered) and human
decisions: no call is ever started unless it was offered in its round and either its verdict is
"run" or a recorded human approval covers exactly the arguments it runs with.

The engine's own steps (`jobs_claim`, `next_action`, `record_turn_and_continue`,
`finish_call_and_continue`) are driven here directly, as `engine.loop.drive` drives them, with the
model's turns scripted and the tools' results made up: what is under test is what the engine
marks started, not what the tools do. A separate oracle, written from the rules rather than from
`policy.decide`, says what each round should offer and what each call's verdict should be.
"""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from orchestrator import services
from orchestrator.engine import state
from orchestrator.models import ACTIVE_STATUSES, Job, JobStatus, ToolCall
from orchestrator.policy import CONFIRMATIONS, OVERRIDES
from orchestrator.providers.base import ModelResponse, ModelToolCall
from orchestrator.tools.registry import RISKS, registry

pytestmark = pytest.mark.django_db

EXECUTOR = "property-test"

# Two valid argument sets per tool (a person editing a call picks the other one).
ARGUMENTS = {
    "calculator": [{"expression": "1+1"}, {"expression": "6*7"}],
    "current_time": [{}, {"timezone": "UTC"}],
    "memory_save": [{"content": "likes tea"}, {"content": "likes coffee", "tier": "long"}],
    "workspace_read": [{"path": "a.txt"}, {"path": "b.txt"}],
    "workspace_write": [{"path": "a.txt", "content": "x"}, {"path": "b.txt", "content": "y"}],
    "workspace_delete": [{"path": "a.txt"}, {"path": "b.txt"}],
    "http_get": [{"url": "https://example.com/"}, {"url": "https://example.org/"}],
    "slow_charge": [{"label": "a"}, {"label": "b"}],
    "gated_charge": [{"label": "a"}, {"label": "b"}],
    "audit_export": [{}, {}],
}
TOOLS = sorted(ARGUMENTS)
HALLUCINATED = ["launch_rockets", "Calculator", "calculator ", "", "memory_save\n"]
GROUPS = ["auditors", "ops"]
for _name, _variants in ARGUMENTS.items():  # the table must stay valid as the tools change
    for _args in _variants:
        registry.get(_name).validate(_args)

policies = st.fixed_dictionaries({
    "max_risk": st.sampled_from(RISKS),
    "overrides": st.dictionaries(st.sampled_from(TOOLS), st.sampled_from(OVERRIDES), max_size=4),
    "confirmations": st.dictionaries(st.sampled_from(TOOLS), st.sampled_from(CONFIRMATIONS), max_size=5),
})
allow_lists = st.one_of(st.just([]), st.lists(st.sampled_from(TOOLS), min_size=1, max_size=5, unique=True))


def likely(favoured: set[str], anything: list[str]) -> st.SearchStrategy[str]:
    """A name that is, about half the time, one of `favoured` (else any of `anything`): with names
    drawn uniformly, most calls would be refused and little else would be tried."""
    return st.one_of(st.sampled_from(sorted(favoured & set(TOOLS)) or TOOLS), st.sampled_from(anything))


def model_turns(offered: set[str]) -> st.SearchStrategy[list[list[ModelToolCall]]]:
    """Turns of tool calls to offered tools, other tools and names no tool has."""
    calls = st.builds(
        lambda name, call_id, variant: ModelToolCall(
            id=call_id, name=name,
            arguments="not json" if variant == 2 else json.dumps(ARGUMENTS.get(name, [{}, {}])[variant])),
        name=likely(offered, TOOLS + HALLUCINATED),
        call_id=st.sampled_from(["c1", "c2", ""]),  # repeated within a turn and across turns
        variant=st.sampled_from([0, 0, 1, 2]),
    )
    return st.lists(st.lists(calls, min_size=1, max_size=4), max_size=3)


DECISIONS = ["approve", "approve for the job", "edit", "deny"]


def expected_offer(policy: dict, allow_list: list[str], groups: set[str]) -> set[str]:
    """The tools a round offers, from the rules as the README states them."""
    offered = set()
    for tool in registry:
        override = policy["overrides"].get(tool.name, "default")
        if tool.groups is not None and not tool.groups & ({"user"} | groups):
            continue
        if allow_list and tool.name not in allow_list:
            continue
        if override == "exclude" or policy["confirmations"].get(tool.name) == "never":
            continue
        if override == "include" or RISKS.index(tool.risk) <= RISKS.index(policy["max_risk"]):
            offered.add(tool.name)
    return offered


def expected_verdict(name: str, offered: set[str], policy: dict, approved: list[str]) -> str:
    """What a call to `name` does, from the same rules."""
    if name not in offered:
        return "refuse"
    rule = policy["confirmations"].get(name, "default")
    if name in approved or rule == "run":
        return "run"
    if rule == "ask":
        return "ask"
    return "run" if registry.get(name).risk == "low" else "ask"


@pytest.fixture
def alice(owner):
    for name in GROUPS:
        Group.objects.get_or_create(name=name)
    return owner


@settings(max_examples=120, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(policy=policies, allow_list=allow_lists, groups=st.sets(st.sampled_from(GROUPS)), data=st.data())
def test_no_call_starts_unless_offered_and_run_or_approved_as_it_runs(alice, policy, allow_list, groups, data):
    offered = expected_offer(policy, allow_list, groups)
    # An approval matters only for a tool that would ask: favour those.
    asking = {name for name in offered if expected_verdict(name, offered, policy, []) == "ask"}
    approved = data.draw(st.lists(likely(asking, TOOLS + ["launch_rockets"]), max_size=3, unique=True),
                         label="tools approved earlier for the rest of the job")
    script = data.draw(model_turns(offered), label="the model's turns")
    services.policy_update(user=alice, **policy)
    services.role_assign(by=None, owner=alice, role="orchestrator", profile_id=None, tools=allow_list)
    alice.groups.set(Group.objects.filter(name__in=groups))
    job = services.job_submit(user=alice, task="Do things", options=services.JobOptions(respond_with_final=False))
    # Approvals a person gave earlier in the job ("for the rest of this job").
    Job.objects.filter(pk=job.pk).update(approved_tools=approved)
    offers: dict[int, set[str]] = {}  # round -> the tools the engine offered in it
    approved_args: dict[int, dict] = {}  # call pk -> the arguments a person approved
    started: list[int] = []
    replies = [ModelResponse(text="", tool_calls=calls) for calls in script] + [ModelResponse(text="Done.")]

    try:
        action, memo = _claim(job)
        for _ in range(200):
            if isinstance(action, state.CallModel):
                offers[action.round] = {spec["name"] for spec in action.tools}
                if not action.final_only:
                    assert offers[action.round] == offered
                reply = replies.pop(0) if replies else ModelResponse(text="Done.")
                action = state.record_turn_and_continue(owner=EXECUTOR, job_id=str(job.pk), action=action,
                                                        response=reply, backend="openai:test", backend_label="test",
                                                        memo=memo)
                _check_verdicts(job, offered, policy)
            elif isinstance(action, state.RunTool):
                call = ToolCall.objects.get(pk=action.call_pk)
                # The property.
                assert call.started_at is not None and call.name in offers[call.round]
                assert call.verdict == "run" or (
                    call.decision in ("approved", "edited") and call.decided_by_id == alice.pk
                    and action.args == approved_args[call.pk])
                assert action.args == call.args
                event(f"started after {'a person approved' if call.verdict == 'ask' else 'verdict run'}")
                started.append(call.pk)
                if len(started) < 4 and data.draw(st.booleans(), label="the executor dies while the tool runs"):
                    # Another executor takes the job over and finds the call started but unfinished.
                    state.job_release(owner=EXECUTOR, job_id=str(job.pk))
                    action, memo = _claim(job)
                    continue
                action = state.finish_call_and_continue(owner=EXECUTOR, job_id=str(job.pk), call_pk=call.pk,
                                                        result="ok", is_error=False, memo=memo)
            elif action.reason == "awaiting confirmation":
                for call in ToolCall.objects.filter(job=job, status="awaiting"):
                    assert call.name in offers[call.round] and call.verdict == "ask"
                    approved_args.update(_decide(data, alice, job, call))
                if Job.objects.get(pk=job.pk).status == JobStatus.RUNNING:
                    action, memo = _claim(job)
            else:
                break
        else:
            pytest.fail("the job did not settle")

        for call in ToolCall.objects.filter(job=job):
            if call.started_at is not None:
                assert call.pk in started
            if call.verdict == "refuse":
                assert call.started_at is None and call.status in ("refused", "failed")
            event(f"a call {call.status}")
    finally:
        # Examples share the database: leave nothing for the next one to claim. (Hypothesis may
        # also stop an example at any draw.)
        for active in Job.objects.filter(user=alice, status__in=ACTIVE_STATUSES):
            services.job_cancel(user=alice, job_id=active.pk)


def _claim(job: Job) -> tuple[state.Action, state.Memo]:
    """Take the job up as an executor does: claim it, and start a drive with its own memo."""
    assert state.jobs_claim(owner=EXECUTOR, limit=1) == [str(job.pk)]
    memo = state.Memo()
    return state.next_action(owner=EXECUTOR, job_id=str(job.pk), memo=memo), memo


def _check_verdicts(job: Job, offered: set[str], policy: dict) -> None:
    """Every call of the round just recorded got the verdict the rules give it."""
    job.refresh_from_db()
    if job.status not in (JobStatus.RUNNING, JobStatus.AWAITING_CONFIRMATION):  # the turn was the answer
        return
    for call in ToolCall.objects.filter(job=job, round=job.rounds):
        verdict = expected_verdict(call.name, offered, policy, job.approved_tools)
        if verdict == "refuse":
            assert (call.verdict, call.status) == ("refuse", "refused"), call.name
            assert call.result.endswith(f"The tools offered to you: {', '.join(_in_order(offered)) or 'none'}.")
        elif call.raw_arguments == "not json":
            assert (call.verdict, call.status) == ("refuse", "failed"), call.name
        else:
            # "running": the first ready call of the round was started in the same transaction.
            statuses = ("ready", "running") if verdict == "run" else ("awaiting",)
            assert call.verdict == verdict and call.status in statuses, call.name


def _in_order(names: set[str]) -> list[str]:
    return [tool.name for tool in registry if tool.name in names]


def _decide(data, alice, job: Job, call: ToolCall) -> dict[int, dict]:
    """A person decides on a waiting call; returns the arguments they approved, if they did."""
    choice = data.draw(st.sampled_from(DECISIONS), label=f"decision on {call.name}")
    if choice == "deny":
        services.job_deny(user=alice, job_id=job.pk, tool_call_id=call.call_id, reason="no")
        return {}
    if choice == "edit":
        edited = next((args for args in ARGUMENTS[call.name] if args != call.args), call.args)
        services.job_confirm(user=alice, job_id=job.pk, tool_call_id=call.call_id, args=edited)
        return {call.pk: edited}
    services.job_confirm(user=alice, job_id=job.pk, tool_call_id=call.call_id,
                         remember="job" if choice == "approve for the job" else None)
    return {call.pk: call.args}
