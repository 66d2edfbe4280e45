"""One function, `decide`, says what the model is offered and what each call does."""

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.policy import PolicyContext, PolicyInvalid, RiskPolicy, decide, decide_all
from orchestrator.tools.registry import Tool, ToolRegistry, tool

tools = ToolRegistry()


def _declare(name: str, risk: str, groups=None) -> Tool:
    async def handler(ctx):
        return name

    tool(name=name, category="test", description=name, risk=risk, idempotent=True, groups=groups,
         into=tools)(handler)
    return tools.get(name)


CLOCK = _declare("clock", "low")
WRITE = _declare("write", "medium")
SHELL = _declare("shell", "high")
ADMIN_ONLY = _declare("admin_only", "low", groups=frozenset({"admin"}))
USER = frozenset({"user"})


def context(max_risk="high", overrides=None, confirmations=None, groups=USER, allow_list=(), approved=(),
            origin_max_risk=None):
    return PolicyContext(policy=RiskPolicy(max_risk=max_risk, overrides=overrides or {},
                                           confirmations=confirmations or {}),
                         groups=groups, allow_list=allow_list, approved=approved, origin_max_risk=origin_max_risk)


# Each case: the tool, the inputs, then (offered, why offered or not, action, why that action).
CASES = [
    ("low risk runs by default", CLOCK, context(),
     (True, "low risk within high", "run", "low risk runs by default")),
    ("medium risk asks by default", WRITE, context(),
     (True, "medium risk within high", "ask", "medium risk asks by default")),
    ("high risk asks by default", SHELL, context(),
     (True, "high risk within high", "ask", "high risk asks by default")),
    ("at max_risk is offered", WRITE, context("medium"),
     (True, "medium risk within medium", "ask", "medium risk asks by default")),
    ("above max_risk is not offered", WRITE, context("low"),
     (False, "medium risk above low", "never", "medium risk above low")),
    ("force include beats max_risk", SHELL, context("low", overrides={"shell": "include"}),
     (True, "forced in", "ask", "high risk asks by default")),
    ("force exclude beats max_risk", CLOCK, context(overrides={"clock": "exclude"}),
     (False, "forced out", "never", "forced out")),
    ("a confirmation rule overrides the default", CLOCK, context(confirmations={"clock": "ask"}),
     (True, "low risk within high", "ask", "set to ask")),
    ("run is a confirmation rule too", WRITE, context(confirmations={"write": "run"}),
     (True, "medium risk within high", "run", "set to run")),
    ("never is not offered", CLOCK, context(confirmations={"clock": "never"}),
     (False, "set to never run", "never", "set to never run")),
    ("never beats force include", CLOCK, context(overrides={"clock": "include"}, confirmations={"clock": "never"}),
     (False, "set to never run", "never", "set to never run")),
    ("a tool for other groups is not offered", ADMIN_ONLY, context(overrides={"admin_only": "include"}),
     (False, "not for your groups", "never", "not for your groups")),
    ("a tool for one of your groups is", ADMIN_ONLY, context(groups={"user", "admin"}),
     (True, "low risk within high", "run", "low risk runs by default")),
    ("outside the allow-list is not offered", WRITE, context(allow_list=["clock"], confirmations={"write": "run"}),
     (False, "not on the orchestrator role's tool list", "never", "not on the orchestrator role's tool list")),
    ("outside the allow-list beats force include", SHELL, context(allow_list=["clock"], overrides={"shell": "include"}),
     (False, "not on the orchestrator role's tool list", "never", "not on the orchestrator role's tool list")),
    ("on the allow-list the other layers still apply", SHELL, context("low", allow_list=["shell"]),
     (False, "high risk above low", "never", "high risk above low")),
    ("an approval for the job turns ask into run", SHELL, context(approved=["shell"]),
     (True, "high risk within high", "run", "approved for the rest of this job")),
    ("an approval beats an explicit ask", CLOCK, context(confirmations={"clock": "ask"}, approved=["clock"]),
     (True, "low risk within high", "run", "approved for the rest of this job")),
    ("an approval never beats never", SHELL, context(confirmations={"shell": "never"}, approved=["shell"]),
     (False, "set to never run", "never", "set to never run")),
    ("an approval never offers a tool above max_risk", SHELL, context("low", approved=["shell"]),
     (False, "high risk above low", "never", "high risk above low")),
    ("an approval never offers a tool outside the allow-list", SHELL, context(allow_list=["clock"],
                                                                              approved=["shell"]),
     (False, "not on the orchestrator role's tool list", "never", "not on the orchestrator role's tool list")),
    ("an approval never offers an excluded tool", SHELL, context(overrides={"shell": "exclude"}, approved=["shell"]),
     (False, "forced out", "never", "forced out")),
    ("an approval never offers a tool for other groups", ADMIN_ONLY, context(approved=["admin_only"]),
     (False, "not for your groups", "never", "not for your groups")),
    ("an origin's ceiling keeps out a tool the person allows", WRITE, context(origin_max_risk="low"),
     (False, "medium risk above this job's origin ceiling of low", "never",
      "medium risk above this job's origin ceiling of low")),
    ("an origin's ceiling beats force include", SHELL, context(overrides={"shell": "include"}, origin_max_risk="medium"),
     (False, "high risk above this job's origin ceiling of medium", "never",
      "high risk above this job's origin ceiling of medium")),
    ("an origin's ceiling beats an approval and a run rule", SHELL,
     context(confirmations={"shell": "run"}, approved=["shell"], origin_max_risk="low"),
     (False, "high risk above this job's origin ceiling of low", "never",
      "high risk above this job's origin ceiling of low")),
    ("an origin's ceiling never widens the person's own", WRITE, context("low", origin_max_risk="high"),
     (False, "medium risk above low", "never", "medium risk above low")),
    ("within an origin's ceiling the person's rules apply", WRITE, context(origin_max_risk="medium"),
     (True, "medium risk within high", "ask", "medium risk asks by default")),
]


@pytest.mark.parametrize(("tool_", "inputs", "expected"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_it_decides_each_case_with_its_reasons(tool_, inputs, expected):
    decision = decide(tool_.name, tool_, inputs)
    assert (decision.offered, decision.offered_because, decision.action, decision.action_because) == expected
    assert decision.name == tool_.name and decision.tool is tool_


def test_an_unknown_name_is_neither_offered_nor_run():
    decision = decide("launch_rockets", None, context(confirmations={"launch_rockets": "run"},
                                                      approved=["launch_rockets"]))
    assert (decision.offered, decision.action, decision.verdict) == (False, "never", "refuse")
    assert decision.because == "there is no tool named 'launch_rockets'"


def test_the_verdict_is_the_action_with_never_as_refuse():
    assert (decide("clock", CLOCK, context()).verdict, decide("clock", CLOCK, context()).because) == (
        "run", "low risk runs by default")
    assert decide("write", WRITE, context()).verdict == "ask"
    refused = decide("write", WRITE, context("low"))
    assert (refused.verdict, refused.because) == ("refuse", "tool write is not allowed (medium risk above low)")


def test_every_tool_that_is_not_offered_never_runs():
    for max_risk in ("low", "medium", "high"):
        for rule in ("default", "run", "ask", "never"):
            for override in ("default", "include", "exclude"):
                for allow_list in ((), ("clock",), ("shell",)):
                    for ceiling in (None, "low", "medium", "high"):
                        inputs = context(max_risk, overrides={"shell": override}, confirmations={"shell": rule},
                                         allow_list=allow_list, approved=["shell"], origin_max_risk=ceiling)
                        decision = decide("shell", SHELL, inputs)
                        assert decision.offered == (decision.action != "never")


def test_an_origin_ceiling_only_ever_narrows_what_is_offered():
    for tool_ in (CLOCK, WRITE, SHELL):
        for max_risk in ("low", "medium", "high"):
            for override in ("default", "include", "exclude"):
                for ceiling in ("low", "medium", "high"):
                    without = decide(tool_.name, tool_, context(max_risk, overrides={tool_.name: override}))
                    within = decide(tool_.name, tool_, context(max_risk, overrides={tool_.name: override},
                                                               origin_max_risk=ceiling))
                    assert within.offered <= without.offered
                    if within.offered:
                        assert within.action == without.action


def test_the_summary_is_what_the_settings_page_shows():
    rows = {row.name: row for row in decide_all(tools, context("medium", allow_list=["clock", "write", "shell"]))}
    assert rows["clock"].summary == "Offered, runs"
    assert rows["write"].summary == "Offered, asks first"
    assert rows["shell"].summary == "Not offered (high risk above medium)"
    assert rows["admin_only"].summary == "Not offered (not for your groups)"


def test_decide_all_keeps_the_order_it_is_given():
    assert [row.name for row in decide_all([SHELL, CLOCK], context())] == ["shell", "clock"]


def test_the_inputs_may_be_any_collections():
    inputs = PolicyContext(groups=["user"], allow_list=("clock",), approved=iter(["clock"]))
    assert inputs.groups == frozenset({"user"}) and inputs.approved == frozenset({"clock"})
    assert decide("clock", CLOCK, inputs).action_because == "approved for the rest of this job"


@pytest.mark.parametrize("bad", [
    {"max_risk": "extreme"},
    {"overrides": {"clock": "maybe"}},
    {"confirmations": {"clock": "sometimes"}},
])
def test_it_rejects_invalid_policies(bad):
    with pytest.raises(PolicyInvalid):
        RiskPolicy(**bad)


def test_it_rejects_an_unknown_origin_ceiling():
    with pytest.raises(PolicyInvalid):
        PolicyContext(origin_max_risk="none")


def test_the_policy_module_does_not_need_django():
    # Pure means plain data in, plain data out: importing it must not pull Django in.
    code = "import sys, orchestrator.policy; assert not any(m.split('.')[0] == 'django' for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
