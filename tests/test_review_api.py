"""The review API over real HTTP, against a worker fleet on Redis with the default policy.

The default policy holds the seed plan (notify_oncall writes), so every goal here waits for a
reviewer: approve it and it runs; reject it and nothing runs; edit it and the policy decides the
new revision again.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from plangate.client import Client, GoalStatus
from plangate.config import Settings
from plangate.server import create_app
from plangate.server.reviewers import Reviewer, Reviewers, ReviewersFile
from tests.conftest import SEED_GOAL
from tests.fleet import FAST_SWEEPS, Fleet, serving_app
from tests.support import eventually, write_reviewers

pytestmark = pytest.mark.redis

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdefgh"
TEAM = [Reviewer.with_token("alice", ALICE, {"finance"}), Reviewer.with_token("bob", BOB)]
REVIEWERS = Reviewers(TEAM)

Answer = tuple[int, dict[str, Any]]


def start_fleet(folder: Path, redis_url: str) -> Fleet:
    """Migrate a SQLite store and start one worker of each stage, with the default policy."""
    fleet = Fleet(
        broker_url=redis_url,
        database_url=f"sqlite:///{folder / 'plangate.db'}",
        folder=folder,
        # The gate checks each approval by the reviewers serve knows (`REVIEWERS`).
        extra_env={
            "PLANGATE_REVIEWERS_FILE": str(write_reviewers(folder / "reviewers.yaml", TEAM)),
            **FAST_SWEEPS,
        },
    )
    upgrade = fleet.plangate("db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    fleet.start_all()
    return fleet


def fleet_settings(fleet: Fleet) -> Settings:
    """Settings that reach the fleet's store, broker and signing key."""
    return fleet.settings()


@contextmanager
def serving(client: Client, reviewers: Reviewers = REVIEWERS) -> Iterator[str]:
    """Run the app under uvicorn in a thread on a free port; yield its base URL."""
    with serving_app(create_app(client.settings, client=client, reviewers=reviewers)) as url:
        yield url


def held_goal(client: Client) -> GoalStatus:
    """Submit the seed goal and return it once the default policy has held it."""
    state = client.submit(SEED_GOAL).wait(timeout=30, until={"held", "completed", "failed"})
    assert state.status == "held", state
    return state


def wait_for(client: Client, goal_id: str, until: set[str], timeout: float = 30) -> GoalStatus:
    """Poll a goal until it reaches one of `until`."""
    return client.goal(goal_id).wait(timeout=timeout, until=until)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Fleet]:
    running = start_fleet(tmp_path_factory.mktemp("review-api"), redis_url)
    try:
        yield running
    finally:
        running.stop_all()


@pytest.fixture(scope="module")
def client(fleet: Fleet) -> Iterator[Client]:
    with Client(fleet_settings(fleet)) as shared:
        yield shared


@pytest.fixture(scope="module")
def base_url(client: Client) -> Iterator[str]:
    with serving(client) as url:
        yield url


def call(
    url: str, method: str = "GET", payload: object = None, token: str | None = ALICE
) -> Answer:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def review(base_url: str, plan_id: str, action: str, payload: object, **kw: Any) -> Answer:
    return call(f"{base_url}/api/v1/reviews/{plan_id}/{action}", "POST", payload, **kw)


def test_a_held_plan_is_listed_shown_and_runs_once_approved(
    base_url: str, client: Client, fleet: Fleet
) -> None:
    """Given the seed goal held by the default policy,
    When a reviewer lists, opens and approves it with the hash they saw,
    Then the list and the view show it; the answer says the approval is recorded and the
    gate releases the plan, pointing at the goal; and the goal completes.
    """
    goal = held_goal(client)
    assert goal.plan_id is not None

    status, listed = call(f"{base_url}/api/v1/reviews")
    assert status == 200, listed
    assert goal.plan_id in {item["plan_id"] for item in listed}

    status, plan = call(f"{base_url}/api/v1/reviews/{goal.plan_id}")
    assert status == 200, plan
    assert plan["goal_text"] == SEED_GOAL
    assert [(s["id"], s["effect"]) for s in plan["steps"]] == [
        ("count", "read"),
        ("sla", "read"),
        ("notify", "write"),
    ]
    assert plan["policy"]["rule"] == "hold-writes"
    assert plan["previous_revision"] is None

    status, outcome = review(base_url, goal.plan_id, "approve", {"plan_hash": plan["plan_hash"]})
    assert status == 200, outcome
    assert outcome["message"] == (
        "approval by alice recorded; the gate signs it and releases the plan"
    )
    assert outcome["status"] in {"approved", "running", "completed"}
    done = wait_for(client, goal.goal_id, {"completed", "failed"})
    assert done.status == "completed", fleet.logs()
    assert done.decision is not None
    assert done.decision["decided_by"] == "alice"


def test_a_held_plans_view_carries_its_dry_run(base_url: str, client: Client) -> None:
    """Given the seed goal held by the default policy, whose `hold-writes` rule asks for a preview,
    When a reviewer opens it once an executor worker has made the dry run,
    Then the view has each read's real output and what the write would do, and nothing ran.
    """
    goal = held_goal(client)

    def ready() -> dict[str, Any] | None:
        status, plan = call(f"{base_url}/api/v1/reviews/{goal.plan_id}")
        assert status == 200, plan
        return plan if plan["preview_state"] == "ready" else None

    plan = eventually(ready, timeout=30, what="the dry run")
    shown = [(s["step_id"], s["status"], s["output"], s["preview"]) for s in plan["preview"]]
    assert shown == [
        ("count", "ran", 128, None),
        ("sla", "ran", 100, None),
        (
            "notify",
            "previewed",
            None,
            "page the on-call engineer: 'Ticket count 128 exceeded SLA 100'",
        ),
    ]
    assert client.status(goal.goal_id).steps == {}


def test_a_rejected_plan_never_runs(base_url: str, client: Client) -> None:
    goal = held_goal(client)
    assert goal.plan_id is not None
    _, plan = call(f"{base_url}/api/v1/reviews/{goal.plan_id}")

    status, outcome = review(
        base_url,
        goal.plan_id,
        "reject",
        {"plan_hash": plan["plan_hash"], "comment": "not during the freeze"},
        token=BOB,
    )

    assert status == 200, outcome
    assert outcome["status"] == "rejected"
    state = client.status(goal.goal_id)
    assert state.status == "rejected"
    assert state.decision is not None
    assert state.decision["reason"] == "not during the freeze"
    assert set(state.steps.values()) == {"skipped"}  # none ran, each said so, as its results


def test_a_reject_without_a_comment_is_422(base_url: str, client: Client) -> None:
    goal = held_goal(client)
    assert goal.plan_id is not None
    _, plan = call(f"{base_url}/api/v1/reviews/{goal.plan_id}")

    status, body = review(base_url, goal.plan_id, "reject", {"plan_hash": plan["plan_hash"]})

    assert status == 422
    assert "comment" in body["error"]
    assert client.status(goal.goal_id).status == "held"


def test_an_edit_makes_a_new_revision_the_policy_decides_again(
    base_url: str, client: Client
) -> None:
    """Given a held plan,
    When a reviewer edits notify's message,
    Then revision 2 exists, the default policy holds it again, its diff shows the change,
    and the old revision's hash is refused with 409.
    """
    goal = held_goal(client)
    assert goal.plan_id is not None
    _, plan = call(f"{base_url}/api/v1/reviews/{goal.plan_id}")
    steps = [
        {k: v for k, v in s.items() if k != "effect" and v not in (None, [])} for s in plan["steps"]
    ]
    steps[2]["args"]["message"] = "Tickets ${count} over SLA ${sla}: please look"

    status, outcome = review(
        base_url, goal.plan_id, "edit", {"plan_hash": plan["plan_hash"], "steps": steps}
    )

    assert status == 200, outcome
    assert outcome["revision"] == 2
    assert outcome["plan_id"] != goal.plan_id
    again = wait_for(client, goal.goal_id, {"held", "completed", "failed"})
    assert again.status == "held"
    assert again.revision == 2
    status, new = call(f"{base_url}/api/v1/reviews/{outcome['plan_id']}")
    assert status == 200, new
    assert new["previous_revision"] == 1
    assert any("please look" in line for line in new["diff"] if line.startswith("+"))
    stale = review(base_url, goal.plan_id, "approve", {"plan_hash": plan["plan_hash"]})
    assert stale[0] == 409, stale
    assert "revision 2" in stale[1]["error"]


def test_an_invalid_edit_is_422_with_the_problems(base_url: str, client: Client) -> None:
    goal = held_goal(client)
    assert goal.plan_id is not None
    _, plan = call(f"{base_url}/api/v1/reviews/{goal.plan_id}")

    status, body = review(
        base_url,
        goal.plan_id,
        "edit",
        {"plan_hash": plan["plan_hash"], "steps": [{"id": "x", "tool": "no_such_tool"}]},
    )

    assert status == 422, body
    assert body["problems"]
    assert client.status(goal.goal_id).status == "held"


def test_two_racing_approvals_one_wins(base_url: str, client: Client) -> None:
    """Given one held revision and two reviewers approving it at once: one 200, one 409."""
    goal = held_goal(client)
    assert goal.plan_id is not None
    plan_id = goal.plan_id
    _, plan = call(f"{base_url}/api/v1/reviews/{plan_id}")
    answers: list[Answer] = []
    start = threading.Barrier(2)

    def approve(token: str) -> None:
        start.wait()
        answers.append(
            review(base_url, plan_id, "approve", {"plan_hash": plan["plan_hash"]}, token=token)
        )

    threads = [threading.Thread(target=approve, args=(t,)) for t in (ALICE, BOB)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(status for status, _ in answers) == [200, 409], answers
    refused = next(body for status, body in answers if status == 409)
    assert "not waiting for review" in refused["error"]
    assert wait_for(client, goal.goal_id, {"completed", "failed"}).status == "completed"


def test_a_missing_or_wrong_token_is_401(base_url: str) -> None:
    missing = call(f"{base_url}/api/v1/reviews", token=None)
    wrong = call(f"{base_url}/api/v1/reviews", token="not-a-reviewer-token-at-all")
    approve = review(base_url, "any", "approve", {"plan_hash": "x"}, token=None)

    assert missing[0] == 401
    assert "Bearer" in missing[1]["error"]
    assert wrong[0] == 401
    assert approve[0] == 401


def test_the_openapi_document_lists_the_review_routes(base_url: str) -> None:
    with urllib.request.urlopen(f"{base_url}/openapi.json", timeout=10) as response:
        spec = json.loads(response.read())

    assert "/api/v1/reviews" in spec["paths"]
    assert "/api/v1/reviews/{plan_id}/approve" in spec["paths"]
    assert "/reviews" not in spec["paths"]


def test_a_broken_reviewers_file_is_named_in_a_503_not_blamed_on_the_token(
    client: Client, tmp_path: Path
) -> None:
    """Given serve reading a reviewers file that alice is in,
    When the file is broken while serve runs, Then the API answers 503 saying the file
    cannot be read (it answered 401, "no reviewers are configured; add them"), and the login
    page says so too; once fixed, alice's token works again.
    """
    path = write_reviewers(tmp_path / "reviewers.yaml", TEAM)
    good = path.read_text()
    with serving(client, ReviewersFile(path)) as url:
        assert call(f"{url}/api/v1/reviews")[0] == 200
        path.write_text(good + "  - [this is not a reviewer\n")

        status, answer = call(f"{url}/api/v1/reviews")
        assert status == 503, answer
        assert "nobody can review until this is fixed: the reviewers file" in str(answer)
        assert "is not valid YAML (line 9)" in str(answer)
        login = urllib.request.Request(f"{url}/login", data=b"token=" + ALICE.encode())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(login, timeout=20)
        assert refused.value.code == 503
        assert "until the reviewers file is fixed" in refused.value.read().decode()

        path.write_text(good)
        assert call(f"{url}/api/v1/reviews")[0] == 200


def test_the_openapi_document_names_every_error_the_routes_answer(base_url: str) -> None:
    """A client generated from /openapi.json broke on answers it did not declare: the 409 of
    a key reused, the 429 (with Retry-After) of too many failed tokens, and a 422 shaped
    `{"detail": [...]}`, though every error plangate sends is `{"error": ...}`."""
    with urllib.request.urlopen(f"{base_url}/openapi.json", timeout=10) as response:
        spec = json.loads(response.read())

    submit = spec["paths"]["/api/v1/goals"]["post"]["responses"]
    assert "409" in submit
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            answers = operation["responses"]
            if "401" in answers:
                assert "Retry-After" in answers["429"]["headers"], path
            for code, answer in answers.items():
                if code.startswith("4"):
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/ErrorBody", (path, code)
    assert "HTTPValidationError" not in json.dumps(spec)


def test_the_openapi_document_says_how_each_token_is_sent(base_url: str) -> None:
    """It named no scheme: a client generated from it sent no Authorization header."""
    with urllib.request.urlopen(f"{base_url}/openapi.json", timeout=10) as response:
        spec = json.loads(response.read())

    scheme = spec["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            if "401" in operation["responses"]:
                assert operation["security"] == [{"bearer": []}], path
    assert spec["paths"]["/api/v1/reviews"]["get"]["security"] == [{"bearer": []}]


def test_readiness_says_reviews_are_down_with_a_broken_reviewers_file_and_stays_200(
    client: Client, tmp_path: Path
) -> None:
    """`/readyz` said ok while every review got 503: a probe watching serve saw nothing wrong.
    It stays 200 (goals are still taken) and says reviews are down until the file is fixed."""
    path = write_reviewers(tmp_path / "reviewers.yaml", TEAM)
    good = path.read_text()
    with serving(client, ReviewersFile(path)) as url:
        path.write_text(good + "  - [this is not a reviewer\n")
        broken = call(f"{url}/readyz", token=None)
        path.write_text(good)
        fixed = call(f"{url}/readyz", token=None)

    assert broken[0] == 200
    assert "nobody can review" in str(broken[1]["reviewers"])
    assert "reviewers" not in fixed[1]


def test_the_held_list_takes_a_limit_and_refuses_one_past_its_bound(
    base_url: str, client: Client
) -> None:
    """Every held plan came back, each read with several statements: 6.3 s and 1.7 MB at
    2,451 plans. `?limit=` bounds it (the oldest first), at most 1001."""
    held_goal(client)
    held_goal(client)

    status, listed = call(f"{base_url}/api/v1/reviews?limit=1")
    too_many, _ = call(f"{base_url}/api/v1/reviews?limit=5000")

    assert status == 200
    assert isinstance(listed, list)
    assert len(listed) == 1
    assert too_many == 422


def test_a_held_list_cut_by_its_limit_says_more_are_held(base_url: str, client: Client) -> None:
    """Given at least two held plans,
    When the API lists one, and then as many as are held,
    Then the first answer's `X-Plangate-More-Held: true` says more wait (an API client could
    not see a plan past the oldest 1,001, nor know there was one), and the whole list has none.
    """
    held_goal(client)
    held_goal(client)

    def listed(limit: int) -> tuple[int, str | None]:
        request = urllib.request.Request(
            f"{base_url}/api/v1/reviews?limit={limit}", headers={"Authorization": f"Bearer {ALICE}"}
        )
        with urllib.request.urlopen(request, timeout=20) as response:
            return len(json.loads(response.read())), response.headers.get("X-Plangate-More-Held")

    assert listed(1) == (1, "true")
    every, more = listed(1001)
    assert every >= 2
    assert more is None
