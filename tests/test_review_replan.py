"""Issue 6 over the review API: a rejection with a comment, with replan on, makes revision 2.

A Redis fleet of workers runs the LLM planner against the scripted OpenAI stub. The default
policy holds the notify plan; a reviewer rejects it through `/api/v1/reviews` with a comment;
the planner asks the model again with that comment and revision 2 is held for review in turn.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plangate.client import Client
from tests.conftest import SEED_GOAL
from tests.fleet import Fleet
from tests.openai_stub import OpenAIStub, messages_of, plan_reply, running_stub
from tests.test_replan import SEED_STEPS
from tests.test_review_api import BOB, call, fleet_settings, review, serving

pytestmark = pytest.mark.redis

COMMENT = "page the secondary instead"
BETTER_STEPS = [
    *SEED_STEPS[:2],
    {**SEED_STEPS[2], "args": {"message": "Secondary: ${count} tickets over SLA ${sla}"}},
]


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with running_stub() as server:
        yield server


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str, stub: OpenAIStub) -> Iterator[Fleet]:
    """A fleet whose planner is the LLM planner, talking to the stub, with one replan allowed."""
    running = Fleet(
        broker_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'plangate.db'}",
        folder=tmp_path,
        # No FAST_SWEEPS: a 2 s reconciler resends the submission while the workers start,
        # and the planner would ask the model twice for revision 1.
        extra_env={
            "PLANGATE_PLANNER": "openai",
            "PLANGATE_REPLAN_LIMIT": "1",
            "OPENAI_BASE_URL": stub.base_url,
            "OPENAI_API_KEY": "test",
        },
    )
    upgrade = running.plangate("db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    running.start_all()
    try:
        yield running
    finally:
        running.stop_all()


def listed_revision(
    base_url: str, fleet: Fleet, goal_id: str, revision: int, timeout: float = 30
) -> dict[str, Any]:
    """Poll the review list until `revision` of the goal is held there; return its entry."""
    deadline = time.monotonic() + timeout
    listed: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        status, body = call(f"{base_url}/api/v1/reviews")
        assert status == 200, body
        listed = list(body)
        for item in listed:
            if item["goal_id"] == goal_id and item["revision"] == revision:
                return item
        time.sleep(0.1)
    raise AssertionError(f"revision {revision} of {goal_id} never listed: {listed}\n{fleet.logs()}")


def test_a_rejection_with_a_comment_in_the_api_brings_revision_2_for_review(
    fleet: Fleet, stub: OpenAIStub
) -> None:
    """Given the LLM planner's notify plan held by the default policy,
    When a reviewer rejects it through the API with a comment,
    Then revision 2 of the same goal is listed for review, held again by the policy,
    and the model was asked for it with the comment.
    """
    stub.script(plan_reply(SEED_STEPS), plan_reply(BETTER_STEPS))
    with Client(fleet_settings(fleet)) as client, serving(client) as base_url:
        goal_id = client.submit(SEED_GOAL).goal_id
        first = listed_revision(base_url, fleet, goal_id, 1)
        assert first["policy"]["rule"] == "hold-writes"

        status, outcome = review(
            base_url,
            first["plan_id"],
            "reject",
            {"plan_hash": first["plan_hash"], "comment": COMMENT},
            token=BOB,
        )
        assert status == 200, outcome

        second = listed_revision(base_url, fleet, goal_id, 2)
        assert second["plan_id"] != first["plan_id"]
        assert second["goal_status"] == "held"
        assert second["policy"]["rule"] == "hold-writes"
        assert first["plan_id"] not in {
            item["plan_id"] for item in call(f"{base_url}/api/v1/reviews")[1]
        }
        status, detail = call(f"{base_url}/api/v1/reviews/{second['plan_id']}")
        assert status == 200, detail
        assert detail["previous_revision"] == 1
        assert any("Secondary" in line for line in detail["diff"] if line.startswith("+"))

    assert len(stub.requests) == 2
    feedback = messages_of(stub.requests[1])[-1]
    assert feedback["role"] == "user"
    assert "A reviewer rejected that plan (revision 1)" in feedback["content"]
    assert COMMENT in feedback["content"]
    assert COMMENT not in str(messages_of(stub.requests[0]))
