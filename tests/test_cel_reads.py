"""What a rule reads of the plan: only those fields are built for it, unless it needs them all."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from approval_gate.policy import load_policy
from approval_gate.policy_context import RULE_VARIABLES
from plangate.config import Settings
from plangate.stages import configured_tools
from schemas import Plan, new_id
from schemas.cel_check import (
    compiled,
    comprehension_problems,
    expression_problems,
    expression_reads,
)

ALL = None  # every field: the record, or a value holding it, is used whole


@pytest.mark.parametrize(
    ("match", "of_plan", "of_step"),
    [
        ('plan.steps.exists(s, "destructive" in s.tags)', {"steps"}, {"tags"}),
        ("plan.writes_from_untrusted", {"writes_from_untrusted"}, set()),
        ("plan.steps.all(s, s.args.limit <= 10 && has(s.when))", {"steps"}, {"args", "when"}),
        ('tools.search.effect == "read" && goal.text.contains("x")', set(), set()),
        # A step sized, indexed, compared or iterated over by its keys: any field may matter.
        ("plan.steps.all(s, size(s) == 9)", {"steps"}, ALL),
        ('plan.steps[0].tool == "search"', {"steps"}, ALL),
        ("size(plan.steps) == 1", {"steps"}, ALL),
        ('plan.steps.exists(s, s.exists(k, k == "tool"))', {"steps"}, ALL),
        ('plan.steps.exists(s, s["tool"] == "search")', {"steps"}, ALL),
        ("plan.steps.exists(s, s == plan.steps[0])", {"steps"}, ALL),
        ("size(plan) == 6", ALL, ALL),
    ],
)
def test_a_rule_reads_the_fields_it_names_or_all_of_a_record_it_uses_whole(
    match: str, of_plan: set[str] | None, of_step: set[str] | None
) -> None:
    reads = expression_reads(match, RULE_VARIABLES)
    assert reads.fields_of("plan") == (None if of_plan is None else frozenset(of_plan))
    assert reads.fields_of("plan.steps[]") == (None if of_step is None else frozenset(of_step))


def test_what_several_rules_read_is_the_union() -> None:
    tags = expression_reads('plan.steps.exists(s, "x" in s.tags)', RULE_VARIABLES)
    flow = expression_reads("plan.writes_from_untrusted", RULE_VARIABLES)
    whole = expression_reads("plan.steps.all(s, size(s) > 0)", RULE_VARIABLES)
    assert (tags | flow).fields_of("plan") == frozenset({"steps", "writes_from_untrusted"})
    assert (tags | flow).fields_of("plan.steps[]") == frozenset({"tags"})
    assert (tags | whole).fields_of("plan.steps[]") is None


def test_an_expression_is_compiled_once_and_a_broken_one_is_refused_every_time() -> None:
    """Given a condition used by several stages and goals, its program is the same one each
    time, and evaluates for each; an expression that does not compile is refused each time it
    comes (nothing of it is kept)."""
    condition = "steps.count.output > 10"
    program = compiled(condition)
    assert compiled(condition) is program
    assert program.execute({"steps": {"count": {"output": 12, "status": "succeeded"}}}) is True
    assert program.execute({"steps": {"count": {"output": 3, "status": "succeeded"}}}) is False
    for _ in range(2):
        with pytest.raises(ValueError, match="Syntax error"):
            compiled("steps.count.output >")


@pytest.mark.parametrize(
    "match",
    [
        'has(plan.steps.filter(s, s.tool == "notify_oncall")[0].args)',
        'plan.steps.filter(s, s.tool == "x").exists(t, t.args.message == "y")',
    ],
    ids=["indexed", "ranged-over"],
)
def test_what_a_filter_hands_on_is_read_whole(match: str) -> None:
    """Given a rule that reads fields of the steps a `filter` keeps, beyond its condition's,
    Then every field of a step is built for it: only the condition's were, so `.args` was
    missing and a deny rule's `has(...)` said false (the plan was approved).
    """
    assert expression_reads(match, RULE_VARIABLES).fields_of("plan.steps[]") is ALL


def test_a_deny_rule_reading_past_a_filter_denies(tmp_path: Path) -> None:
    """Given a deny rule over the arguments of the first step a filter keeps, and a plan it
    matches,
    Then the policy denies it, on the first decision and on one remembered.
    """
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        yaml.safe_dump(
            {
                "rules": [
                    {
                        "name": "no-paging-with-args",
                        "match": 'has(plan.steps.filter(s, s.tool == "notify_oncall")[0].args)',
                        "action": "deny",
                        "reason": "test",
                    },
                    {"name": "rest", "match": "true", "action": "approve", "reason": "test"},
                ]
            }
        )
    )
    settings = Settings(data_dir=tmp_path, policy_file=policy_file)
    policy, catalog = load_policy(settings), configured_tools(settings).catalog()
    steps = [{"id": "n", "tool": "notify_oncall", "args": {"message": "hi"}}]

    for _ in range(2):
        plan = Plan(plan_id=new_id(), goal_id=new_id(), revision=1, summary="s", steps=steps)
        assert policy.decide(plan, catalog, "page them").action == "deny"


@pytest.mark.parametrize(
    "match",
    ['plan.steps.map(s, s.tool).all(t, t != "drop_db")', "[1, 2].all(a, a > 0)"],
    ids=["over-a-result", "over-a-literal"],
)
def test_a_macro_over_a_result_or_a_literal_binds_its_variable(match: str) -> None:
    """A macro's variable is bound whatever it ranges over; it was "unknown variable t"."""
    assert expression_problems(match, RULE_VARIABLES) == []


def test_a_comprehension_in_another_is_refused_as_such_not_as_an_unknown_variable() -> None:
    match = '["drop_db"].exists(t, plan.steps.exists(s, s.tool == t))'
    assert expression_problems(match, RULE_VARIABLES) == []
    assert comprehension_problems(match, RULE_VARIABLES) == [
        "exists() reads plan in its body",
        "exists() holds exists()",
    ]
