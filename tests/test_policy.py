"""The three policy layers decide what the model is offered and what asks first."""

import pytest

from orchestrator.policy import PolicyInvalid, RiskPolicy, confirmation, effective_policy, offered, verdict
from orchestrator.tools.registry import Tool, ToolRegistry, tool

tools = ToolRegistry()


def _declare(name: str, risk: str, roles=None) -> Tool:
    async def handler(ctx):
        return name

    tool(name=name, category="test", description=name, risk=risk, idempotent=True, roles=roles, into=tools)(handler)
    return tools.get(name)


CLOCK = _declare("clock", "low")
WRITE = _declare("write", "medium")
SHELL = _declare("shell", "high")
ADMIN_ONLY = _declare("admin_only", "low", roles=frozenset({"admin"}))
USER = ["user"]


def test_it_offers_every_tool_up_to_high_risk_by_default():
    policy = RiskPolicy()
    assert [offered(t, policy, USER)[0] for t in (CLOCK, WRITE, SHELL)] == [True, True, True]


def test_max_risk_hides_riskier_tools():
    policy = RiskPolicy(max_risk="low")
    assert offered(CLOCK, policy, USER) == (True, "low risk within low")
    assert offered(WRITE, policy, USER) == (False, "medium risk above low")
    assert offered(SHELL, policy, USER)[0] is False
    assert offered(WRITE, RiskPolicy(max_risk="medium"), USER)[0] is True
    assert offered(SHELL, RiskPolicy(max_risk="medium"), USER)[0] is False


def test_force_include_offers_a_tool_above_max_risk():
    policy = RiskPolicy(max_risk="low", overrides={"shell": "include"})
    assert offered(SHELL, policy, USER) == (True, "forced in")


def test_force_exclude_hides_a_tool_within_max_risk():
    policy = RiskPolicy(max_risk="high", overrides={"clock": "exclude"})
    assert offered(CLOCK, policy, USER) == (False, "forced out")


def test_the_role_layer_wins_over_force_include():
    policy = RiskPolicy(overrides={"admin_only": "include"})
    assert offered(ADMIN_ONLY, policy, USER) == (False, "not for your role")
    assert offered(ADMIN_ONLY, policy, ["user", "admin"])[0] is True


def test_low_risk_runs_and_medium_and_high_ask_by_default():
    policy = RiskPolicy()
    assert confirmation(CLOCK, policy)[0] == "run"
    assert confirmation(WRITE, policy)[0] == "ask"
    assert confirmation(SHELL, policy)[0] == "ask"


def test_confirmation_rules_override_the_default():
    policy = RiskPolicy(confirmations={"clock": "ask", "write": "run"})
    assert confirmation(CLOCK, policy)[0] == "ask"
    assert confirmation(WRITE, policy)[0] == "run"


def test_never_is_neither_offered_nor_run():
    policy = RiskPolicy(confirmations={"clock": "never"})
    assert offered(CLOCK, policy, USER)[0] is False
    assert verdict(CLOCK, policy, USER)[0] == "refuse"


def test_approval_for_the_rest_of_the_job_skips_asking_but_not_never():
    assert confirmation(SHELL, RiskPolicy(), approved_for_job=["shell"])[0] == "run"
    assert confirmation(SHELL, RiskPolicy(confirmations={"shell": "never"}), approved_for_job=["shell"])[0] == "never"


def test_verdict_refuses_unknown_and_unoffered_tools():
    assert verdict(None, RiskPolicy(), USER)[0] == "refuse"
    decision, reason = verdict(SHELL, RiskPolicy(max_risk="low"), USER)
    assert decision == "refuse" and "high risk above low" in reason
    assert verdict(WRITE, RiskPolicy(), USER)[0] == "ask"
    assert verdict(CLOCK, RiskPolicy(), USER)[0] == "run"


def test_effective_policy_summarises_each_tool():
    rows = {row.name: row for row in effective_policy(tools, RiskPolicy(max_risk="medium"), USER)}
    assert rows["clock"].summary == "Offered, runs"
    assert rows["write"].summary == "Offered, asks first"
    assert rows["shell"].summary == "Not offered (high risk above medium)"
    assert rows["admin_only"].offered is False


@pytest.mark.parametrize("bad", [
    {"max_risk": "extreme"},
    {"overrides": {"clock": "maybe"}},
    {"confirmations": {"clock": "sometimes"}},
])
def test_it_rejects_invalid_policies(bad):
    with pytest.raises(PolicyInvalid):
        RiskPolicy(**bad)
