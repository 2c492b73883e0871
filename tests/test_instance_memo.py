"""A value derived from a frozen object is computed once per instance, and goes with it."""

from __future__ import annotations

import gc

import pytest

from schemas import Plan, Step, canonical_json, new_id
from schemas.instance_memo import InstanceMemo


class Thing:
    """A plain object that can be weakly referenced."""


def test_a_value_is_computed_once_per_instance_and_forgotten_with_it() -> None:
    """Given a memo,
    When it is asked twice about one object, once about another, and the first is dropped,
    Then it computed twice (once per object) and keeps nothing for the dropped one.
    """
    calls: list[int] = []
    memo: InstanceMemo[Thing, int] = InstanceMemo(lambda thing: calls.append(1) or len(calls))
    first, second = Thing(), Thing()

    assert memo(first) == memo(first) == 1
    assert memo(second) == 2
    del first
    gc.collect()

    assert len(calls) == 2
    assert len(memo) == 1


def test_a_failure_is_not_remembered() -> None:
    """Given a computation that fails the first time, Then the next call computes again."""
    attempts: list[int] = []

    def flaky(_: Thing) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("not yet")
        return "done"

    memo: InstanceMemo[Thing, str] = InstanceMemo(flaky)
    thing = Thing()
    with pytest.raises(ValueError, match="not yet"):
        memo(thing)

    assert memo(thing) == "done"


def test_a_plans_canonical_json_is_the_same_remembered_or_not() -> None:
    """A plan's canonical bytes (what its hash and an approval sign) do not depend on the memo."""
    plan = Plan(
        plan_id=new_id(),
        goal_id=new_id(),
        revision=1,
        summary="count and tell",
        steps=[Step(id="count", tool="census", args={"z": 1, "a": [2, 1]})],
    )

    remembered = canonical_json(plan)

    assert canonical_json(plan) is remembered
    assert remembered == canonical_json(plan.model_dump(mode="json"))
