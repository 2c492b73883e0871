"""The step ledger: what one run of a plan records is what every run of it goes on with."""

from __future__ import annotations

from executor_worker.ledger import StepLedger
from plangate.embedded import Pipeline
from plangate.store import StepRunRow
from tests.conftest import SEED_GOAL
from tests.support import audit_kinds, only_plan


def test_the_first_recorded_result_of_a_read_is_the_one_every_run_goes_on_with(
    pipeline: Pipeline,
) -> None:
    """Given the seed plan held for review, and two runs of it (a redelivery while it ran)
    that both called the `count` read and got different answers,
    When each records its answer,
    Then the second is told the first's answer, the store keeps the first, and the audit log
    has one entry for the step.
    """
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, {"held"})
    plan = only_plan(pipeline.store, goal_id)
    count = plan.step("count")
    first, second = (StepLedger(pipeline.store, plan) for _ in range(2))

    kept = first.record_read(count, "succeeded", 128, None)
    told = second.record_read(count, "succeeded", 131, None)

    assert (kept.status, kept.output) == ("succeeded", 128)
    assert (told.status, told.output) == ("succeeded", 128)
    with pipeline.store.session() as session:
        assert session.get_one(StepRunRow, (plan.plan_id, "count")).output == 128
    assert audit_kinds(pipeline.store, goal_id).count("step.succeeded") == 1
