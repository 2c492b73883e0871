"""`validate_plan`: the one check every stage runs before a plan crosses a boundary."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from plangate.tools import tool
from schemas import Plan, PlanInvalid, PlanProblem, Step, ToolSpec, validate_plan
from schemas.validation import MAX_PLAN_BYTES, MAX_STEPS

SEED_MESSAGE = "Ticket count ${count} exceeded SLA ${sla}"


def integer_tool(name: str) -> ToolSpec:
    return ToolSpec(name=name, effect="read", output_schema={"type": "integer"})


def write_tool(name: str, properties: dict[str, Any], required: list[str]) -> ToolSpec:
    schema = {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }
    return ToolSpec(name=name, effect="write", args_schema=schema)


def seed_catalog() -> dict[str, ToolSpec]:
    """The seed tools, plus a few whose types make reference checks interesting."""
    tools = [
        integer_tool("ticket_count"),
        integer_tool("sla_threshold"),
        write_tool("notify_oncall", {"message": {"type": "string"}}, ["message"]),
        ToolSpec(
            name="ticket_stats",
            effect="read",
            output_schema={
                "type": "object",
                "properties": {"open": {"type": "integer"}, "title": {"type": "string"}},
            },
        ),
        write_tool(
            "record_metric",
            {
                "value": {"type": "number"},
                "details": {"type": "object"},
                "samples": {"type": "array", "items": {"type": "integer"}},
            },
            ["value"],
        ),
    ]
    return {tool.name: tool for tool in tools}


def step(step_id: str, tool: str, args: dict[str, Any] | None = None, **extra: Any) -> Step:
    return Step(id=step_id, tool=tool, args=args or {}, **extra)


def plan(*steps: Step) -> Plan:
    return Plan(plan_id="plan-1", goal_id="goal-1", revision=1, summary="test", steps=steps)


def count_and_sla() -> tuple[Step, Step]:
    return step("count", "ticket_count"), step("sla", "sla_threshold")


def seed_plan(**notify_overrides: Any) -> Plan:
    """The plan from DESIGN.md; `notify_overrides` replace fields of its `notify` step."""
    notify: dict[str, Any] = {
        "args": {"message": SEED_MESSAGE},
        "when": "steps.count.output > steps.sla.output",
        **notify_overrides,
    }
    return plan(*count_and_sla(), step("notify", "notify_oncall", **notify))


def problems_of(invalid: Plan) -> list[PlanProblem]:
    with pytest.raises(PlanInvalid) as raised:
        validate_plan(invalid, seed_catalog())
    return raised.value.problems


def the_problem(invalid: Plan, code: str) -> PlanProblem:
    """The one problem of `code` that validation reports for `invalid`."""
    matching = [p for p in problems_of(invalid) if p.code == code]
    assert len(matching) == 1, f"expected one {code!r} problem, got {problems_of(invalid)}"
    return matching[0]


def assert_names_step(problem: PlanProblem, step_id: str) -> None:
    assert problem.step_id == step_id
    assert str(problem).startswith(f"step {step_id!r}: ")


def metric_step(args: dict[str, Any]) -> Step:
    return step("record", "record_metric", args)


# --- valid plans -------------------------------------------------------------------------------


def test_the_seed_plan_is_valid() -> None:
    validate_plan(seed_plan(), seed_catalog())


def test_a_plan_of_exactly_max_steps_is_valid() -> None:
    steps = [step(f"s{i}", "ticket_count") for i in range(MAX_STEPS)]

    validate_plan(plan(*steps), seed_catalog())


def test_an_interpolated_reference_fills_a_string_argument_whatever_the_output_type() -> None:
    """Given `count` gives an integer, "Open: ${count}" is still a string, so it fits `message`."""
    notify = step("notify", "notify_oncall", {"message": "Open: ${count} (of ${stats.open})"})

    valid = plan(step("count", "ticket_count"), step("stats", "ticket_stats"), notify)

    validate_plan(valid, seed_catalog())


def test_an_integer_output_may_fill_a_number_argument() -> None:
    validate_plan(
        plan(step("count", "ticket_count"), metric_step({"value": "${count}"})), seed_catalog()
    )


def test_a_required_argument_may_be_given_by_a_whole_reference() -> None:
    """Given `value` is required, When it is `${count}`, Then it counts as present."""
    validate_plan(
        plan(step("count", "ticket_count"), metric_step({"value": "${count}"})), seed_catalog()
    )


def test_a_field_reference_is_checked_against_that_fields_type() -> None:
    """`${stats.open}` is an integer field of an object output, so it may fill a number."""
    validate_plan(
        plan(step("stats", "ticket_stats"), metric_step({"value": "${stats.open}"})),
        seed_catalog(),
    )


def test_a_reference_inside_a_list_argument_is_checked_by_type_not_as_a_string() -> None:
    """`samples` holds integers: `${count}` (an integer) fits, though the text "${count}" is not."""
    args = {"value": 1, "samples": ["${count}", 7]}

    validate_plan(plan(step("count", "ticket_count"), metric_step(args)), seed_catalog())


# --- unknown tool ------------------------------------------------------------------------------


def test_an_unknown_tool_is_rejected_and_the_message_lists_the_known_tools() -> None:
    invalid = plan(step("page", "page_everyone"))

    problem = the_problem(invalid, "unknown_tool")

    assert_names_step(problem, "page")
    assert "'page_everyone' is not in the catalog" in problem.message
    assert ", ".join(sorted(seed_catalog())) in problem.message


# --- bad args ----------------------------------------------------------------------------------


def test_a_missing_required_argument_is_rejected() -> None:
    problem = the_problem(seed_plan(args={}), "bad_args")

    assert_names_step(problem, "notify")
    assert "'message' is a required property" in problem.message


def test_an_argument_of_the_wrong_type_is_rejected_naming_the_argument() -> None:
    problem = the_problem(seed_plan(args={"message": 42}), "bad_args")

    assert_names_step(problem, "notify")
    assert problem.message == "message: 42 is not of type 'string'"


def test_an_extra_argument_is_rejected_when_the_schema_forbids_additional_properties() -> None:
    problem = the_problem(seed_plan(args={"message": "hi", "urgency": "high"}), "bad_args")

    assert_names_step(problem, "notify")
    assert "'urgency' was unexpected" in problem.message


def test_an_extra_argument_given_by_reference_is_rejected_too() -> None:
    """A whole reference escapes the literal type check, but not the schema's list of names."""
    problem = the_problem(seed_plan(args={"message": "hi", "urgency": "${count}"}), "bad_args")

    assert_names_step(problem, "notify")
    assert "'urgency' was unexpected" in problem.message


def test_a_whole_reference_whose_output_type_does_not_fit_the_argument_is_rejected() -> None:
    """Given `count` gives an integer, When it fills `details` (an object), Then it is refused."""
    invalid = plan(step("count", "ticket_count"), metric_step({"value": 1, "details": "${count}"}))

    problem = the_problem(invalid, "bad_args")

    assert_names_step(problem, "record")
    assert problem.message == "argument 'details': ${count} gives integer, expected object"


def test_a_field_reference_of_the_wrong_type_is_rejected() -> None:
    invalid = plan(step("stats", "ticket_stats"), metric_step({"value": "${stats.title}"}))

    problem = the_problem(invalid, "bad_args")

    assert_names_step(problem, "record")
    assert "${stats.title} gives string, expected number" in problem.message


def test_a_reference_of_the_wrong_type_inside_a_list_names_its_position() -> None:
    invalid = plan(
        step("stats", "ticket_stats"), metric_step({"value": 1, "samples": ["${stats.title}"]})
    )

    problem = the_problem(invalid, "bad_args")

    assert problem.message == "argument 'samples.0': ${stats.title} gives string, expected integer"


# --- references --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "notify_overrides",
    [
        pytest.param({"args": {"message": "see ${missing}"}}, id="in-args"),
        pytest.param({"when": "steps.missing.output > 1"}, id="in-when"),
        pytest.param({"after": ("missing",)}, id="in-after"),
    ],
)
def test_a_dangling_reference_is_rejected_naming_the_missing_step(
    notify_overrides: dict[str, Any],
) -> None:
    problem = the_problem(seed_plan(**notify_overrides), "dangling_reference")

    assert_names_step(problem, "notify")
    assert "'missing', which the plan lacks" in problem.message


def test_two_steps_that_depend_on_each_other_form_a_cycle() -> None:
    invalid = plan(
        step("a", "ticket_count", after=("b",)), step("b", "sla_threshold", after=("a",))
    )

    problem = the_problem(invalid, "cycle")

    assert_names_step(problem, "a")
    assert problem.message.endswith("a -> b -> a")


def test_a_step_that_refers_to_itself_forms_a_cycle() -> None:
    problem = the_problem(seed_plan(args={"message": "again: ${notify}"}), "cycle")

    assert_names_step(problem, "notify")


def test_a_long_chain_of_dependencies_is_checked_without_exhausting_the_stack() -> None:
    """Given 3,000 steps, each after the next, Then validation reports the size, not a crash."""
    chain = [step(f"s{i}", "ticket_count", after=(f"s{i + 1}",)) for i in range(3000)]

    problems = problems_of(plan(*chain, step("s3000", "ticket_count")))

    assert [p.code for p in problems] == ["too_many_steps"]


def test_a_duplicate_step_id_is_rejected() -> None:
    invalid = plan(*count_and_sla(), step("count", "ticket_count"))

    problem = the_problem(invalid, "duplicate_id")

    assert_names_step(problem, "count")
    assert "used twice" in problem.message


# --- conditions --------------------------------------------------------------------------------


def test_a_when_that_is_not_valid_cel_is_rejected() -> None:
    problem = the_problem(seed_plan(when="steps.count.output >"), "bad_condition")

    assert_names_step(problem, "notify")
    assert "`when` is not valid CEL" in problem.message


def test_a_when_calling_an_undeclared_function_or_reading_no_field_is_rejected() -> None:
    """A `when` fails at run time on anything but `steps.<id>.output` and `.status`, and the
    runtime's own functions: such a plan is refused before anyone approves it."""
    calls = the_problem(seed_plan(when="lookup(steps.count.output) > 100"), "bad_condition")
    misreads = the_problem(seed_plan(when="steps.count.outptu > 100"), "bad_condition")

    assert "unknown function lookup()" in calls.message
    assert "steps.count has no field outptu (it has: output, status)" in misreads.message


# --- sizes -------------------------------------------------------------------------------------


def test_a_plan_of_more_than_max_steps_is_rejected() -> None:
    steps = [step(f"s{i}", "ticket_count") for i in range(MAX_STEPS + 1)]

    problem = the_problem(plan(*steps), "too_many_steps")

    assert problem.step_id is None
    assert (
        str(problem) == f"plan: {MAX_STEPS + 1} steps; at most {MAX_STEPS} allowed [too_many_steps]"
    )


def test_an_empty_plan_is_rejected() -> None:
    problem = the_problem(plan(), "empty")

    assert problem.step_id is None
    assert str(problem).startswith("plan: ")


def test_a_plan_larger_than_the_byte_limit_is_rejected() -> None:
    problem = the_problem(seed_plan(args={"message": "x" * MAX_PLAN_BYTES}), "too_large")

    assert problem.step_id is None
    assert f"at most {MAX_PLAN_BYTES} allowed" in str(problem)


def test_a_plan_without_a_canonical_form_is_rejected_naming_the_step() -> None:
    """An integer beyond 2**53 has no RFC 8785 form, so the plan could never be hashed."""
    problem = the_problem(seed_plan(args={"message": "hi", "n": 2**60}), "not_canonical")

    assert_names_step(problem, "notify")


# --- several at once ---------------------------------------------------------------------------


def test_every_problem_is_reported_at_once() -> None:
    """Given a plan wrong in four ways, When validated, Then one PlanInvalid lists all four."""
    invalid = plan(
        *count_and_sla(),
        step("count", "ticket_count"),
        step("page", "page_everyone"),
        step("notify", "notify_oncall", {"message": 42}, when="steps.count.output >"),
    )

    with pytest.raises(PlanInvalid) as raised:
        validate_plan(invalid, seed_catalog())

    found = {(p.code, p.step_id) for p in raised.value.problems}
    assert found == {
        ("duplicate_id", "count"),
        ("unknown_tool", "page"),
        ("bad_args", "notify"),
        ("bad_condition", "notify"),
    }
    assert all(str(p) in str(raised.value) for p in raised.value.problems)


def test_a_cycle_is_reported_alongside_a_dangling_reference() -> None:
    invalid = plan(
        step("a", "ticket_count", after=("b", "ghost")), step("b", "sla_threshold", after=("a",))
    )

    codes = sorted(p.code for p in problems_of(invalid))

    assert codes == ["cycle", "dangling_reference"]


def test_a_tool_spec_whose_argument_schema_is_not_json_schema_is_refused() -> None:
    """Given a tool spec whose argument schema says a property has type "nope",
    When it is built (as an executor does when it loads its tools),
    Then it is refused at once, naming where the schema is wrong, so no plan meets it later.
    """
    broken = {"type": "object", "properties": {"amount": {"type": "nope"}}}

    with pytest.raises(ValidationError) as raised:
        ToolSpec(name="charge_card", effect="write", args_schema=broken)

    assert "not a valid JSON Schema at properties/amount/type" in str(raised.value)


# --- what a condition may cost -----------------------------------------------------------------


def nested_over_steps(levels: int) -> str:
    """The probe's condition: `levels` comprehensions over `steps`, each inside the last."""
    condition = "false"
    for level in range(levels):
        condition = f"steps .exists(k{level}, {condition})"
    return f"steps.count.output > 0 && {condition}"


@pytest.mark.parametrize(
    ("when", "said"),
    [
        pytest.param(nested_over_steps(8), "exists() holds exists()", id="eight-deep-over-steps"),
        pytest.param(
            "steps.count.output.exists(t, t.labels.exists(l, l == 'x'))",
            "exists() holds exists()",
            id="two-deep",
        ),
        pytest.param(
            "steps.count.output.exists(t, t in steps.sla.output)",
            "exists() reads steps in its body",
            id="a-product-of-two-outputs",
        ),
        pytest.param(  # a `)` in a comment closed the first comprehension early
            "steps.count.output.exists(x, x == 0 // )\n"
            " || steps.count.output.exists(z, z + 1 == x))",
            "exists() holds exists()",
            id="hidden-by-a-comment",
        ),
        pytest.param(  # a raw string's backslash read as an escape ran the string on
            'steps.count.output.exists(x, x == r"\\") || steps.count.output.exists('
            'y, steps.count.output.exists(z, y == z + 1) && "" == "")',
            "exists() holds exists()",
            id="hidden-by-a-raw-string",
        ),
    ],
)
def test_a_when_whose_cost_would_multiply_is_refused_before_anyone_approves_it(
    when: str, said: str
) -> None:
    """CEL cannot be stopped once it runs, and holds the GIL: eight comprehensions nested over
    eleven steps froze an executor (and, through its transaction, every stage) for 28 s."""
    problem = the_problem(seed_plan(when=when), "bad_condition")

    assert_names_step(problem, "notify")
    assert "would cost more than the outputs it reads" in problem.message
    assert said in problem.message


@pytest.mark.parametrize(
    "when",
    [
        "steps.count.output.exists(t, t > 3)",
        "steps.count.output.exists(t, 'urgent' in t.labels) && steps.sla.output.all(s, s > 0)",
        "size(steps.count.output.filter(t, t.open)) > steps.sla.output",
        "steps.count.output.exists(t, t.steps == 'a field named steps')",
    ],
)
def test_a_when_that_ranges_over_one_output_at_a_time_is_accepted(when: str) -> None:
    validate_plan(seed_plan(when=when), seed_catalog())  # raises PlanInvalid if refused


def test_a_when_calling_a_regex_on_each_item_of_an_output_is_refused() -> None:
    """This runtime compiles a pattern at every call (24 ms for one): over an output of
    thousands of items, one condition would hold the executor, GIL and all, for a minute."""
    when = 'steps.count.output.exists(t, t.matches("^[\\\\w.+-]{1,64}@"))'
    problem = the_problem(seed_plan(when=when), "bad_condition")

    assert_names_step(problem, "notify")
    assert "exists() calls matches() in its body" in problem.message


def test_a_when_whose_regex_pattern_comes_from_an_output_is_refused() -> None:
    when = "string(steps.count.output).matches(string(steps.sla.output))"
    problem = the_problem(seed_plan(when=when), "bad_condition")

    assert "only with a pattern written in it" in problem.message


def test_a_when_calling_a_written_regex_once_is_accepted() -> None:
    validate_plan(seed_plan(when='string(steps.count.output).matches("^[0-9]+$")'), seed_catalog())


def test_a_when_reading_an_output_field_named_matches_is_accepted() -> None:
    validate_plan(seed_plan(when="size(steps.count.output.matches) > 0"), seed_catalog())


BOOKING = write_tool(
    "book",
    {"day": {"type": "string", "format": "date"}, "order": {"type": "string", "format": "uuid"}},
    ["day", "order"],
)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ({"day": "yesterday", "order": "0f8fad5b-d9cb-469f-a165-70867728950e"}, "day:"),
        ({"day": "2026-12-06", "order": "nope"}, "order:"),
    ],
)
def test_a_date_or_uuid_argument_that_is_none_is_refused_when_planned(
    args: dict[str, Any], said: str
) -> None:
    """A plan giving `"yesterday"` for a `date` argument was approved, then failed at its
    call: a reviewer approved a plan that could not run."""
    with pytest.raises(PlanInvalid) as refused:
        validate_plan(plan(step("b", "book", args)), {"book": BOOKING})

    [problem] = refused.value.problems
    assert problem.code == "bad_args"
    assert problem.message.startswith(said)


def test_a_date_or_uuid_as_python_reads_it_is_taken() -> None:
    """Only what a tool would refuse is: a uuid without its dashes, as pydantic takes it."""
    args = {"day": "2026-12-06", "order": "0f8fad5bd9cb469fa16570867728950e"}

    validate_plan(plan(step("b", "book", args)), {"book": BOOKING})


@pytest.mark.parametrize(
    ("day", "taken"),
    [("20240101", False), ("2024-W01-1", False), ("2024-01-01T00:00:00", True), ("0", True)],
)
def test_a_date_argument_is_read_as_pydantic_reads_it(day: str, taken: bool) -> None:
    """Python's `date.fromisoformat` took `20240101` (pydantic refuses it, at the call) and
    refused `2024-01-01T00:00:00` (pydantic takes it: the plan was refused for nothing)."""
    args = {"day": day, "order": "0f8fad5b-d9cb-469f-a165-70867728950e"}
    the_plan = plan(step("b", "book", args))

    if taken:
        validate_plan(the_plan, {"book": BOOKING})
    else:
        with pytest.raises(PlanInvalid):
            validate_plan(the_plan, {"book": BOOKING})


def test_a_decimal_argument_is_checked_when_the_plan_is_made_not_after_its_approval() -> None:
    """Given a refund tool whose amount is a `Decimal` (pydantic's schema: a number, or a
    string matching a pattern with a lookahead, which RE2 cannot run as written),
    When plans give it "lots", "12.50", 12.5 and "-.5",
    Then "lots" is refused at once, naming the argument (a person approved it, and the tool
    refused it after), and the others are valid.
    """

    @tool(effect="write")
    def create_refund(customer_id: str, amount: Decimal) -> dict[str, str]:
        """Refund a customer."""
        return {"refunded": customer_id, "amount": str(amount)}

    catalog = {"create_refund": create_refund.spec}

    def refund(amount: Any) -> Plan:
        return plan(step("refund", "create_refund", {"customer_id": "c-1", "amount": amount}))

    with pytest.raises(PlanInvalid) as refused:
        validate_plan(refund("lots"), catalog)
    for amount in ("12.50", 12.5, "-.5", "100"):
        validate_plan(refund(amount), catalog)

    assert [(p.step_id, p.code) for p in refused.value.problems] == [("refund", "bad_args")]
    assert "amount" in refused.value.problems[0].message
