"""A dead letter on the bus carries the headers the AsyncAPI document says it has.

An observer in another language reads a dead letter as any other message: its envelope's
headers name its type and id, and its goal where the goal is known. The document says which
headers a publisher outside plangate must send: none.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from kombu import Queue

from plangate.bus import Envelope
from plangate.embedded import Pipeline
from schemas import GoalSubmitted
from schemas.asyncapi import asyncapi_document
from schemas.messages import DeadLetter
from tests.conftest import SEED_GOAL
from tests.support import HELD, eventually, publish_goal


@pytest.fixture
def dead_watch(pipeline: Pipeline) -> Iterator[Queue]:
    """A queue of a foreign observer's, bound to `dead.#` as docs/publishing-goals.md says."""
    with pipeline.bus.connection() as connection:
        queue = Queue(
            "billing.dead-watch",
            exchange=pipeline.bus.topology.exchange,
            routing_key="dead.#",
        ).bind(connection.channel())
        queue.declare()
        yield queue
        queue.delete()


def next_dead_letter(queue: Queue) -> tuple[dict[str, str], DeadLetter]:
    """Wait for the next envelope on the observer's queue; return its headers and letter."""
    raw = eventually(lambda: queue.get(no_ack=True), what="a dead letter")
    assert raw.delivery_info["routing_key"].startswith("dead.")
    return dict(raw.headers), DeadLetter.model_validate_json(raw.body)


def headers_schema(message: str) -> dict[str, Any]:
    """The headers schema the AsyncAPI document gives `message` (its refs resolved)."""
    document = asyncapi_document()
    ref = document["components"]["messages"][message]["headers"]["$ref"]
    return document["components"]["schemas"][ref.rsplit("/", 1)[1]]  # type: ignore[no-any-return]


def test_a_refused_goal_s_dead_letter_names_its_type_id_and_goal_in_its_headers(
    pipeline: Pipeline, dead_watch: Queue
) -> None:
    """Given a goal stored with the idempotency key "nightly", and an observer on `dead.#`,
    When a foreign service publishes, with no header, goal `foreign-1` with that key,
    Then the planner refuses it, and the dead letter's envelope names its type (`dead.letter`),
    its own message id and goal `foreign-1`, as the AsyncAPI document's dead-letter headers
    require (it carried only `x-plangate-sent-at`).
    """
    first = pipeline.submit(SEED_GOAL, idempotency_key="nightly").goal_id
    pipeline.wait_for(first, HELD)
    refused = GoalSubmitted(goal_id="foreign-1", text="another goal", idempotency_key="nightly")

    publish_goal(pipeline, refused)

    headers, letter = next_dead_letter(dead_watch)
    assert letter.reason.startswith("the idempotency key 'nightly' is goal")
    assert headers["x-plangate-type"] == "dead.letter"
    assert headers["x-plangate-message-id"] == letter.message_id
    assert headers["x-plangate-goal-id"] == "foreign-1"
    jsonschema.Draft202012Validator(headers_schema("deadLetter")).validate(headers)


def test_an_unreadable_message_s_dead_letter_names_no_goal(
    pipeline: Pipeline, dead_watch: Queue
) -> None:
    """Given an observer on `dead.#`,
    When a message that is not JSON is published on `goal.submitted`, claiming goal `g1` in
    its header,
    Then its dead letter names its type and id but no goal (none is known: a header is only
    what its sender claims, and is kept in the letter's `headers`), and matches the document.
    """
    pipeline.bus.publish([Envelope("goal.submitted", b"{not json", {"x-plangate-goal-id": "g1"})])

    headers, letter = next_dead_letter(dead_watch)
    assert headers["x-plangate-type"] == "dead.letter"
    assert headers["x-plangate-message-id"] == letter.message_id
    assert "x-plangate-goal-id" not in headers
    assert letter.headers["x-plangate-goal-id"] == "g1"
    jsonschema.Draft202012Validator(headers_schema("deadLetter")).validate(headers)


def test_a_goal_published_with_no_header_runs_and_the_document_requires_none(
    pipeline: Pipeline,
) -> None:
    """Given the AsyncAPI document's headers for `goal.submitted`,
    When a foreign service publishes a goal with no header at all,
    Then the goal runs, and the document requires no header of it (it required the goal and
    message ids, which the code never did); plangate's own messages must carry them.
    """
    goal = GoalSubmitted(goal_id="no-headers", text="how many tickets are open")

    publish_goal(pipeline, goal)

    assert pipeline.wait_for("no-headers", timeout=10).status == "completed"
    jsonschema.Draft202012Validator(headers_schema("goalSubmitted")).validate({})
    with pytest.raises(jsonschema.ValidationError, match="x-plangate-goal-id"):
        jsonschema.Draft202012Validator(headers_schema("planProposed")).validate({})


def test_plangate_s_own_messages_carry_the_headers_the_document_requires(
    pipeline: Pipeline,
) -> None:
    """Given an observer bound to `plan.#`,
    When a goal is planned,
    Then its `plan.proposed` carries the headers the document's `Headers` requires, its type
    among them.
    """
    with pipeline.bus.connection() as connection:
        queue = Queue(
            "billing.events", exchange=pipeline.bus.topology.exchange, routing_key="plan.#"
        ).bind(connection.channel())
        queue.declare()
        try:
            goal_id = pipeline.submit(SEED_GOAL).goal_id
            raw = eventually(lambda: queue.get(no_ack=True), what="plan.proposed")
        finally:
            queue.delete()

    headers = dict(raw.headers)
    jsonschema.Draft202012Validator(headers_schema("planProposed")).validate(headers)
    assert headers["x-plangate-type"] == json.loads(raw.body)["type"] == "plan.proposed"
    assert headers["x-plangate-goal-id"] == goal_id


def test_a_listed_dead_letter_stays_in_its_queue_with_its_headers(pipeline: Pipeline) -> None:
    """Given a dead letter in the dead-letter queue (not on Redis, where listing peeks),
    When an operator lists the queue (`plangate dlq list`), which takes each letter and puts it
    back,
    Then the letter put back still carries its headers (it went back with none).
    """
    pipeline.bus.publish([Envelope("goal.submitted", b"{not json", {})])
    eventually(lambda: pipeline.bus.dead_letters(), what="a dead letter")

    [listed] = pipeline.bus.dead_letters()

    with pipeline.bus.connection() as connection:
        queue = pipeline.bus.topology.dead_letter_queue().bind(connection.channel())
        raw = queue.get(no_ack=True)
    assert raw is not None
    assert raw.headers["x-plangate-message-id"] == listed.message_id
    assert raw.headers["x-plangate-type"] == "dead.letter"
