"""Review-page sessions across replicas of `serve`, logout, rate limits, and the page's truth.

Each replica is a real app (its own store connections, bus and session keeper) on the same
SQLite store as an embedded pipeline; the in-memory broker is shared within the process, so a
decision made through either replica reaches the pipeline's gate and executor.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.errors import ConfigError
from plangate.reviewers import add_reviewer, hash_token, remove_reviewer
from plangate.server import create_app
from plangate.server.page_words import REVIEWER_GONE
from plangate.server.sessions import SESSION_COOKIE
from plangate.store import ReviewSessionRow, StepRunRow
from schemas import utcnow
from tests.conftest import SEED_GOAL
from tests.support import HELD, only_plan

SECRET = "a-shared-session-secret-of-48-characters-or-so!!"
OTHER_SECRET = "some-other-replicas-secret-0123456789abcdefghij"


@pytest.fixture
def reviewers_file(tmp_path: Path) -> Path:
    return tmp_path / "reviewers.yaml"


@pytest.fixture
def alice(reviewers_file: Path) -> str:
    return add_reviewer(reviewers_file, "alice", ["finance"])


def settings_for(pipeline: Pipeline, reviewers_file: Path, **changes: Any) -> Settings:
    update = {
        # The pipeline's in-memory broker is shared within this process: the replicas
        # publish to it.
        "broker_url": "memory://",
        "reviewers_file": reviewers_file,
        "session_secret": SecretStr(SECRET),
        **changes,
    }
    return pipeline.settings.model_copy(update=update)


@contextmanager
def replica(settings: Settings, base_url: str = "http://testserver") -> Iterator[TestClient]:
    """One replica of `serve`, with its lifespan run; redirects are not followed."""
    with TestClient(create_app(settings), base_url=base_url, follow_redirects=False) as client:
        yield client


def log_in(client: TestClient, token: str) -> str:
    """Log in and return the session cookie's value."""
    answer = client.post("/login", data={"token": token})
    assert answer.status_code == 303, answer.text
    return str(answer.cookies[SESSION_COOKIE])


def form_field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} field on the page"
    return found.group(1)


def held_plan(pipeline: Pipeline) -> tuple[str, str]:
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD)
    return goal_id, only_plan(pipeline.store, goal_id).plan_id


def test_a_session_made_on_one_replica_works_on_another_sharing_the_secret(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    """Given two replicas sharing PLANGATE_SESSION_SECRET and the database,
    When alice logs in on the first and posts the approve form (its CSRF from the first) to
    the second,
    Then the second accepts it, the page it redirects to shows the approval by alice (never
    "held"), and the plan runs.
    """
    goal_id, plan_id = held_plan(pipeline)
    settings = settings_for(pipeline, reviewers_file)
    with replica(settings) as first, replica(settings) as second:
        cookie = log_in(first, alice)
        page = first.get(f"/reviews/{plan_id}").text
        form = {"csrf": form_field(page, "csrf"), "plan_hash": form_field(page, "plan_hash")}

        second.cookies.set(SESSION_COOKIE, cookie)
        answer = second.post(f"/reviews/{plan_id}/approve", data=form)

        assert answer.status_code == 303, answer.text
        assert answer.headers["location"].startswith(f"/reviews/{plan_id}?done=approved&seal=")
        shown = second.get(answer.headers["location"]).text
        assert "Your approval is recorded." in shown
        assert re.search(r'id="goal-status">(approved|running|completed)<', shown)
        assert "approved by alice" in shown.lower()
        assert 'id="approve"' not in shown
        assert pipeline.wait_for(goal_id).status == "completed"
        done = second.get(f"/reviews/{plan_id}").text
        assert '<strong id="headline">Completed, approved by alice.</strong>' in done


def test_a_replica_with_another_secret_refuses_the_session(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    settings = settings_for(pipeline, reviewers_file)
    other = settings_for(pipeline, reviewers_file, session_secret=SecretStr(OTHER_SECRET))
    with replica(settings) as first, replica(other) as stranger:
        cookie = log_in(first, alice)
        stranger.cookies.set(SESSION_COOKIE, cookie)

        answer = stranger.get("/reviews")

        assert answer.status_code == 303
        assert answer.headers["location"] == "/login"


def test_logout_ends_the_session_on_every_replica(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    """Given alice logged in, with her cookie copied aside,
    When she logs out on one replica,
    Then the old cookie opens nothing on either replica, and the session row is ended.
    """
    settings = settings_for(pipeline, reviewers_file)
    with replica(settings) as first, replica(settings) as second:
        cookie = log_in(first, alice)
        csrf = form_field(first.get("/reviews").text, "csrf")

        out = first.post("/logout", data={"csrf": csrf})

        assert out.status_code == 303
        assert out.headers["location"] == "/login?out=1"
        assert SESSION_COOKIE in out.headers["set-cookie"]
        for client in (first, second):
            client.cookies.set(SESSION_COOKIE, cookie)
            assert client.get("/reviews").headers["location"] == "/login"
    with pipeline.store.session() as session:
        [row] = session.query(ReviewSessionRow).all()
        assert row.ended_at is not None
        assert row.reviewer == "alice"


def test_a_logout_without_the_forms_csrf_token_is_refused(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    with replica(settings_for(pipeline, reviewers_file)) as client:
        log_in(client, alice)

        refused = client.post("/logout", data={"csrf": "0" * 64})

        assert refused.status_code == 403
        assert client.get("/reviews").status_code == 200


def test_the_cookie_holds_a_signed_session_id_never_the_token(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    settings = settings_for(pipeline, reviewers_file, public_url="https://review.example")
    with replica(settings, base_url="https://testserver") as client:
        answer = client.post("/login", data={"token": alice})

    cookie = answer.headers["set-cookie"]
    assert alice not in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert "Secure" in cookie
    with pipeline.store.session() as session:
        [row] = session.query(ReviewSessionRow).all()
        assert row.id not in cookie  # the store keeps the id's hash, not the id


def test_a_removed_reviewer_loses_their_sessions(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    with replica(settings_for(pipeline, reviewers_file)) as client:
        log_in(client, alice)
        assert client.get("/reviews").status_code == 200

        remove_reviewer(reviewers_file, "alice")

        assert client.get("/reviews").headers["location"] == "/login"


def test_a_decision_sent_by_a_reviewer_removed_meanwhile_says_they_are_no_longer_one(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    """Given alice on a held plan's page, When she is removed from the reviewers file and then
    clicks Approve, Then the login page says her token no longer names a reviewer (it said her
    session had ended: log in and do it again, which her token could not), and the plan stays
    held; the login form has the cursor in its token field."""
    goal_id, plan_id = held_plan(pipeline)
    with replica(settings_for(pipeline, reviewers_file)) as client:
        log_in(client, alice)
        page = client.get(f"/reviews/{plan_id}").text
        form = {"csrf": form_field(page, "csrf"), "plan_hash": form_field(page, "plan_hash")}
        remove_reviewer(reviewers_file, "alice")

        sent = client.post(f"/reviews/{plan_id}/approve", data=form)
        login = client.get(sent.headers["location"])

    assert sent.status_code == 303
    assert sent.headers["location"].startswith("/login?ended=gone")
    assert REVIEWER_GONE in html.unescape(login.text)
    assert 'name="token" autocomplete="current-password" required autofocus' in login.text
    assert pipeline.wait_for(goal_id, HELD).status == "held"


def test_an_expired_session_is_refused(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    with replica(settings_for(pipeline, reviewers_file)) as client:
        log_in(client, alice)
        with pipeline.store.session() as session:
            for row in session.query(ReviewSessionRow):
                row.expires_at = utcnow()

        assert client.get("/reviews").headers["location"] == "/login"


def test_the_eleventh_failed_login_is_429_but_a_good_token_still_logs_in(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    """Ten bad tokens from one address make the next bad one wait; alice, at the same address
    (one NAT, one proxy), still logs in: anyone could lock every reviewer out with ten
    requests, and a 256-bit token is not guessed by trying faster."""
    with replica(settings_for(pipeline, reviewers_file)) as client:
        failures = [client.post("/login", data={"token": f"guess-{n}"}) for n in range(10)]
        eleventh = client.post("/login", data={"token": "guess-10"})
        good = client.post("/login", data={"token": alice})

    assert [answer.status_code for answer in failures] == [401] * 10
    assert eleventh.status_code == 429
    assert 0 < int(eleventh.headers["retry-after"]) <= 300
    assert "Too many failed logins from your address; try again in" in eleventh.text
    assert good.status_code == 303
    assert SESSION_COOKIE in good.cookies


def test_the_eleventh_bad_bearer_token_on_the_api_is_429(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    with replica(settings_for(pipeline, reviewers_file)) as client:
        # Ten wrong tokens (a request with none is not a guess: it is not counted).
        bad = [
            client.get("/api/v1/reviews", headers={"Authorization": f"Bearer x{number}"})
            for number in range(10)
        ]
        eleventh = client.get("/api/v1/reviews", headers={"Authorization": "Bearer y"})
        good = client.get("/api/v1/reviews", headers={"Authorization": f"Bearer {alice}"})

    assert [answer.status_code for answer in bad] == [401] * 10
    assert eleventh.status_code == 429
    assert "try again in" in eleventh.json()["error"]
    assert int(eleventh.headers["retry-after"]) > 0
    assert good.status_code == 200  # a valid token passes from an address past the limit


def test_a_form_from_another_session_is_refused(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    bob = add_reviewer(reviewers_file, "bob", [])
    goal_id, plan_id = held_plan(pipeline)
    settings = settings_for(pipeline, reviewers_file)
    with replica(settings) as as_alice, replica(settings) as as_bob:
        log_in(as_alice, alice)
        log_in(as_bob, bob)
        page = as_alice.get(f"/reviews/{plan_id}").text
        form = {"csrf": form_field(page, "csrf"), "plan_hash": form_field(page, "plan_hash")}

        refused = as_bob.post(f"/reviews/{plan_id}/approve", data=form)

    assert refused.status_code == 403
    assert "The form expired" in refused.text
    assert pipeline.wait_for(goal_id, HELD).status == "held"


def test_a_short_secret_is_refused_and_a_missing_one_warns(
    pipeline: Pipeline, reviewers_file: Path, alice: str, caplog: pytest.LogCaptureFixture
) -> None:
    short = settings_for(pipeline, reviewers_file, session_secret=SecretStr("too-short"))
    with pytest.raises(ConfigError, match="PLANGATE_SESSION_SECRET is shorter than 32"):
        create_app(short)

    with caplog.at_level(logging.WARNING, logger="plangate.server.sessions"):
        create_app(settings_for(pipeline, reviewers_file, session_secret=None))

    [warning] = [r for r in caplog.records if r.name == "plangate.server.sessions"]
    assert warning.levelno == logging.WARNING
    assert "another replica of serve refuses its sessions and forms" in warning.getMessage()


def test_the_page_shows_a_rejection_and_who_made_it(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    _goal_id, plan_id = held_plan(pipeline)
    with replica(settings_for(pipeline, reviewers_file)) as client:
        log_in(client, alice)
        page = client.get(f"/reviews/{plan_id}").text
        form = {"csrf": form_field(page, "csrf"), "plan_hash": form_field(page, "plan_hash")}

        answer = client.post(f"/reviews/{plan_id}/reject", data={**form, "comment": "not now"})
        shown = client.get(answer.headers["location"]).text

    assert '<strong id="goal-status">rejected</strong>' in shown
    assert '<strong id="headline">Rejected by alice: it will not run.</strong>' in shown
    assert '<span id="reason">not now</span>' in shown
    assert "Held: waiting" not in shown


@pytest.mark.tampers  # a large output is written into the step's row, as no tool answered
def test_the_page_shows_each_steps_output_escaped_and_cut_when_large(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    """Given a completed plan whose notify step stored a large output with markup,
    When alice opens the plan's page,
    Then each step's status shows, the output is escaped and cut with its full length noted.
    """
    goal_id, plan_id = held_plan(pipeline)
    pipeline.approve(plan_id, "alice")
    assert pipeline.wait_for(goal_id).status == "completed"
    with pipeline.store.session() as session:
        session.get_one(StepRunRow, (plan_id, "notify")).output = "<b>x</b>" + "y" * 5000
    with replica(settings_for(pipeline, reviewers_file)) as client:
        log_in(client, alice)

        shown = client.get(f"/reviews/{plan_id}").text

    assert shown.count('<span class="badge succeeded">succeeded</span>') == 3
    assert "&lt;b&gt;x&lt;/b&gt;" in shown
    assert "<b>x</b>" not in shown
    assert "(cut here: 5008 characters in all)" in shown


def test_the_apis_approval_says_it_is_recorded_and_points_at_the_goal(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    goal_id, plan_id = held_plan(pipeline)
    bearer = {"Authorization": f"Bearer {alice}"}
    with replica(settings_for(pipeline, reviewers_file)) as client:
        digest = client.get(f"/api/v1/reviews/{plan_id}", headers=bearer).json()["plan_hash"]

        answer = client.post(
            f"/api/v1/reviews/{plan_id}/approve", json={"plan_hash": digest}, headers=bearer
        )

        assert answer.status_code == 200, answer.text
        assert answer.headers["location"] == f"/api/v1/goals/{goal_id}"
        body = answer.json()
        assert body["message"] == (
            "approval by alice recorded; the gate signs it and releases the plan"
        )
        assert body["status"] in {"approved", "running", "completed"}
        assert pipeline.wait_for(goal_id).status == "completed"
        later = client.get(answer.headers["location"]).json()
        assert (later["status"], later["decision"]["decided_by"]) == ("completed", "alice")


def test_the_sessions_table_does_not_hold_the_key_of_a_reviewers_approvals(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    """A session stays bound to its reviewer's token by a value of its own, not the token's
    hash: that hash keys the reviewer's approval proofs, and whoever reads the database could
    have approved as anyone who had logged in. The session still works."""
    with replica(settings_for(pipeline, reviewers_file)) as client:
        log_in(client, alice)
        assert client.get("/reviews").status_code == 200

    with pipeline.store.session() as session:
        [row] = session.query(ReviewSessionRow).all()
    assert row.token_sha256 != hash_token(alice)
