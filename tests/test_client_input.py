"""The Python client refuses what the HTTP intake refuses, before it stores anything.

`Client.submit` stored a goal whose text held NUL: the planner dead-lettered its message, and the
goal stayed `submitted` for ever, where `POST /api/v1/goals` answered 422. Values of the wrong
type failed deep inside (AttributeError) or were taken (`metadata=[]`); `Client.goal(None)` or
`Client.goal("")` failed in SQLAlchemy; `list_goals(since="1d")`, which the API takes, too.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from plangate.client import Client
from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.errors import Conflict, GoalEnded, InputInvalid
from plangate.store import OutboxRow, open_store
from tests.support import memory_client, outer_environment


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    """A client on a migrated SQLite store and the memory transport."""
    with memory_client(settings) as opened:
        yield opened


@pytest.mark.parametrize(
    ("text", "given", "said"),
    [
        ("text with \x00 NUL", {}, "holds NUL, which cannot be stored"),
        ("a lone \ud800 surrogate", {}, "holds a lone surrogate"),
        ("fine", {"metadata": {"team": "s\x00re"}}, "holds NUL"),
        ("fine", {"idempotency_key": "key-\x00"}, "holds a control character"),
        (None, {}, "the goal's text: Input should be a valid string"),
        (5, {}, "the goal's text: Input should be a valid string"),
        ("fine", {"idempotency_key": 5}, "idempotency_key: Input should be a valid string"),
        ("fine", {"metadata": []}, "metadata: Input should be a valid dictionary"),
        ("fine", {"metadata": {"team": 5}}, "metadata.team: Input should be a valid string"),
        ("   ", {}, "the goal is empty"),
        ("fine", {"idempotency_key": " "}, "the idempotency key is empty"),
    ],
)
def test_submit_refuses_what_the_intake_refuses_and_stores_nothing(
    client: Client, text: Any, given: dict[str, Any], said: str
) -> None:
    """Given a goal the HTTP intake would refuse (NUL, a lone surrogate, a wrong type),
    When a library caller submits it with the Python client,
    Then InputInvalid says what is wrong, and no goal was stored to wait for ever
    (before, NUL was stored and dead-lettered, and wrong types raised AttributeError).
    """
    with pytest.raises(InputInvalid, match=said):
        client.submit(text, **given)
    assert client.list_goals().goals == []


@pytest.mark.parametrize(
    ("goal_id", "said"), [(None, "the goal id is a NoneType"), ("", "the goal id is empty")]
)
def test_a_goal_asked_for_by_no_id_is_refused_saying_so(
    client: Client, goal_id: Any, said: str
) -> None:
    """Given no goal id (None, or empty text),
    When the client is asked for that goal,
    Then InputInvalid says to give a goal's id (it was a TypeError, or an SAWarning).
    """
    with pytest.raises(InputInvalid, match=said):
        client.goal(goal_id)


def test_list_goals_takes_an_age_as_the_api_does(client: Client) -> None:
    """Given a goal submitted now,
    When the client lists goals `since="1d"`, as `GET /api/v1/goals?since=1d` takes it,
    Then the goal is listed (it was a raw SQLAlchemy StatementError); and text that is no age
    nor time is refused saying what to give.
    """
    goal = client.submit("Check Jira ticket count")
    assert [g.goal_id for g in client.list_goals(since="1d").goals] == [goal.goal_id]
    with pytest.raises(InputInvalid, match="neither an age"):
        client.list_goals(since="yesterday")


def test_the_same_key_with_other_metadata_is_refused(client: Client) -> None:
    """Given a goal submitted with idempotency key "ticket-42" and metadata team=sre,
    When the same key and text come again with metadata team=billing,
    Then Conflict says the key was given with other data and what to do, naming neither the
    goal nor what differs (the intake token reads any goal by its id: the refusal handed
    another service's goal to whoever tried its key); the same metadata again is still the
    duplicate it was.
    """
    first = client.submit("Check Jira", idempotency_key="ticket-42", metadata={"team": "sre"})
    with pytest.raises(Conflict) as refused:
        client.submit("Check Jira", idempotency_key="ticket-42", metadata={"team": "billing"})
    again = client.submit("Check Jira", idempotency_key="ticket-42", metadata={"team": "sre"})
    assert str(refused.value) == (
        "the idempotency key 'ticket-42' was given to another goal, or to this one with another "
        "text or metadata; give each new goal a key of its own, or send the first goal's text "
        "and metadata unchanged"
    )
    assert first.goal_id not in str(refused.value)
    assert (again.goal_id, again.duplicate) == (first.goal_id, True)


@pytest.mark.parametrize(
    ("wait", "said"),
    [
        ({"timeout": -1}, "timeout must be a number of seconds, 0 or more, not -1"),
        ({"timeout": float("nan")}, "timeout must be a number of seconds"),
        ({"until": {"bogus"}}, "until names no goal state: 'bogus'"),
        ({"until": "completed"}, r"until must be a set of states \(\{'completed'\}\)"),
    ],
    ids=["negative", "nan", "no-such-state", "a-text"],
)
def test_a_wait_that_cannot_mean_anything_is_refused(
    client: Client, wait: dict[str, Any], said: str
) -> None:
    """`result(timeout=-1)` said the goal "is still submitted after -1 s", and `wait(until=
    {"bogus"})` waited out its timeout for a state no goal has."""
    handle = client.submit("How many tickets are open right now?")

    with pytest.raises(InputInvalid, match=said):
        handle.wait(**wait)


def test_a_wait_for_a_state_a_finished_goal_cannot_reach_ends_at_once(pipeline: Pipeline) -> None:
    """Given a goal that has completed,
    When a client waits for it to be held,
    Then GoalEnded says at once that it is completed and will not be held (it waited out the
    timeout, then said the goal "is still completed after 10 s").
    """
    goal_id = pipeline.submit("How many tickets are open right now?").goal_id
    pipeline.wait_for(goal_id, timeout=10)
    with Client(pipeline.settings) as client:
        handle = client.goal(goal_id)
        began = time.monotonic()
        with pytest.raises(GoalEnded, match="is completed; it has ended, and will not become held"):
            handle.wait(10, until={"held"})
    assert time.monotonic() - began < 2


@pytest.mark.redis
def test_a_client_never_closed_marks_what_it_sent_as_the_interpreter_exits(
    tmp_path: Path, redis_url: str
) -> None:
    """Given a script doing `Client().submit(...)` five times and never closing it (as the
    deploy docs' one-liner), When it exits, Then every goal's message is marked sent: left
    unmarked, the relay sent each goal a second time, and warned as if the broker had failed."""
    database_url = f"sqlite:///{tmp_path / 'plangate.db'}"
    open_store(database_url).close()  # migrated, as `plangate db upgrade`
    script = (
        "from plangate.client import Client\n"
        "from plangate.config import Settings\n"
        f"client = Client(Settings(broker_url={redis_url!r}, database_url={database_url!r}, "
        f"data_dir={str(tmp_path / 'data')!r}, namespace='unclosed'))\n"
        "for number in range(5):\n"
        "    client.submit(f'goal {number}')\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script],
        env=outer_environment() | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr

    store = open_store(database_url, upgrade=False)
    try:
        with store.session() as session:
            rows = session.execute(select(OutboxRow.sent_at)).scalars().all()
    finally:
        store.close()
    assert len(rows) == 5
    assert all(sent is not None for sent in rows)


def test_a_plain_goal_s_metadata_may_not_claim_a_cloudevent_s_source(client: Client) -> None:
    """`plangate submit --meta ce.source=urn:evil` and the Python client took it: `goals list`
    then showed urn:evil as the goal's CloudEvent source."""
    for key in ("ce.source", "CE.id", " ce.type"):
        with pytest.raises(InputInvalid, match=r"metadata keys beginning 'ce\.'"):
            client.submit("check the tickets", metadata={key: "urn:evil"})
