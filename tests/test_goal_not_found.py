"""A goal a publisher chose the id of, and the planner refused, is answered for by the API.

Nothing stores a refused goal: the 404 says so, and where its reason is.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.server import create_app
from schemas import GoalSubmitted
from tests.conftest import SEED_GOAL
from tests.support import HELD, dead_letters, plangate_in, publish_goal

INTAKE = {"Authorization": "Bearer intake"}


def test_a_refused_published_goal_is_a_404_that_says_where_its_reason_is(
    pipeline: Pipeline, settings: Settings
) -> None:
    """Given a goal stored with the idempotency key "nightly",
    And goal `foreign-1`, published on the broker with that key, refused by the planner,
    When its publisher asks `GET /api/v1/goals/foreign-1`,
    Then the answer is a 404 saying that a goal published on the broker and refused is not
    stored, and that its reason is in the dead-letter queue (`plangate dlq list`, or an
    observer on `dead.#`), where it is; it spoke only of what "its submission answered".
    """
    first = pipeline.submit(SEED_GOAL, idempotency_key="nightly").goal_id
    pipeline.wait_for(first, HELD)
    refused = GoalSubmitted(goal_id="foreign-1", text="another goal", idempotency_key="nightly")
    publish_goal(pipeline, refused)
    (letter,) = dead_letters(pipeline)

    with TestClient(create_app(settings, intake_token="intake")) as http:
        answer = http.get("/api/v1/goals/foreign-1", headers=INTAKE)

    assert answer.status_code == 404
    said = answer.json()["error"]
    assert said.startswith("no goal 'foreign-1' (here a goal's whole id, as its submission ")
    assert "published on the broker that the planner refused is never stored" in said
    assert "(`plangate dlq list`, or an observer bound to `dead.#`" in said
    assert "idempotency key 'nightly'" in letter.reason


def test_the_cli_s_status_of_an_id_no_goal_has_says_where_a_refused_goal_s_reason_is(
    pipeline: Pipeline, settings: Settings
) -> None:
    """Given goal `foreign-1`, published on the broker and refused by the planner,
    When its publisher asks `plangate status foreign-1`,
    Then the one line says a goal the planner refused is never stored and names
    `plangate dlq list`, as the API's 404 does: it said only "check the id".
    """
    first = pipeline.submit(SEED_GOAL, idempotency_key="nightly").goal_id
    pipeline.wait_for(first, HELD)
    refused = GoalSubmitted(goal_id="foreign-1", text="another goal", idempotency_key="nightly")
    publish_goal(pipeline, refused)
    dead_letters(pipeline)

    result = plangate_in(settings.data_dir, "status", "foreign-1")

    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "error: no goal 'foreign-1'; check the id (`plangate goals list` shows goals); a goal "
        "the planner refused is never stored: `plangate dlq list` has it"
    ]
