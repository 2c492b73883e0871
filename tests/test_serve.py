"""`plangate serve`: goals over real HTTP (plain JSON and CloudEvents) into a real worker fleet."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from cloudevents.core.bindings.http import to_binary_event
from cloudevents.core.v1.event import CloudEvent
from pydantic import SecretStr

from plangate.bus import Bus, Envelope
from plangate.client import Client
from plangate.server import create_app
from plangate.server.reviewers import Reviewer, Reviewers
from schemas import GoalSubmitted
from tests.conftest import SEED_GOAL
from tests.fleet import FAST_SWEEPS, Fleet, serving_app
from tests.servers import free_port
from tests.support import eventually

pytestmark = pytest.mark.redis

APPROVE_ALL = """
rules:
  - name: approve-everything
    match: "true"
    action: approve
    reason: the serve tests approve every plan
"""
TOKEN = "s3cret-intake-token"
JSON = "application/json"
GOAL_EVENT = "dev.plangate.goal.submitted"

Answer = tuple[int, dict[str, str], dict[str, Any]]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Fleet]:
    """A migrated SQLite store, an approve-everything policy and one worker of each stage."""
    folder = tmp_path_factory.mktemp("serve")
    policy = folder / "policy.yaml"
    policy.write_text(APPROVE_ALL)
    fleet = Fleet(
        broker_url=redis_url,
        database_url=f"sqlite:///{folder / 'plangate.db'}",
        folder=folder,
        extra_env={"PLANGATE_POLICY_FILE": str(policy), **FAST_SWEEPS},
    )
    upgrade = fleet.plangate("db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    fleet.start_all()
    try:
        yield fleet
    finally:
        fleet.stop_all()


@pytest.fixture(scope="module")
def client(fleet: Fleet) -> Iterator[Client]:
    settings = fleet.settings()
    with Client(settings) as shared:
        yield shared


@contextmanager
def serving(client: Client, token: str | None) -> Iterator[str]:
    """Run the app under uvicorn in a thread on a free port; yield its base URL."""
    with serving_app(create_app(client.settings, client=client, intake_token=token)) as url:
        yield url


@pytest.fixture(scope="module")
def base_url(client: Client) -> Iterator[str]:
    with serving(client, token=None) as url:
        yield url


@pytest.fixture(scope="module")
def secured_url(client: Client) -> Iterator[str]:
    with serving(client, token=TOKEN) as url:
        yield url


def call(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> Answer:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), json.loads(error.read())


def post_json(base_url: str, payload: object, **headers: str) -> Answer:
    return call(
        f"{base_url}/api/v1/goals",
        "POST",
        json.dumps(payload).encode(),
        {"Content-Type": "application/json", **headers},
    )


def structured_event(event_id: str, text: str = SEED_GOAL) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "type": GOAL_EVENT,
            "source": "/tests/serve",
            "id": event_id,
            "datacontenttype": "application/json",
            "data": {"text": text, "metadata": {"team": "sre"}},
        }
    ).encode()


def post_structured(base_url: str, body: bytes) -> Answer:
    headers = {"Content-Type": "application/cloudevents+json"}
    return call(f"{base_url}/api/v1/goals", "POST", body, headers)


def test_a_plain_json_goal_is_accepted_and_completes(base_url: str, fleet: Fleet) -> None:
    """Given the server and a fleet of workers,
    When a goal is POSTed as plain JSON,
    Then it answers 201 with the goal's id and Location, and the goal completes.
    """
    status, headers, body = post_json(base_url, {"text": SEED_GOAL, "metadata": {"by": "test"}})

    assert status == 201, body
    assert body["duplicate"] is False
    assert body["queued"] is False
    assert body["trace_id"]
    assert headers["location"] == f"/api/v1/goals/{body['goal_id']}"
    deadline = time.monotonic() + 30
    while True:
        status, _, state = call(base_url + headers["location"])
        assert status == 200, state
        if state["terminal"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert state["status"] == "completed", fleet.logs()
    assert state["steps"] == {"count": "succeeded", "sla": "succeeded", "notify": "succeeded"}


def test_a_goal_accepted_while_the_servers_broker_is_unreachable_is_queued_and_completes(
    fleet: Fleet,
) -> None:
    """Given a server whose broker cannot be reached (the workers' still can),
    When a goal is POSTed,
    Then it answers 201 with `queued: true` within seconds, and the workers' relay sends the
    stored goal on: it completes.
    """
    unreachable = fleet.settings().model_copy(
        update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"}
    )
    with Client(unreachable) as cut_off, serving(cut_off, token=None) as url:
        status, headers, body = post_json(url, {"text": SEED_GOAL})

        assert status == 201, body
        assert body["queued"] is True
        deadline = time.monotonic() + 30
        while True:
            _, _, state = call(url + headers["location"])
            if state["terminal"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert state["status"] == "completed", fleet.logs()


def test_a_structured_cloudevent_makes_a_goal(base_url: str, client: Client) -> None:
    status, _, body = post_structured(base_url, structured_event(uuid.uuid4().hex))

    assert status == 201, body
    goal = client.status(body["goal_id"])
    assert goal.goal_id == body["goal_id"]


def test_a_binary_cloudevent_made_with_the_sdk_makes_a_goal(base_url: str) -> None:
    event = CloudEvent(
        attributes={
            "type": GOAL_EVENT,
            "source": "urn:other-service",
            "id": uuid.uuid4().hex,
            "datacontenttype": "application/json",
        },
        data={"text": SEED_GOAL},
    )
    message = to_binary_event(event)

    status, _, body = call(f"{base_url}/api/v1/goals", "POST", message.body, message.headers)

    assert status == 201, body
    assert body["duplicate"] is False


def test_the_same_cloudevent_twice_makes_one_goal(base_url: str) -> None:
    """Given one CloudEvent (source + id), sent twice (a retrying publisher),
    Then the first answer is 201, the second 200 with the same goal and duplicate=true.
    """
    event = structured_event(uuid.uuid4().hex)

    first = post_structured(base_url, event)
    second = post_structured(base_url, event)

    assert first[0] == 201, first
    assert second[0] == 200, second
    assert second[2]["goal_id"] == first[2]["goal_id"]
    assert second[2]["duplicate"] is True


def test_bad_json_is_400_with_a_message(base_url: str) -> None:
    status, _, body = call(
        f"{base_url}/api/v1/goals", "POST", b"{not json", {"Content-Type": "application/json"}
    )

    assert status == 400
    assert "not valid JSON" in body["error"]


def test_an_event_without_an_id_is_400(base_url: str) -> None:
    event = json.loads(structured_event("x"))
    del event["id"]

    status, _, body = post_structured(base_url, json.dumps(event).encode())

    assert status == 400
    assert "CloudEvent" in body["error"]


def test_another_event_type_is_422(base_url: str) -> None:
    event = json.loads(structured_event(uuid.uuid4().hex))
    event["type"] = "com.example.other"

    status, _, body = post_structured(base_url, json.dumps(event).encode())

    assert status == 422
    assert GOAL_EVENT in body["error"]


def test_a_wrong_content_type_is_415(base_url: str) -> None:
    status, _, body = call(
        f"{base_url}/api/v1/goals", "POST", b"text=hello", {"Content-Type": "text/plain"}
    )

    assert status == 415
    assert "application/json" in body["error"]


def test_an_oversized_body_is_413(base_url: str) -> None:
    status, _, body = post_json(base_url, {"text": "x" * (70 * 1024)})

    assert status == 413
    assert "KiB" in body["error"]


def test_a_goal_without_text_is_422(base_url: str) -> None:
    status, _, body = post_json(base_url, {"metadata": {"team": "sre"}})

    assert status == 422
    assert "text" in body["error"]


def test_an_unknown_goal_is_404(base_url: str) -> None:
    status, _, body = call(f"{base_url}/api/v1/goals/no-such-goal")

    assert status == 404
    assert "no-such-goal" in body["error"]


def test_a_token_is_required_when_set(secured_url: str) -> None:
    """Given PLANGATE_INTAKE_TOKEN, a goal without the bearer token is 401, with it 201."""
    without = post_json(secured_url, {"text": SEED_GOAL})
    wrong = post_json(secured_url, {"text": SEED_GOAL}, Authorization="Bearer nope")
    with_token = post_json(secured_url, {"text": SEED_GOAL}, Authorization=f"Bearer {TOKEN}")

    assert without[0] == 401
    assert "PLANGATE_INTAKE_TOKEN" in without[2]["error"]
    assert without[1]["www-authenticate"] == "Bearer"
    assert wrong[0] == 401
    assert with_token[0] == 201, with_token


def test_the_intake_token_is_rotated_with_the_previous_one_accepted_meanwhile(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a new PLANGATE_INTAKE_TOKEN and the old one in PLANGATE_INTAKE_TOKEN_PREVIOUS,
    When senders submit with each, with a third token and with none,
    Then the new and the old pass (the old one's use logged once, naming the sender: it was
    refused at once, all senders had to switch at the instant serve restarted), a wrong one is
    told it is not this intake's token (it read as if none had been sent), and none is told
    to send one; ten wrong tokens do not lock a reviewer at the same address out.
    """
    old, new = "o" * 40, "n" * 40
    settings = client.settings.model_copy(update={"intake_token_previous": SecretStr(old)})
    reviewer_token = "r" * 40
    reviewers = Reviewers([Reviewer.with_token("alice", reviewer_token)])
    app = create_app(settings, client=client, intake_token=new, reviewers=reviewers)
    with serving_app(app) as url, caplog.at_level("WARNING", logger="plangate.server.auth"):
        with_new = post_json(url, {"text": SEED_GOAL}, Authorization=f"Bearer {new}")
        with_old = [post_json(url, {"text": SEED_GOAL}, Authorization=f"Bearer {old}")]
        with_old.append(post_json(url, {"text": SEED_GOAL}, Authorization=f"Bearer {old}"))
        wrong = [
            post_json(url, {"text": SEED_GOAL}, Authorization="Bearer replaced") for _ in range(10)
        ]
        without = post_json(url, {"text": SEED_GOAL})
        listed = call(f"{url}/api/v1/goals", headers={"Authorization": f"Bearer {reviewer_token}"})

    assert with_new[0] == 201, with_new
    assert [answer[0] for answer in with_old] == [201, 201]
    said = [r.getMessage() for r in caplog.records if r.name == "plangate.server.auth"]
    assert said == [
        "127.0.0.1 sent the previous intake token (PLANGATE_INTAKE_TOKEN_PREVIOUS): give it the "
        "new one; unset the previous once every sender has it"
    ]
    assert wrong[0][0] == 401
    assert "the bearer token is not this intake's token" in wrong[0][2]["error"]
    assert without[0] == 429  # past the limit: the eleventh try from that address
    assert listed[0] == 200, listed


def test_the_openapi_document_describes_intake(base_url: str) -> None:
    with urllib.request.urlopen(f"{base_url}/openapi.json", timeout=10) as response:
        spec = json.loads(response.read())
    with urllib.request.urlopen(f"{base_url}/docs", timeout=10) as response:
        assert response.status == 200

    submit = spec["paths"]["/api/v1/goals"]["post"]
    assert {"application/json", "application/cloudevents+json"} <= set(
        submit["requestBody"]["content"]
    )
    # Read from the request by hand, so FastAPI did not list them: a generated client could
    # not send the key as a header, nor read where the goal is.
    assert {"Idempotency-Key", "traceparent"} <= {p["name"] for p in submit["parameters"]}
    assert "Location" in submit["responses"]["201"]["headers"]
    assert "Location" in submit["responses"]["200"]["headers"]


def test_a_callers_traceparent_becomes_the_goals_trace(base_url: str) -> None:
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"

    status, _, body = post_json(base_url, {"text": SEED_GOAL}, traceparent=traceparent)

    assert status == 201, body
    assert body["trace_id"] == trace_id


def test_the_same_event_racing_makes_one_goal(base_url: str) -> None:
    """Given one CloudEvent sent by 8 clients at once, every answer names the same goal."""
    event = structured_event(uuid.uuid4().hex)
    answers: list[Answer] = []

    threads = [
        threading.Thread(target=lambda: answers.append(post_structured(base_url, event)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)

    assert len(answers) == 8
    assert len({answer[2]["goal_id"] for answer in answers}) == 1, answers
    assert sorted(answer[0] for answer in answers) == [200] * 7 + [201]


def test_with_an_intake_token_reviewers_still_list_follow_and_cancel_goals(client: Client) -> None:
    """Given PLANGATE_INTAKE_TOKEN and a reviewer, each route asks for its own caller's token:
    submitting the intake token; listing and cancelling a reviewer's; a goal's state either.
    (Both were asked for at once, in the one `Authorization` header: nobody could list.)
    """
    reviewer_token = "r" * 40
    reviewers = Reviewers([Reviewer.with_token("alice", reviewer_token)])
    app = create_app(client.settings, client=client, intake_token=TOKEN, reviewers=reviewers)
    intake = {"Authorization": f"Bearer {TOKEN}"}
    alice = {"Authorization": f"Bearer {reviewer_token}"}
    with serving_app(app) as url:
        status, _, accepted = post_json(url, {"text": SEED_GOAL}, **intake)
        assert status == 201, accepted
        goal = f"{url}/api/v1/goals/{accepted['goal_id']}"

        assert post_json(url, {"text": SEED_GOAL}, **alice)[0] == 401
        assert call(goal, headers=intake)[0] == 200
        assert call(goal, headers=alice)[0] == 200
        assert call(goal)[0] == 401
        listed = call(f"{url}/api/v1/goals", headers=alice)
        assert listed[0] == 200, listed
        assert call(f"{url}/api/v1/goals", headers=intake)[0] == 401
        cancelled = call(f"{goal}/cancel", "POST", b"{}", {**alice, "Content-Type": JSON})
        assert cancelled[0] in (200, 409), cancelled


def labelled_event(labels: int) -> bytes:
    metadata = {f"label{index}": "x" for index in range(labels)}
    event = json.loads(structured_event(uuid.uuid4().hex, "count open tickets"))
    event["data"]["metadata"] = metadata
    return json.dumps(event).encode()


def test_a_cloudevent_may_carry_as_many_labels_as_a_plain_goal(base_url: str) -> None:
    """Given CloudEvents whose data holds 61 labels (with the event's source, id and type, which
    are kept too, 64), and one holding 62,
    Then the first makes a goal and the second is refused naming the limit; the event's three
    labels were counted against the submitter's 50, so 48 were refused and the error spoke
    of a 51st label nobody sent.
    """
    status, _, answer = post_structured(base_url, labelled_event(61))
    assert status == 201, answer

    status, _, answer = post_structured(base_url, labelled_event(62))
    assert status == 422, answer
    assert "at most 64 items" in json.dumps(answer)


def test_an_event_with_base64_data_is_told_to_send_json_data(base_url: str) -> None:
    event = json.loads(structured_event(uuid.uuid4().hex))
    del event["data"]
    event["data_base64"] = "eyJ0ZXh0IjogImhpIn0="
    status, _, answer = post_structured(base_url, json.dumps(event).encode())

    assert status == 422, answer
    assert "not `data_base64`" in json.dumps(answer)


def test_a_publishers_own_short_id_is_polled_as_itself_never_as_anothers_start(
    base_url: str, client: Client
) -> None:
    """A foreign publisher may choose an id of 8 hex digits, which may be the start of a goal
    plangate made. Before the planner stored it, polling it answered the other goal's outcome
    (a short id, found by its start); once stored, always 409 ("give the whole id"). Programs
    poll with whole ids: the API takes nothing else (the page for people still does)."""
    code, _, made = post_json(base_url, {"text": SEED_GOAL})
    assert code == 201
    short = made["goal_id"][:8]

    before, _, said = call(f"{base_url}/api/v1/goals/{short}")
    bus = Bus(client.settings.broker_url, client.settings.namespace)
    try:
        bus.publish([Envelope.of(GoalSubmitted(goal_id=short, text=SEED_GOAL))])
    finally:
        bus.close()

    def polled_as_itself() -> dict[str, Any] | None:
        code, _, state = call(f"{base_url}/api/v1/goals/{short}")
        return state if code == 200 else None

    state = eventually(polled_as_itself, timeout=30, what="the publisher's goal stored")
    assert (before, said["error"].startswith(f"no goal '{short}'")) == (404, True)
    # It said nothing of whole ids; and "a short id needs 6 characters" to a shorter one, as if
    # a longer start would do.
    assert (
        "(here a goal's whole id, as its submission answered it or its publisher" in said["error"]
    )
    assert state["goal_id"] == short


def test_a_structured_cloudevents_traceparent_becomes_the_goals_trace(base_url: str) -> None:
    """Given a structured-mode CloudEvent carrying the distributed-tracing extension
    (`traceparent` in the event, no HTTP header),
    When it is POSTed,
    Then the goal joins the sender's trace (it started a trace of its own).
    """
    trace_id = uuid.uuid4().hex
    event = json.loads(structured_event(uuid.uuid4().hex))
    event["traceparent"] = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"

    status, _, body = post_structured(base_url, json.dumps(event).encode())

    assert status == 201, body
    assert body["trace_id"] == trace_id
