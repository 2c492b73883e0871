"""What a rule reads of the plan: only those fields are built for it, unless it needs them all."""

from __future__ import annotations

import pytest

from approval_gate.policy_context import RULE_VARIABLES
from schemas.cel_check import compiled, expression_reads

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
