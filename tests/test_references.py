"""References between steps: how `${id}` and `${id.field}` are found and resolved."""

from __future__ import annotations

from typing import Any

import pytest

from schemas import Step
from schemas.references import (
    Reference,
    UnresolvedReference,
    dependencies,
    references_in,
    resolve,
    steps_in_condition,
    whole_reference,
)


def outputs(**extra: Any) -> dict[str, Any]:
    """Outputs of earlier steps, as the executor holds them."""
    return {
        "count": 12,
        "sla": 10,
        "stats": {"open": 3, "labels": ["p1", "p2"], "owner": {"name": "ada"}},
        **extra,
    }


def step(args: dict[str, Any] | None = None, **extra: Any) -> Step:
    return Step(id="notify", tool="notify_oncall", args=args or {}, **extra)


# --- resolve: whole references -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        pytest.param("${count}", 12, id="integer"),
        pytest.param("${stats}", outputs()["stats"], id="object"),
        pytest.param("${stats.open}", 3, id="field"),
        pytest.param("${stats.owner.name}", "ada", id="nested-field"),
        pytest.param("${stats.labels}", ["p1", "p2"], id="list"),
        pytest.param("${stats.labels.1}", "p2", id="list-index"),
    ],
)
def test_a_whole_reference_is_replaced_by_the_value_keeping_its_type(
    reference: str, expected: Any
) -> None:
    assert resolve(reference, outputs()) == expected


def test_a_whole_reference_to_a_falsy_output_keeps_it() -> None:
    assert resolve("${flag}", outputs(flag=False)) is False
    assert resolve("${nothing}", outputs(nothing=None)) is None


# --- resolve: interpolation --------------------------------------------------------------------


def test_references_inside_a_longer_string_are_interpolated() -> None:
    message = "Ticket count ${count} exceeded SLA ${sla}"

    assert resolve(message, outputs()) == "Ticket count 12 exceeded SLA 10"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param(True, "true", id="true"),
        pytest.param(False, "false", id="false"),
        pytest.param(None, "null", id="null"),
        pytest.param(2.5, "2.5", id="float"),
        pytest.param("plain", "plain", id="string-unquoted"),
        pytest.param({"a": [1, "x"]}, '{"a": [1, "x"]}', id="object-as-json"),
    ],
)
def test_an_interpolated_value_reads_as_json_not_as_a_python_repr(value: Any, text: str) -> None:
    assert resolve("value=${v}.", outputs(v=value)) == f"value={text}."


def test_references_nested_in_dicts_and_lists_are_all_resolved() -> None:
    args = {
        "summary": {"count": "${count}", "line": "n=${count}"},
        "labels": ["${stats.labels.0}", "fixed", ("${sla}",)],
        "retries": 3,
    }

    assert resolve(args, outputs()) == {
        "summary": {"count": 12, "line": "n=12"},
        "labels": ["p1", "fixed", [10]],
        "retries": 3,
    }


@pytest.mark.parametrize("text", ["$count", "${}", "${1count}", "{count}", "$ {count}"])
def test_text_that_only_looks_like_a_reference_is_left_alone(text: str) -> None:
    assert resolve(text, outputs()) == text
    assert list(references_in(text)) == []


# --- resolve: failures -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "named"),
    [
        pytest.param("${ghost}", "'ghost' has no output", id="no-such-step"),
        pytest.param("${stats.closed}", "${stats.closed}", id="no-such-field"),
        pytest.param("${stats.labels.2}", "${stats.labels.2}", id="index-out-of-range"),
        pytest.param("${count.value}", "${count.value}", id="field-of-a-number"),
        pytest.param("owner: ${stats.owner.email}", "${stats.owner.email}", id="interpolated"),
    ],
)
def test_a_reference_to_nothing_raises_unresolved_reference_naming_it(
    value: str, named: str
) -> None:
    with pytest.raises(UnresolvedReference, match="has no") as raised:
        resolve(value, outputs())

    assert named in str(raised.value)


# --- finding references ------------------------------------------------------------------------


def test_references_in_finds_each_reference_and_whether_it_is_whole() -> None:
    found = list(references_in({"a": "${count}", "b": ["x ${stats.owner.name} y"]}))

    assert found == [
        Reference("count", (), whole=True),
        Reference("stats", ("owner", "name"), whole=False),
    ]


def test_whole_reference_recognises_only_a_string_that_is_exactly_one_reference() -> None:
    assert whole_reference("${stats.open}") == Reference("stats", ("open",), whole=True)
    assert whole_reference("${a}${b}") is None
    assert whole_reference(" ${a}") is None
    assert whole_reference(["${a}"]) is None


def test_steps_in_condition_are_the_ids_read_through_steps_dot() -> None:
    assert steps_in_condition("steps.count.output > steps.sla.output + 1") == {"count", "sla"}
    assert steps_in_condition("true") == set()


# --- dependencies ------------------------------------------------------------------------------


def test_dependencies_unite_args_references_when_steps_and_after() -> None:
    """Given refs in args (nested too), a `when` and an `after`, Then all of them are deps."""
    notify = step(
        {"message": "over by ${count}", "details": {"limit": ["${sla}"]}},
        when="steps.stats.output.open > 0",
        after=("audit",),
    )

    assert dependencies(notify) == {"count", "sla", "stats", "audit"}


def test_a_step_without_references_has_no_dependencies() -> None:
    assert dependencies(step({"message": "hello"})) == set()


def test_a_step_referring_to_the_same_step_twice_depends_on_it_once() -> None:
    notify = step({"message": "${count} ${count.x}"}, when="steps.count.output > 1")

    assert dependencies(notify) == {"count"}
