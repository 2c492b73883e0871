"""The gate's policy: ordered CEL rules, first match wins, no match and any error hold."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import cel
import pytest

from approval_gate.decision_memo import MEMO_KEY_BYTES, DecisionMemo
from approval_gate.policy import Outcome, Policy, load_policy
from plangate.config import Settings
from plangate.errors import ConfigError, PolicyError
from schemas import Plan, Step, ToolSpec

CATALOG = {
    "search": ToolSpec(name="search", effect="read", idempotent=True),
    "notify": ToolSpec(name="notify", effect="write"),
    "drop_table": ToolSpec(name="drop_table", effect="write", tags=("destructive",)),
}


def plan_of(*tools: str, **args: Any) -> Plan:
    steps = tuple(Step(id=f"s{i}", tool=name, args=args) for i, name in enumerate(tools))
    return Plan(plan_id="p1", goal_id="g1", revision=1, summary="a test plan", steps=steps)


def policy_of(rules: str, mode: str = "enforce") -> Policy:
    return Policy.from_text(f"mode: {mode}\nrules:\n{rules}", source="test.yaml")


def rule(name: str, match: str, action: str = "approve", reason: str = "because") -> str:
    return f"  - name: {name}\n    match: '{match}'\n    action: {action}\n    reason: {reason}\n"


@pytest.fixture
def default_policy() -> Policy:
    return load_policy(Settings(policy_file=None))


# --- the default policy ---------------------------------------------------------------------


def test_default_policy_holds_a_plan_that_writes(default_policy: Policy) -> None:
    # Given a plan that reads, then writes
    plan = plan_of("search", "notify")
    # When the default policy decides it
    decision = default_policy.decide(plan, CATALOG)
    # Then it is held for a person, saying why
    assert decision.action == "hold"
    assert decision.rule == "hold-writes"
    assert decision.reason == "the plan writes; a person must approve it"
    assert decision.decided_by == "policy"
    assert decision.shadow_action is None


def test_default_policy_approves_a_read_only_plan(default_policy: Policy) -> None:
    decision = default_policy.decide(plan_of("search", "search"), CATALOG)
    assert decision.action == "approve"
    assert decision.rule == "approve-read-only"
    assert decision.policy_version == default_policy.version


def test_default_policy_denies_a_destructive_step(default_policy: Policy) -> None:
    decision = default_policy.decide(plan_of("search", "drop_table"), CATALOG)
    assert decision.action == "deny"
    assert decision.rule == "deny-destructive"


def test_an_unknown_tool_is_treated_as_a_write(default_policy: Policy) -> None:
    # Given a step whose tool the catalog does not know
    plan = plan_of("search", "mystery")
    # Then the read-only rule cannot approve it
    assert default_policy.decide(plan, CATALOG).action == "hold"
    # And rules see it as a write tagged unknown-tool
    policy = policy_of(
        rule("unknown", 'plan.steps.exists(s, s.effect == "write" && "unknown-tool" in s.tags)')
    )
    assert policy.decide(plan, CATALOG).rule == "unknown"


def test_a_policy_file_path_that_does_not_exist_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PLANGATE_POLICY_FILE"):
        load_policy(Settings(policy_file=tmp_path / "missing.yaml"))


def test_load_policy_reads_the_configured_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("rules:\n" + rule("all", "true", "deny"))
    policy = load_policy(Settings(policy_file=path))
    assert policy.mode == "enforce"
    assert policy.decide(plan_of("search"), CATALOG).action == "deny"


# --- evaluation -----------------------------------------------------------------------------


def test_first_match_wins() -> None:
    # Given two rules that both match a read-only plan
    deny_first = rule("deny-all", "true", "deny") + rule("approve-all", "true", "approve")
    approve_first = rule("approve-all", "true", "approve") + rule("deny-all", "true", "deny")
    plan = plan_of("search")
    # Then the earlier one decides, whichever it is
    assert policy_of(deny_first).decide(plan, CATALOG).action == "deny"
    assert policy_of(approve_first).decide(plan, CATALOG).action == "approve"


def test_no_match_holds() -> None:
    decision = policy_of(rule("never", "false", "approve")).decide(plan_of("search"), CATALOG)
    assert decision.action == "hold"
    assert decision.rule is None
    assert decision.reason == "no rule matched; held for a person"


def test_a_rule_that_fails_to_evaluate_holds_even_if_a_later_rule_would_approve() -> None:
    # Given a rule that reads a missing argument, then a rule that approves everything
    policy = policy_of(
        rule("broken", "plan.steps[0].args.missing == 1", "approve") + rule("all", "true")
    )
    # When the policy decides
    decision = policy.decide(plan_of("search"), CATALOG)
    # Then the plan is held (fail closed), naming the broken rule
    assert decision.action == "hold"
    assert decision.rule == "broken"
    assert decision.reason.startswith("rule 'broken' could not be evaluated (")
    assert decision.reason.endswith("); held for a person")


def test_an_undefined_variable_field_or_function_is_refused_naming_the_rule_and_line() -> None:
    """A rule reading what no plan has never works: it is refused when the policy loads."""
    cases = {
        "plna.revision == 1": "unknown variable plna",
        "plan.nosuchfield == 3": "plan has no field nosuchfield (it has: goal_id, plan_id,",
        'plan.steps.exists(s, s.effekt == "write")': "s has no field effekt",
        "weekday() == 1": "unknown function weekday()",
    }
    for match, said in cases.items():
        with pytest.raises(PolicyError) as refused:
            policy_of(rule("all", "true") + rule("typo", match))
        assert refused.value.rule == "typo"
        assert refused.value.line is not None
        assert said in str(refused.value)


def test_fields_a_rule_may_read_load_and_decide() -> None:
    """Arguments, goal metadata and the catalog's tools are read without complaint."""
    match = (
        'plan.steps.all(s, s.effect == "read" || s.args.channel == "#ops") && '
        '!("team" in goal.metadata) && tools.search.effect == "read" && has(plan.summary)'
    )
    policy = policy_of(rule("fine", match))
    assert policy.decide(plan_of("search"), CATALOG).action == "approve"


def test_a_rule_that_uses_a_step_whole_sees_every_field_of_it() -> None:
    """A decision builds only the fields its rules name, unless a rule needs them all."""
    sized = policy_of(rule("nine-fields", "plan.steps.all(s, size(s) == 9)"))
    assert sized.decide(plan_of("search"), CATALOG).action == "approve"
    indexed = policy_of(rule("first", 'plan.steps[0].tool == "search" && size(plan) == 6'))
    assert indexed.decide(plan_of("search"), CATALOG).action == "approve"


def test_a_decision_taken_before_is_remembered_by_exactly_what_the_rules_read() -> None:
    """Plans that differ only where no rule looks share one outcome; any difference a rule
    reads is decided afresh, and the memo forgets its oldest outcome beyond its size."""
    policy = policy_of(rule("small", "plan.steps.all(s, s.args.limit <= 10)"))
    policy.memo.clear()
    first = policy.decide(plan_of("search", limit=5), CATALOG)
    again = policy.decide(plan_of("search", limit=5).model_copy(update={"plan_id": "p2"}), CATALOG)
    assert first.action == again.action == "approve"
    assert policy.decide(plan_of("search", limit=50), CATALOG).action == "hold"
    assert len(policy.memo) == 2

    def approve(n: int) -> Outcome:
        return ("approve", None, f"plan {n}")

    small: DecisionMemo[Outcome] = DecisionMemo(size=2)
    for n in range(3):
        small.outcome({"n": n}, functools.partial(approve, n))
    assert len(small) == 2
    assert small.outcome({"n": 0}, lambda: ("deny", None, "decided afresh"))[0] == "deny"
    small.clear()
    small.outcome({"text": "x" * MEMO_KEY_BYTES}, functools.partial(approve, 4))
    assert len(small) == 0  # values that large are decided afresh each time


def test_the_memo_never_takes_a_value_for_an_equal_looking_one_of_another_type() -> None:
    """1, True, 1.0, "1" and [1] are different values to a rule: each is decided afresh, and
    equal values built apart share one outcome."""
    memo: DecisionMemo[Outcome] = DecisionMemo()
    values: list[Any] = [1, True, 1.0, "1", [1], (1,)]
    outcomes = [memo.outcome({"n": v}, functools.partial(held_because, repr(v))) for v in values]
    assert [reason for _, _, reason in outcomes] == ["1", "True", "1.0", "'1'", "[1]", "(1,)"]
    shared = "".join(["ti", "ckets"])
    memo.outcome({"n": [shared, shared]}, functools.partial(held_because, "first"))
    built_apart = {"n": ["".join(["ti", "ckets"]), "".join(["ti", "ckets"])]}
    assert memo.outcome(built_apart, functools.partial(held_because, "again"))[2] == "first"


def held_because(reason: str) -> Outcome:
    return ("hold", None, reason)


def test_a_rule_that_returns_a_non_bool_holds() -> None:
    # false for an empty plan, so it loads; a number for any plan with steps
    match = "size(plan.steps) > 0 ? size(plan.steps) : false"
    policy = policy_of(rule("count", match) + rule("all", "true"))
    decision = policy.decide(plan_of("search"), CATALOG)
    assert decision.action == "hold"
    assert decision.rule == "count"
    assert "not a bool" in decision.reason


def test_a_plan_cel_cannot_hold_is_held(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given values the CEL engine refuses to convert
    def refuse(variables: dict[str, Any], functions: dict[str, Any]) -> None:
        raise ValueError("Failed to convert variable 'plan'")

    monkeypatch.setattr(cel, "Context", refuse)
    # Then no rule runs, and the plan is held
    decision = policy_of(rule("all", "true")).decide(plan_of("search"), CATALOG)
    assert (decision.action, decision.rule) == ("hold", None)
    assert decision.reason.startswith("the plan could not be evaluated (ValueError: Failed")


def test_goal_text_and_metadata_are_usable_in_rules() -> None:
    policy = policy_of(
        rule("ops-status", 'goal.metadata.team == "ops" && goal.text.contains("status")')
    )
    plan = plan_of("notify")
    approved = policy.decide(plan, CATALOG, "post the status", {"team": "ops"})
    assert approved.action == "approve"
    other_team = policy.decide(plan, CATALOG, "post the status", {"team": "sales"})
    assert other_team.action == "hold"


def test_rules_see_args_and_the_tool_catalog() -> None:
    policy = policy_of(
        rule("small", "plan.steps.all(s, s.args.limit <= 10)")
        + rule("idempotent", 'tools["search"].idempotent', "deny")
    )
    assert policy.decide(plan_of("search", limit=5), CATALOG).action == "approve"
    assert policy.decide(plan_of("search", limit=50), CATALOG).action == "deny"


def test_shadow_mode_holds_and_records_what_it_would_have_done() -> None:
    # Given a shadow-mode policy that would deny
    policy = policy_of(
        rule("no-writes", 'plan.steps.exists(s, s.effect == "write")', "deny"), "shadow"
    )
    # When it decides a plan that writes
    decision = policy.decide(plan_of("notify"), CATALOG)
    # Then the plan is held, and the decision records the would-be denial
    assert decision.action == "hold"
    assert decision.shadow_action == "deny"
    assert decision.rule == "no-writes"
    assert (
        decision.reason == "shadow mode: the policy would have denied (rule 'no-writes': because)"
    )


def test_shadow_mode_records_a_would_be_approval() -> None:
    decision = policy_of(rule("all", "true"), "shadow").decide(plan_of("search"), CATALOG)
    assert (decision.action, decision.shadow_action) == ("hold", "approve")


# --- loading --------------------------------------------------------------------------------


def test_a_syntax_error_names_the_rule_and_its_line() -> None:
    # Given a policy whose second rule does not compile (the rule starts on line 7)
    text = "mode: enforce\nrules:\n" + rule("fine", "true") + rule("broken", "plan.steps.all(s,")
    # When it is loaded
    with pytest.raises(PolicyError) as raised:
        Policy.from_text(text, source="test.yaml")
    # Then the error names the rule and its line
    assert raised.value.rule == "broken"
    assert raised.value.line == 7
    assert "does not compile" in str(raised.value)


@pytest.mark.parametrize(
    ("text", "rule_name", "line", "needle"),
    [
        ("rules:\n" + rule("a", "true") + "    extra: 1\n", "a", 2, "extra: Extra inputs"),
        ("rules:\n" + rule("a", "true", "allow"), "a", 2, "action: Input should be"),
        ("rules:\n" + rule("a", "true") + rule("a", "false"), "a", 6, "used twice"),
        ("rules:\n" + rule("a", "x" * 2001), "a", 2, "match: String should have at most"),
        ("rules:\n" + rule("no", "true"), "#1", 2, "name: Input should be a valid string"),
        ("mode: enforce\nmodes: shadow\nrules:\n" + rule("a", "true"), None, 2, "modes"),
        ("mode: loud\nrules:\n" + rule("a", "true"), None, 1, "mode: Input should be"),
        ("rules: []\n", None, 1, "rules: List should have at least 1 item"),
        ("rules:\n" + rule("a", "true") + "    match: 'false'\n", None, 6, "appears twice"),
        ("rules: [\n", None, 2, "not valid YAML"),
        # Past a year: past `timedelta`'s range, the gate failed on each plan it held.
        (
            "rules:\n"
            + rule("a", "true", "hold")
            + "    hold_ttl_seconds: 100000000000000000000\n",
            "a",
            2,
            "hold_ttl_seconds: Input should be less than or equal to 31622400",
        ),
        ("- just a list\n", None, 1, "mapping"),
    ],
)
def test_a_malformed_policy_file_is_refused(
    text: str, rule_name: str | None, line: int | None, needle: str
) -> None:
    # `no` is YAML for false: a rule named no has no name, so it is named by its position.
    with pytest.raises(PolicyError, match=needle) as raised:
        Policy.from_text(text)
    assert raised.value.rule == rule_name
    assert raised.value.line == line


def test_load_reads_a_file_and_a_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("rules:\n" + rule("all", "true"))
    assert Policy.load(path).source == str(path)
    with pytest.raises(PolicyError, match="cannot read"):
        Policy.load(tmp_path / "missing.yaml")


def test_the_version_changes_when_the_file_changes(tmp_path: Path) -> None:
    # Given a policy file, loaded twice without change
    path = tmp_path / "policy.yaml"
    path.write_text("rules:\n" + rule("all", "true"))
    first = Policy.load(path).version
    assert Policy.load(path).version == first
    assert first.startswith("sha256:")
    assert len(first) == len("sha256:") + 16
    # When even a comment changes
    path.write_text("# reviewed\nrules:\n" + rule("all", "true"))
    # Then the version changes, and decisions record it
    second = Policy.load(path)
    assert second.version != first
    assert second.decide(plan_of("search"), CATALOG).policy_version == second.version


@pytest.mark.parametrize(
    ("match", "given"),
    [
        pytest.param("size(plan.steps)", "0 (int)", id="a-count"),
        pytest.param("plan.summary", "'' (str)", id="a-field"),
        pytest.param("goal.metadata", "{} (dict)", id="a-map"),
    ],
)
def test_a_rule_that_gives_no_true_or_false_is_refused_when_loaded(match: str, given: str) -> None:
    with pytest.raises(PolicyError) as refused:
        policy_of(rule("count", match))

    said = str(refused.value)
    assert f"it gives {given}, not true or false" in said
    assert "compare it" in said


@pytest.mark.parametrize(
    "match",
    [
        'plan.steps.exists(s, s.effect == "write")',
        "size(plan.steps) > 3",
        'plan.steps[0].tool == "search"',  # fails over an empty plan: no evidence, loads
        'history.count("notify_oncall", "1h") < 5',
        'goal.metadata["team"] == "finance"',
    ],
)
def test_a_rule_that_tests_something_loads(match: str) -> None:
    assert policy_of(rule("fine", match)).rules[0].match == match


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        pytest.param("    requires_role: finance\n", "requires_role applies", id="a-role"),
        pytest.param("    preview: true\n", "preview applies", id="a-preview"),
        pytest.param("    hold_ttl_seconds: 60\n", "hold_ttl_seconds applies", id="a-ttl"),
    ],
)
@pytest.mark.parametrize("action", ["approve", "deny"])
def test_what_a_rule_asks_of_people_is_refused_where_no_person_decides(
    extra: str, named: str, action: str
) -> None:
    """A `requires_role` on an approve rule read as a guard; its plans ran unattended."""
    with pytest.raises(PolicyError) as refused:
        policy_of(rule("cheap", "true", action=action) + extra)

    assert f"{named} to hold rules only" in str(refused.value)
    assert "Value error" not in str(refused.value)


@pytest.mark.parametrize(
    ("match", "said"),
    [
        ('history.count("notify_oncall", "2y") < 5', "history.count: '2y' is no window"),
        # A date is a fixed start, one in the future counting nothing: not a window.
        (
            'history.count("notify_oncall", "2099-01-01") < 5',
            "history.count: '2099-01-01' is no window",
        ),
        # It loaded, and a cap over it approved every plan: nothing is ever in no time.
        (
            'history.count("notify_oncall", "0m") < 5',
            "history.count: '0m' is an empty window (it counts nothing)",
        ),
        (
            'history.sum("refund", "amount", "forever", "customer") < 100',
            "history.sum: 'forever' is no window",
        ),
    ],
)
def test_a_history_window_that_is_no_window_is_refused_when_loaded(match: str, said: str) -> None:
    """It loaded, and then every decision the rule met was a hold ("'2y' is no window")."""
    with pytest.raises(PolicyError) as refused:
        policy_of(rule("capped", match))

    assert f"the match expression is wrong (in test.yaml): {said}; say 30m, 1h, 1d or 1w" in str(
        refused.value
    )


def test_a_history_window_known_only_when_the_rule_runs_still_loads() -> None:
    policy = policy_of(rule("capped", 'history.count("notify_oncall", goal.metadata.w) < 5'))

    assert policy.reads_history


def test_a_file_that_is_not_yaml_is_named_first_and_its_line_last(tmp_path: Path) -> None:
    """It read `(line 5): /path/policy.yaml is not valid YAML: ...`, a line with no file."""
    path = tmp_path / "policy.yaml"
    path.write_text("rules: [\n")
    with pytest.raises(PolicyError) as raised:
        Policy.load(path)
    said = str(raised.value)
    assert said.startswith(f"{path} is not valid YAML")
    assert said.endswith("(line 2)")


def test_a_policy_repeating_values_through_yaml_aliases_is_refused_at_once(tmp_path: Path) -> None:
    """Nine levels of nine aliases each (`b: &b [*a, *a, ...]`) made a file of 600 bytes that
    `policy check`, and the gate at each reload, walked for minutes."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level, name in enumerate("bcdefghijk"):
        lines.append(f"{name}: &{name} [" + ", ".join(["*" + "abcdefghijk"[level]] * 9) + "]")
    path = tmp_path / "policy.yaml"
    path.write_text("\n".join(lines) + "\nrules:\n" + rule("r", "true"))

    with pytest.raises(PolicyError, match=r"repeats a value through a YAML alias \(\*name\)"):
        Policy.load(path)


@pytest.mark.parametrize(
    ("match", "said"),
    [
        ('history.count("refund") < 3', "history.count takes 2 arguments (tool, window), not 1"),
        (
            'history.sum("refund", "amount", "1d") > 100',
            "history.sum takes 4 arguments (tool, arg, window, key), not 3",
        ),
    ],
)
def test_a_history_call_with_arguments_missing_is_refused_at_load(match: str, said: str) -> None:
    """It was taken at load, then held every plan the rule met, with a stray line of the
    CEL library's on stderr at each decision."""
    with pytest.raises(PolicyError, match=re.escape(said)):
        Policy.from_text("rules:\n" + rule("capped", match))


def test_two_tests_of_one_name_are_refused_at_load() -> None:
    """`policy test` reports each test by its name: two of one name read as one run twice."""
    text = (
        "rules:\n" + rule("all", "true") + "tests:\n"
        "  - {name: pages run, plan: {steps: []}, expect: approve}\n"
        "  - {name: pages run, plan: {steps: []}, expect: hold}\n"
    )

    with pytest.raises(PolicyError, match="the test name 'pages run' is used twice") as raised:
        Policy.from_text(text, source="test.yaml")
    assert raised.value.rule is None  # not blamed on a rule


@pytest.mark.parametrize(
    ("tail", "said", "line"),
    [
        (
            "tests:\n  - name: t\n    steps: []\n    expect: aprove\n",
            "tests.0.expect: Input should be 'approve', 'deny' or 'hold'",
            9,
        ),
        ("mode: shadoww\n", "mode: Input should be 'enforce' or 'shadow'", 6),
    ],
)
def test_a_wrong_value_outside_the_rules_names_its_line(
    tmp_path: Path, tail: str, said: str, line: int
) -> None:
    """A rule's error named its line; a test's or the mode's named none, and an operator
    searched a long file for `tests.12.expect`."""
    path = tmp_path / "policy.yaml"
    path.write_text("rules:\n" + rule("r", "true") + tail)

    with pytest.raises(PolicyError) as raised:
        Policy.load(path)

    assert str(raised.value).startswith(said)
    assert str(raised.value).endswith(f"(line {line})")


def hold_rule(name: str, match: str, **terms: object) -> str:
    said = "".join(f"    {key}: {value}\n" for key, value in terms.items())
    return rule(name, match, "hold") + said


def test_a_broken_rule_before_a_stricter_hold_holds_with_that_hold_s_terms_too() -> None:
    """Given a rule approving small refunds, which cannot compare an amount a read fills in
    (a `${ref}` string until the run), then a rule holding refunds for finance, two of them,
    When the policy decides a refund whose amount is such a reference,
    Then it holds naming the broken rule, and asks what the refunds' rule asks too: held by
    the broken rule alone, it asked nothing, and one reviewer without the role released it.
    """
    policy = policy_of(
        rule("approve-small", "plan.steps.all(s, s.args.amount < 100.0)")
        + hold_rule("hold-large", "true", requires_role="finance", approvals=2)
    )

    decision = policy.decide(plan_of("notify", amount="${req.amount}"), CATALOG)

    assert (decision.action, decision.rule) == ("hold", "approve-small")
    assert decision.also_held_for == ("hold-large",)
    assert "asking what rules 'hold-large' ask too" in decision.reason
    terms = policy.hold_terms(decision)
    assert (terms.roles, terms.approvals) == (("finance",), 2)


def test_a_broken_rule_before_a_deny_denies() -> None:
    """A deny stands whichever way the broken rule before it would have gone: nothing runs."""
    policy = policy_of(
        rule("approve-small", "plan.steps.all(s, s.args.amount < 100.0)")
        + rule("no-drops", 'plan.steps.exists(s, s.tool == "drop_table")', "deny", "never")
    )

    decision = policy.decide(plan_of("drop_table", amount="${req.amount}"), CATALOG)

    assert (decision.action, decision.rule) == ("deny", "no-drops")
    assert decision.reason.startswith("never (rule 'approve-small' could not be evaluated")


def test_a_rule_may_compare_types_by_cel_s_own_names_and_guard_a_reference() -> None:
    """`type(x) in [int, double]` was refused ("unknown variable int"); it is how a rule tells
    a number from a `${ref}` the gate sees as text, and a comparison without it says so."""
    guarded = policy_of(
        rule(
            "small",
            "plan.steps.all(s, type(s.args.amount) in [int, double] && s.args.amount < 100.0)",
        )
    )
    unguarded = policy_of(rule("small", "plan.steps.all(s, s.args.amount < 100.0)"))

    assert guarded.decide(plan_of("notify", amount=50), CATALOG).action == "approve"
    referring = plan_of("notify", amount="${req.amount}")
    assert guarded.decide(referring, CATALOG).reason == "no rule matched; held for a person"
    said = unguarded.decide(referring, CATALOG).reason
    assert "an argument a ${ref} fills in is text until its step runs" in said
    # The guard it suggests takes a whole amount too: `type(x) == double` held every `50`.
    assert "`type(x) in [int, double] && double(x) < 100.0`" in said


def test_the_guards_the_docs_suggest_decide_whole_and_fractional_amounts_alike() -> None:
    """An auditor followed the docs' `type(s.args.amount) == double` guard: the playbook's
    `50` (an int) was held for two approvals, while `policy test` with `10.0` had passed."""
    policy = policy_of(
        rule(
            "small",
            "plan.steps.all(s, type(s.args.amount) in [int, double] && "
            "double(s.args.amount) < 100.0)",
        )
        + hold_rule(
            "large",
            "plan.steps.exists(s, !(type(s.args.amount) in [int, double]) || "
            "double(s.args.amount) >= 1000.0)",
        )
    )
    for amount in (50, 50.5):
        assert policy.decide(plan_of("notify", amount=amount), CATALOG).action == "approve"
    for amount in (5000, 5000.5, "${req.amount}"):
        assert policy.decide(plan_of("notify", amount=amount), CATALOG).rule == "large"


def test_a_broken_deny_rule_denies_whatever_matches_after_it() -> None:
    """A deny rule that cannot be evaluated may have been the one: turned into a hold, two
    reviewers of the later rule released a refund it was written to stop."""
    policy = policy_of(
        rule("deny-huge", "plan.steps.exists(s, s.args.amount > 10000.0)", "deny", "too big")
        + hold_rule("hold-large", "true", requires_role="finance", approvals=2)
    )

    decision = policy.decide(plan_of("notify", amount="${req.amount}"), CATALOG)

    assert (decision.action, decision.rule) == ("deny", "deny-huge")
    assert decision.reason.endswith("; denied, as it may match")


def test_a_rule_sees_arguments_as_planned_without_the_tools_defaults() -> None:
    """Given a step that leaves `currency` to its tool's default (docs/how-to/policy.md),
    When a rule reads `s.args.currency`, Then it cannot be evaluated and holds the plan;
    When it is guarded with `!has(s.args.currency) || ...`, Then it approves.
    """
    plan = plan_of("notify", amount=5)
    bare = policy_of(rule("eur", 'plan.steps.all(s, s.args.currency == "EUR")'))
    guarded = policy_of(
        rule("eur", 'plan.steps.all(s, !has(s.args.currency) || s.args.currency == "EUR")')
    )

    held = bare.decide(plan, CATALOG)

    assert held.action == "hold"
    assert "KeyError: 'currency'" in (held.reason or "")
    assert guarded.decide(plan, CATALOG).action == "approve"
