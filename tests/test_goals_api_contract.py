"""What a client generated from /openapi.json may rely on: the goal states, and no silent query.

A goal's state is one of the state machine's (`schemas.goal_states`), named as one enum in the
document; a read of the API refuses a query parameter it does not take, and says which it does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, get_args

import pytest
from fastapi.testclient import TestClient

from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.reviewers import Reviewer
from plangate.server import create_app
from plangate.server.reviewers import Reviewers
from schemas.goal_states import GoalStatus
from tests.conftest import SEED_GOAL
from tests.support import HELD, only_plan

CAROL = {"Authorization": "Bearer carol-token-0123456789"}
INTAKE = {"Authorization": "Bearer intake"}


@pytest.fixture
def http(pipeline: Pipeline, settings: Settings) -> Iterator[TestClient]:
    """`plangate serve`'s app on the pipeline's store, with reviewer carol and an intake token."""
    reviewers = Reviewers([Reviewer.with_token("carol", "carol-token-0123456789")])
    with TestClient(create_app(settings, intake_token="intake", reviewers=reviewers)) as client:
        yield client


def test_every_goal_state_field_and_the_state_filter_are_the_state_machine_s_enum(
    http: TestClient,
) -> None:
    """Given the OpenAPI document of `plangate serve`,
    When a client generator reads a goal's `status`, a submission's, a listed goal's and the
    list's `state` parameter,
    Then each is the one schema `GoalStatus`, whose enum is every state of the state machine
    (they were plain strings: a generated client knew none of them).
    """
    spec = http.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    state = {"$ref": "#/components/schemas/GoalStatus"}

    assert schemas["GoalStatus"] == {"type": "string", "enum": list(get_args(GoalStatus))}
    for body in ("GoalState", "GoalAccepted", "GoalListItem"):
        assert schemas[body]["properties"]["status"] == state, body
    [filter_] = [
        p for p in spec["paths"]["/api/v1/goals"]["get"]["parameters"] if p["name"] == "state"
    ]
    assert filter_["schema"]["anyOf"][0] == state


def test_a_goals_decision_is_a_named_schema_of_every_field_it_carries(
    http: TestClient, pipeline: Pipeline
) -> None:
    """Given the OpenAPI document and a held goal's state,
    Then `decision` is the schema `DecisionState`, naming each field the answer carries
    (`policy_version`, `decided_at` were there, undocumented: a free object of strings).
    """
    schemas = http.get("/openapi.json").json()["components"]["schemas"]
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=5)
    decision = http.get(f"/api/v1/goals/{goal_id}", headers=CAROL).json()["decision"]

    documented = schemas["DecisionState"]["properties"]
    assert schemas["GoalState"]["properties"]["decision"]["anyOf"][0] == {
        "$ref": "#/components/schemas/DecisionState"
    }
    assert set(decision) == set(documented)
    assert decision["action"] == "hold"


def test_each_step_of_a_goal_carries_its_arguments_as_planned(
    http: TestClient, pipeline: Pipeline
) -> None:
    """Given a held goal, When its state is read,
    Then each step of `results` carries the arguments its plan gives it (references unfilled):
    a payment's amount and payee were in no goal view, only in the plan's review.
    """
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=5)
    state = http.get(f"/api/v1/goals/{goal_id}", headers=CAROL).json()
    planned = {step.id: dict(step.args) for step in only_plan(pipeline.store, goal_id).steps}

    assert {result["step_id"]: result["args"] for result in state["results"]} == planned


def test_a_state_filter_outside_the_enum_is_refused_naming_the_states(
    pipeline: Pipeline, http: TestClient
) -> None:
    """Given a held goal,
    When a reviewer lists goals with `state=held`, then with `state=sleeping`,
    Then the first lists it, and the second is a 422 naming the states there are.
    """
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD)

    held = http.get("/api/v1/goals", params={"state": "held"}, headers=CAROL)
    sleeping = http.get("/api/v1/goals", params={"state": "sleeping"}, headers=CAROL)

    assert [g["goal_id"] for g in held.json()["goals"]] == [goal_id]
    assert sleeping.status_code == 422
    assert (
        "query.state: Input should be 'submitted', 'proposed', 'held'" in sleeping.json()["error"]
    )


def answer(http: TestClient, path: str, **params: Any) -> tuple[int, str]:
    got = http.get(path, params=params, headers=CAROL)
    return got.status_code, str(got.json().get("error", "")) if got.status_code >= 400 else ""


def test_an_unknown_query_parameter_of_an_api_read_is_a_422_naming_those_it_takes(
    pipeline: Pipeline, http: TestClient
) -> None:
    """Given a held goal,
    When a reviewer lists goals with `?source=urn:billing` (no such filter), or asks for the goal
    or the reviews with a parameter those routes do not take,
    Then each answer is a 422 naming the unknown parameter and the ones the route takes (the
    list answered every goal, as if filtered by source); known parameters still answer 200.
    """
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD)

    listed = answer(http, "/api/v1/goals", source="urn:billing")
    one = answer(http, f"/api/v1/goals/{goal_id}", verbose="1", x="2")
    reviews = answer(http, "/api/v1/reviews", state="held")

    assert listed == (
        422,
        "unknown query parameter 'source': GET /api/v1/goals takes only state, since, until, "
        "search, limit, cursor; leave out the others (nothing is filtered by them)",
    )
    assert one == (
        422,
        "unknown query parameters 'verbose', 'x': GET /api/v1/goals/{goal_id} takes no query "
        "parameter; leave out the others (nothing is filtered by them)",
    )
    assert reviews[0] == 422
    assert "'state': GET /api/v1/reviews takes only limit;" in reviews[1]
    assert answer(http, "/api/v1/goals", state="held", limit=5) == (200, "")
    assert answer(http, f"/api/v1/goals/{goal_id}") == (200, "")
    assert answer(http, "/api/v1/reviews", limit=5) == (200, "")


def test_the_document_says_every_api_read_may_answer_422(http: TestClient) -> None:
    """A client generated from the document must expect the 422 of a parameter it sent wrong."""
    spec = http.get("/openapi.json").json()

    reads = {
        path: ops["get"]
        for path, ops in spec["paths"].items()
        if path.startswith("/api/") and "get" in ops
    }

    assert "/api/v1/goals/{goal_id}" in reads
    for path, read in reads.items():
        assert read["responses"]["422"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"
        }, path
