"""A CloudEvent's goal is keyed by its (source, id), which no other event nor plain key shares.

The key was `{source}/{id}`: the events (`/a`, `b/c`) and (`/a/b`, `c`) had one key, so the
second was answered as a duplicate of the first and never planned; and a plain goal's key
`/billing/evt-777` took the event (`/billing`, `evt-777`), which was then refused with 409 and
advice about keys that an event's sender cannot follow.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest

from plangate.client import Client
from plangate.config import Settings
from plangate.server import create_app
from plangate.store import open_store
from plangate.store.goals import store_goal
from schemas import GoalSubmitted
from tests.fleet import serving_app
from tests.support import memory_client

GOAL_EVENT = "dev.plangate.goal.submitted"
Answer = tuple[int, dict[str, Any]]


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    """A client on a migrated SQLite store and the memory transport."""
    with memory_client(settings) as opened:
        yield opened


@pytest.fixture
def base_url(client: Client) -> Iterator[str]:
    """`plangate serve`'s app on that client; its base URL."""
    with serving_app(create_app(client.settings, client=client)) as url:
        yield url


def post(base_url: str, payload: object, content_type: str = "application/json") -> Answer:
    request = urllib.request.Request(
        f"{base_url}/api/v1/goals",
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def send_event(base_url: str, source: str, event_id: str, text: str = "Check Jira") -> Answer:
    event = {"specversion": "1.0", "type": GOAL_EVENT, "source": source, "id": event_id}
    return post(base_url, {**event, "data": {"text": text}}, "application/cloudevents+json")


def test_two_events_whose_source_and_id_join_alike_are_two_goals(base_url: str) -> None:
    """Given the event (source "/a", id "b/c") submitted,
    When the event (source "/a/b", id "c") comes, another event with the same text,
    Then it makes a goal of its own (201), not a duplicate of the first (it was 200).
    """
    first_status, first = send_event(base_url, "/a", "b/c")
    second_status, second = send_event(base_url, "/a/b", "c")

    assert (first_status, second_status) == (201, 201), (first, second)
    assert second["goal_id"] != first["goal_id"]
    assert second["duplicate"] is False


def test_a_plain_key_that_reads_like_an_event_does_not_take_the_event(base_url: str) -> None:
    """Given a plain goal with idempotency key "/billing/evt-777",
    When the event (source "/billing", id "evt-777") comes with another text,
    Then the event makes a goal of its own (it was refused with 409 about keys).
    """
    plain_status, plain = post(
        base_url, {"text": "Restart billing", "idempotency_key": "/billing/evt-777"}
    )
    event_status, event = send_event(base_url, "/billing", "evt-777")

    assert (plain_status, event_status) == (201, 201), (plain, event)
    assert event["goal_id"] != plain["goal_id"]


def test_a_plain_key_in_the_events_space_is_refused_saying_so(base_url: str) -> None:
    """Given an event's goal already submitted,
    When a plain goal comes with a key beginning "cloudevent:", as events' keys do,
    Then it is refused (422) saying the prefix names CloudEvents' goals and what to do.
    """
    assert send_event(base_url, "/billing", "evt-1")[0] == 201
    status, answer = post(
        base_url, {"text": "Check Jira", "idempotency_key": 'cloudevent:["/billing","evt-1"]'}
    )
    assert status == 422, answer
    assert "which names CloudEvents' goals; choose a key that begins otherwise" in answer["error"]


def test_the_same_event_with_another_text_is_refused_with_advice_for_events(
    base_url: str,
) -> None:
    """Given the event (source "/billing", id "evt-2") submitted,
    When an event with that source and id comes with another text,
    Then 409 says to give each new event an id of its own (not to choose another key).
    """
    assert send_event(base_url, "/billing", "evt-2")[0] == 201
    status, answer = send_event(base_url, "/billing", "evt-2", text="Restart billing")
    assert status == 409, answer
    assert "give each new event an id of its own" in answer["error"]


def test_an_event_resent_after_the_upgrade_finds_its_goal_under_the_old_key(
    base_url: str, client: Client
) -> None:
    """Given a goal stored before the upgrade for the event (source "/billing", id "evt-3"),
    under that version's key "/billing/evt-3",
    When the same event is sent again,
    Then it is the same goal (200, duplicate), not a second one.
    """
    labels = {"ce.source": "/billing", "ce.id": "evt-3", "ce.type": GOAL_EVENT}
    # Stored as that version stored it (a plain submission may no longer carry ce.* labels).
    before = GoalSubmitted(
        goal_id=uuid4().hex, text="Check Jira", metadata=labels, idempotency_key="/billing/evt-3"
    )
    store = open_store(client.settings.resolved_database_url(), upgrade=False)
    try:
        with store.session() as session:
            store_goal(session, before, {})
    finally:
        store.close()

    status, answer = send_event(base_url, "/billing", "evt-3")

    assert (status, answer["goal_id"], answer["duplicate"]) == (200, before.goal_id, True)


def test_a_long_event_id_still_yields_one_goal(base_url: str) -> None:
    """Given an event whose id is 500 characters long (the key is then a digest),
    When it is sent twice,
    Then the second is the first goal (200, duplicate).
    """
    long_id = "e" * 500
    first_status, first = send_event(base_url, "/billing", long_id)
    second_status, second = send_event(base_url, "/billing", long_id)
    assert (first_status, second_status) == (201, 200), (first, second)
    assert second["goal_id"] == first["goal_id"]
