"""A rule's work over a plan is bounded: no plan, and no policy, stalls the gate.

CEL evaluates holding the GIL and cannot be interrupted. A rule nesting comprehensions over
one list did work growing as the square of the plan: a reviewer's edit to 20,000 recipients
held the gate for minutes, and five nested comprehensions over literals held `policy check`
for 42 s.
"""

from __future__ import annotations

import re

import pytest

from approval_gate.policy import Policy
from approval_gate.rule_cost import MAX_RULE_WORK, RuleCost
from plangate.errors import PolicyError
from schemas import Plan, Step, ToolSpec
from schemas.cel_cost import Cost, DataSize, cost_terms

CATALOG = {"mail": ToolSpec(name="mail", effect="write")}
A_RECIPIENT_TWICE = (
    "plan.steps.exists(s, has(s.args.to)"
    " && s.args.to.exists(r, s.args.to.filter(q, q == r).size() > 1))"
)


def policy(match: str, action: str = "deny") -> Policy:
    return Policy.from_text(
        "rules:\n"
        f"  - name: guarded\n    match: '{match}'\n    action: {action}\n    reason: guarded\n"
        "  - name: the-rest\n    match: 'true'\n    action: approve\n    reason: the rest\n",
        source="policy.yaml",
    )


def mail_to(recipients: list[str]) -> Plan:
    step = Step(id="mail", tool="mail", args={"to": recipients})
    return Plan(plan_id="p1", goal_id="g1", revision=1, steps=(step,))


def test_a_quadratic_rule_holds_a_plan_too_large_for_it_at_once_saying_why() -> None:
    """Evaluated, this decision would take minutes; it is a hold, naming the rule and the bound."""
    recipients = [f"person{i}@example.com" for i in range(20_000)]

    decision = policy(A_RECIPIENT_TWICE).decide(mail_to(recipients), CATALOG)

    assert decision.action == "hold"
    assert decision.rule == "guarded"
    assert "held for a person rather than evaluated" in decision.reason
    assert "the longest list 20000 long" in decision.reason
    assert f"at most {MAX_RULE_WORK:,}" in decision.reason


def test_the_same_rule_decides_a_plan_of_the_usual_size() -> None:
    # A filter in a comprehension: cubic at worst (each copies its result at each item).
    twice = [f"person{i}@example.com" for i in range(100)] + ["person7@example.com"]
    once = [f"person{i}@example.com" for i in range(100)]
    rules = policy(A_RECIPIENT_TWICE)

    assert rules.decide(mail_to(twice), CATALOG).action == "deny"
    assert rules.decide(mail_to(once), CATALOG).rule == "the-rest"


def test_a_held_rule_never_lets_a_later_approve_rule_decide() -> None:
    """Fail closed: the bound holds, as a rule that cannot be evaluated does."""
    recipients = [f"p{i}@example.com" for i in range(5_000)]

    decision = policy(A_RECIPIENT_TWICE).decide(mail_to(recipients), CATALOG)

    assert (decision.action, decision.rule) == ("hold", "guarded")


def test_a_comprehension_over_a_part_of_its_item_is_linear_and_never_bounded() -> None:
    match = 'plan.steps.exists(s, has(s.args.to) && s.args.to.exists(r, r.endsWith("@evil.com")))'
    recipients = [f"person{i}@example.com" for i in range(50_000)] + ["x@evil.com"]

    assert not RuleCost.of(match).bounded
    assert policy(match).decide(mail_to(recipients), CATALOG).action == "deny"


@pytest.mark.parametrize(
    ("match", "degree"),
    [
        ('plan.steps.exists(s, s.tool == "mail")', 1),
        ('plan.steps.exists(s, s.args.to.exists(r, r == "a"))', 1),
        ('plan.steps.map(s, s.tool).exists(t, t == "mail")', 1),
        ('plan.steps.exists(s, s.tool in ["mail", "page"])', 1),
        ("plan.steps.exists(s, s in plan.steps)", 2),
        ("plan.steps.exists(s, plan.steps.exists(t, t.id != s.id && t.tool == s.tool))", 2),
        ("plan.steps.exists(s, s.args.a.exists(x, x in s.args.b))", 2),
        ("plan.steps.exists(s, s.args.a.exists(x, s.args.b.exists(y, y in s.args.c)))", 3),
        # This runtime copies what a field holds at each read: `s.args` copies the arguments.
        ("plan.steps.exists(s, s.args.to.exists(r, r == s.args.sender))", 2),
        ("plan.steps.exists(s, s.args.to.exists(r, r in (s.args.cc)))", 2),
        ('plan.steps.exists(s, s.args.to.exists(r, s["args"]["sender"] == r))', 1),
    ],
)
def test_the_power_of_the_plan_a_rule_may_cost_is_read_from_its_comprehensions(
    match: str, degree: int
) -> None:
    assert max(term.degree for term in cost_terms(match)) == degree


def test_comprehensions_over_literal_lists_cost_the_product_of_their_lengths() -> None:
    match = "[1, 2, 3].all(a, [4, 5].all(b, a != b))"

    assert cost_terms(match) == {Cost(0, 3), Cost(0, 6)}


def test_data_is_measured_by_every_value_and_the_longest_list() -> None:
    cost = RuleCost.of("plan.steps.exists(s, s in plan.steps)")

    assert cost.work(DataSize(values=100, longest=10)) == 100 * 10
    assert cost.refusal(DataSize(values=100, longest=10)) is None


def test_a_rule_too_costly_over_its_own_literals_is_refused_at_load_at_once() -> None:
    """Five nested comprehensions over literals held `policy check` for 42 s."""
    digits = "[" + ", ".join(str(i) for i in range(30)) + "]"
    nested = "".join(f"{digits}.all({name}, " for name in "abcde") + "a != e" + ")" * 5

    with pytest.raises(PolicyError, match=re.escape("steps over its own literal values alone")):
        policy(nested)


@pytest.mark.parametrize(
    "match",
    [
        "plan.steps.exists(s, has(s.args.team) && s.args.team != goal.metadata.team)",
        "plan.steps.exists(s, has(s.args.to) && s.args.to.exists(r, r == goal.metadata.blocked))",
        'plan.steps.exists(s, tools[s.tool].effect == "write" && !tools[s.tool].idempotent)',
        'plan.steps.exists(s, history.count(s.tool, "1h") > 100)',
        "plan.steps.exists(s, s.tool in tools)",
        "plan.steps.exists(s, has(s.args.team) && s.args.team in goal.metadata)",
    ],
)
def test_a_rule_reading_a_value_of_another_variable_per_item_is_not_bounded(match: str) -> None:
    """Reading `goal.metadata.team` or looking a tool up costs a step: such rules were taken
    as scanning the plan, and held every newsletter of 2,100 recipients unevaluated."""
    assert not RuleCost.of(match).bounded


SLOW_PATTERN = r"^[\\w.+-]{1,64}@[\\w-]+(\\.[\\w-]+)+$"


def test_a_regex_called_on_each_value_is_counted_as_what_it_costs_to_compile() -> None:
    """This runtime compiles the pattern at every call: 16-24 ms for this one, which held a
    gate for a minute over 2,500 recipients while it took no note of the rule."""
    match = (
        'plan.steps.exists(s, has(s.args.to) && !s.args.to.all(r, r.matches("'
        + SLOW_PATTERN
        + '")))'
    )
    cheap = 'plan.steps.exists(s, has(s.args.to) && s.args.to.all(r, r.matches("^a")))'
    rules = policy(match)
    recipients = [f"person{i}@example.com" for i in range(2_500)]

    assert rules.rules[0].cost.bounded
    decision = rules.decide(mail_to(recipients), CATALOG)
    assert (decision.action, decision.rule) == ("hold", "guarded")
    assert "regex called on each value" in decision.reason
    assert rules.decide(mail_to([*recipients[:3], "nobody"]), CATALOG).action == "deny"
    assert RuleCost.of(cheap).work(DataSize(values=2_500, longest=2_500)) < MAX_RULE_WORK


@pytest.mark.parametrize(
    ("match", "said"),
    [
        (
            'plan.steps.exists(s, s.args.to.exists(r, s.args.cc.exists(c, c.matches("^" + r))))',
            "matches() is given a pattern made from what the rule reads",
        ),
        (
            'plan.steps.exists(s, s.args.to.exists(r, r.matches("@(corp|internal")))',
            "is not a regex this runtime takes",
        ),
    ],
)
def test_a_regex_the_plan_chooses_or_the_runtime_refuses_is_refused_at_load(
    match: str, said: str
) -> None:
    """A pattern refused by the runtime held every plan the rule met, though `policy check`
    said the rule compiled; one built from the plan let the plan choose what matched."""
    with pytest.raises(PolicyError, match=re.escape(said)):
        policy(match)


def test_a_filter_is_counted_as_copying_its_result_at_each_item() -> None:
    """This runtime builds a `map` or `filter` by copying its result so far at each item: a
    rule filtering 20,000 recipients took 17 s, judged linear and never checked."""
    match = (
        'plan.steps.exists(s, has(s.args.to) && s.args.to.filter(r, r.endsWith("@x.com"))'
        ".size() > 0)"
    )
    recipients = [f"person{i}@x.com" for i in range(20_000)]

    decision = policy(match).decide(mail_to(recipients), CATALOG)

    assert RuleCost.of(match).bounded
    assert (decision.action, decision.rule) == ("hold", "guarded")
    assert "a map or filter" in decision.reason
    assert policy(match).decide(mail_to(recipients[:300]), CATALOG).action == "deny"


def test_a_rule_is_measured_over_what_it_reads_not_over_a_catalog_another_rule_reads() -> None:
    """A catalog of 3,000 tools, read by one rule, held every plan for another that scans
    only the plan's own few steps."""
    catalog = {f"t{i}": ToolSpec(name=f"t{i}", effect="read") for i in range(3_000)}
    rules = Policy.from_text(
        "rules:\n"
        "  - name: big-catalog\n    match: 'size(tools) < 3'\n    action: deny\n"
        "    reason: r\n"
        "  - name: scans-steps\n    match: 'plan.steps.exists(s, s in plan.steps)'\n"
        "    action: approve\n    reason: r\n"
    )
    steps = tuple(Step(id=f"s{i}", tool=f"t{i}") for i in range(3))
    plan = Plan(plan_id="p1", goal_id="g1", revision=1, steps=steps)

    decision = rules.decide(plan, catalog)

    assert (decision.action, decision.rule) == ("approve", "scans-steps")


def test_a_field_named_matches_is_no_regex() -> None:
    """A search's answer may well be `{"matches": [...]}`: reading it was refused as a regex
    whose pattern came from the plan."""
    rules = policy("plan.steps.exists(s, has(s.args.matches) && size(s.args.matches) > 10)")

    assert rules.rules[0].name == "guarded"
