"""The review page against another site, a shared browser and a stale form.

Each replica is a real app on the same SQLite store as an embedded pipeline (see
`test_review_sessions`); what a browser would add (`Sec-Fetch-Site`, `Origin`) is sent as
headers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from plangate.embedded import Pipeline
from plangate.reviewers import add_reviewer
from plangate.server import create_app
from plangate.server.page_words import FORM_FROM_OTHER_SITE, NO_HASH, OTHER_SITE, SESSION_ENDED
from plangate.server.sessions import SESSION_COOKIE
from tests.support import HELD
from tests.test_review_sessions import (
    form_field,
    held_plan,
    log_in,
    replica,
    settings_for,
)


@pytest.fixture
def reviewers_file(tmp_path: Path) -> Path:
    return tmp_path / "reviewers.yaml"


@pytest.fixture
def alice(reviewers_file: Path) -> str:
    return add_reviewer(reviewers_file, "alice", ["finance"])


@pytest.fixture
def mallory(reviewers_file: Path) -> str:
    return add_reviewer(reviewers_file, "mallory", ["finance"])


@pytest.mark.parametrize(
    "sent_by",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
    ],
)
def test_a_login_posted_by_another_site_is_refused_and_starts_no_session(
    pipeline: Pipeline, reviewers_file: Path, mallory: str, sent_by: dict[str, str]
) -> None:
    """Given a page elsewhere that posts mallory's token to /login from alice's browser,
    When the browser says the request came from another site,
    Then no session starts (alice's decisions could not go down as mallory's) and the page
    says to log in from the login page.
    """
    with replica(settings_for(pipeline, reviewers_file)) as client:
        answer = client.post("/login", data={"token": mallory}, headers=sent_by)

    assert answer.status_code == 403
    assert OTHER_SITE in answer.text
    assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")


@pytest.mark.parametrize(
    "sent_by",
    [{"Sec-Fetch-Site": "same-origin"}, {"Origin": "http://testserver"}, {}],
)
def test_a_login_from_the_page_itself_or_a_client_that_says_nothing_logs_in(
    pipeline: Pipeline, reviewers_file: Path, alice: str, sent_by: dict[str, str]
) -> None:
    with replica(settings_for(pipeline, reviewers_file)) as client:
        answer = client.post("/login", data={"token": alice}, headers=sent_by)

    assert answer.status_code == 303
    assert SESSION_COOKIE in answer.headers["set-cookie"]


def test_logging_in_again_ends_the_browsers_earlier_session(
    pipeline: Pipeline, reviewers_file: Path, alice: str, mallory: str
) -> None:
    """Given a browser logged in as alice, her cookie copied aside,
    When the browser logs in again (as anyone),
    Then the earlier session is ended: its cookie opens nothing, so a logout of the new one
    leaves no session behind.
    """
    with replica(settings_for(pipeline, reviewers_file)) as client:
        first = log_in(client, alice)
        log_in(client, mallory)
        client.cookies.clear()
        client.cookies.set(SESSION_COOKIE, first)

        answer = client.get("/reviews")

    assert answer.status_code == 303
    assert answer.headers["location"] == "/login"


def test_pages_are_never_cached_framed_or_given_a_script_to_run(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    """Given a logged-in reviewer,
    When the login page, the list of held plans, the API and its explorer answer,
    Then none may be cached but the explorer, none framed, and the pages run no script at all.
    """
    with replica(settings_for(pipeline, reviewers_file)) as client:
        login = client.get("/login")
        log_in(client, alice)
        listing = client.get("/reviews")
        api = client.get("/api/v1/goals")
        explorer = client.get("/docs")

    for page in (login, listing):
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "script-src" not in policy
        assert "frame-ancestors 'none'" in policy
        assert page.headers["cache-control"] == "no-store"
    for answer in (login, listing, api, explorer):
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert api.headers["cache-control"] == "no-store"
    assert explorer.headers["content-security-policy"] == "frame-ancestors 'none'"


def test_an_approve_form_without_the_revisions_hash_decides_nothing(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    """Given a held plan and a form posted without `plan_hash` (the page always sends it),
    When it asks to approve,
    Then it is refused, saying to reload the plan, and the goal stays held.
    """
    goal_id, plan_id = held_plan(pipeline)
    with replica(settings_for(pipeline, reviewers_file)) as client:
        log_in(client, alice)
        csrf = form_field(client.get(f"/reviews/{plan_id}").text, "csrf")

        answer = client.post(f"/reviews/{plan_id}/approve", data={"csrf": csrf})

    assert answer.status_code == 422
    assert NO_HASH in answer.text
    assert pipeline.wait_for(goal_id, HELD, timeout=5).status in HELD


def test_a_decision_sent_after_the_session_ended_says_it_was_not_recorded(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    """Given alice's approve form, filled in, and her session ended meanwhile (a logout),
    When the form is sent,
    Then she lands on the login page, which says her decision was not recorded; it was not.
    """
    goal_id, plan_id = held_plan(pipeline)
    with replica(settings_for(pipeline, reviewers_file)) as client:
        cookie = log_in(client, alice)
        page = client.get(f"/reviews/{plan_id}").text
        form = {"csrf": form_field(page, "csrf"), "plan_hash": form_field(page, "plan_hash")}
        client.post("/logout", data={"csrf": form["csrf"]})
        client.cookies.set(SESSION_COOKIE, cookie)

        answer = client.post(f"/reviews/{plan_id}/approve", data=form)
        shown = client.get(answer.headers["location"])

    assert answer.status_code == 303
    assert SESSION_ENDED in shown.text
    assert pipeline.wait_for(goal_id, HELD, timeout=5).status in HELD


def test_a_trailing_slash_is_not_redirected_to_a_host_the_client_names(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    with replica(settings_for(pipeline, reviewers_file)) as client:
        answer = client.get("/reviews/", headers={"Host": "evil.example"})

    assert "location" not in answer.headers
    assert answer.status_code == 404


BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def test_a_browser_gets_an_error_as_a_page_with_a_way_back(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    """Given a logged-in reviewer's browser,
    When it opens a goal that does not exist, or a form it sends is not UTF-8,
    Then it gets a page (not raw JSON) that says what is wrong and links to the held plans.
    """
    with replica(settings_for(pipeline, reviewers_file)) as client:
        log_in(client, alice)
        missing = client.get("/goals/no-such-goal", headers=BROWSER)
        garbled = client.post(
            "/login",
            content=b"token=%ff%fe",
            headers={**BROWSER, "Content-Type": "application/x-www-form-urlencoded"},
        )

    for page, said in ((missing, "no-such-goal"), (garbled, "the form is not UTF-8")):
        assert page.headers["content-type"].startswith("text/html")
        assert said in page.text
        assert 'href="/reviews"' in page.text
    assert missing.status_code == 404
    assert garbled.status_code == 400


def test_the_api_answers_json_even_to_a_browser(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    with replica(settings_for(pipeline, reviewers_file)) as client:
        answer = client.get("/api/v1/goals/no-such-goal", headers=BROWSER)

    assert answer.headers["content-type"] == "application/json"
    assert answer.status_code in (401, 404)
    assert "error" in answer.json()


def test_an_unknown_address_or_method_says_where_to_go_instead(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    with replica(settings_for(pipeline, reviewers_file)) as client:
        nowhere = client.get("/favicon.ico")
        wrong_method = client.get("/logout")

    assert nowhere.status_code == 404
    assert "nothing is at /favicon.ico" in nowhere.json()["error"]
    assert "/docs" in nowhere.json()["error"]
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"] == "GET is not taken at /logout; use POST"


def test_head_answers_as_get_without_a_body(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    """A HEAD of a page or a probe (monitors, link checkers, `curl -I`) was 405 everywhere."""
    with replica(settings_for(pipeline, reviewers_file)) as client:
        page = client.head("/login")
        probe = client.head("/healthz")
        only_posts = client.head("/logout")

    assert page.status_code == 200
    assert page.content == b""
    assert int(page.headers["content-length"]) > 0
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert probe.status_code == 200
    assert only_posts.status_code == 405


def test_an_answer_to_a_failure_the_server_did_not_expect_carries_the_same_headers(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    """Given a request on which the server fails unexpectedly (a bug, a dropped store),
    When a browser gets its 500 page,
    Then the page is neither cached nor framed and runs no script, as every other answer;
    Starlette answered it outside the middleware that adds them.
    """
    app = create_app(settings_for(pipeline, reviewers_file))

    @app.get("/fails")
    def fails() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        page = client.get("/fails", headers={"Accept": "text/html"})

    assert page.status_code == 500
    assert "the server failed on this request" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-frame-options"] == "DENY"
    assert "default-src 'none'" in page.headers["content-security-policy"]


@pytest.mark.parametrize(
    "sent_by", [{"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://evil.example"}]
)
def test_a_decision_posted_by_another_site_is_refused_saying_so(
    pipeline: Pipeline, reviewers_file: Path, alice: str, sent_by: dict[str, str]
) -> None:
    """Given alice logged in, and a page elsewhere that posts an approve form from her browser
    (with her session's cookie, its CSRF token copied),
    When the browser says the request came from another site,
    Then it is refused and the page says where from: it said "the form expired", and a
    reviewer who reloaded and tried again was never told what had happened.
    """
    goal_id, plan_id = held_plan(pipeline)
    with replica(settings_for(pipeline, reviewers_file)) as client:
        log_in(client, alice)
        page = client.get(f"/reviews/{plan_id}").text
        form = {"csrf": form_field(page, "csrf"), "plan_hash": form_field(page, "plan_hash")}

        refused = client.post(f"/reviews/{plan_id}/approve", data=form, headers=sent_by)

    assert refused.status_code == 403
    assert FORM_FROM_OTHER_SITE in refused.text
    assert pipeline.wait_for(goal_id, HELD).status == "held"


def test_a_request_without_a_token_is_told_what_to_send_and_never_locked_out(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    """Given a client that forgot the Authorization header twelve times,
    Then each answer is a 401 saying what to send: a missing header counted as a failed
    guess, and the eleventh answer was a 429 to a client that had guessed nothing. A wrong
    token is told apart: it is no reviewer's.
    """
    with replica(settings_for(pipeline, reviewers_file)) as client:
        missing = [client.get("/api/v1/reviews") for _ in range(12)]
        wrong = client.get("/api/v1/reviews", headers={"Authorization": "Bearer not-a-token"})
        right = client.get("/api/v1/reviews", headers={"Authorization": f"Bearer {alice}"})

    assert {answer.status_code for answer in missing} == {401}
    assert "send `Authorization: Bearer <token>`" in missing[-1].json()["error"]
    assert wrong.status_code == 401
    assert wrong.json()["error"].startswith("that token is no reviewer's")
    assert right.status_code == 200


@pytest.mark.parametrize("path", ["/logout", "/reviews/{plan_id}/reject"])
def test_a_form_another_site_posts_without_the_session_cookie_is_refused_saying_so(
    pipeline: Pipeline, reviewers_file: Path, alice: str, path: str
) -> None:
    """Given alice logged in, and a page on another site that posts a logout or a rejection
    (the browser sends no strict cookie there),
    When it is sent, Then it is refused (403), saying another site sent it, and alice is
    still logged in: the logout was answered "You are logged out" (her cookie cleared), and
    the rejection "your session had ended: log in and do it again", for a decision she never
    made.
    """
    goal_id, plan_id = held_plan(pipeline)
    with replica(settings_for(pipeline, reviewers_file)) as client:
        cookie = log_in(client, alice)
        client.cookies.clear()  # what a browser sends with another site's form
        forged = client.post(
            path.format(plan_id=plan_id),
            data={"csrf": "x", "comment": "forged"},
            headers={"Sec-Fetch-Site": "cross-site", "Accept": "text/html"},
        )
        client.cookies.set(SESSION_COOKIE, cookie)
        still_in = client.get("/reviews")

    assert forged.status_code == 403
    assert FORM_FROM_OTHER_SITE in forged.text
    assert "set-cookie" not in forged.headers
    assert still_in.status_code == 200
    assert pipeline.wait_for(goal_id, HELD).status == "held"


def test_refused_forms_keep_what_was_typed_and_stay_on_the_plan_s_page(
    pipeline: Pipeline, reviewers_file: Path, alice: str
) -> None:
    """Given alice on a held plan's page,
    When she saves an edit whose steps are not JSON, with a reason typed, and rejects with a
    comment over the 2000 characters kept,
    Then the plan's page says what is wrong, the edit's reason kept as typed (it came back
    empty), and the comment's limit is said there (a bare error page with no way back to the
    plan); the form says the limit to the browser too; a goal's page asked for logged out
    comes back after the login (it went to the held plans)."""
    goal_id, plan_id = held_plan(pipeline)
    with replica(settings_for(pipeline, reviewers_file)) as client:
        asked = client.get(f"/goals/{goal_id}")
        log_in(client, alice)
        page = client.get(f"/reviews/{plan_id}").text
        form = {"csrf": form_field(page, "csrf"), "plan_hash": form_field(page, "plan_hash")}
        bad_edit = client.post(
            f"/reviews/{plan_id}/edit",
            data={**form, "steps": "[{,]", "comment": "my careful reasoning"},
        )
        long_reject = client.post(
            f"/reviews/{plan_id}/reject", data={**form, "comment": "x" * 2500}
        )

    assert asked.headers["location"] == f"/login?next=%2Fgoals%2F{goal_id}"
    assert bad_edit.status_code == 422
    assert 'name="comment" maxlength="2000" value="my careful reasoning"' in bad_edit.text
    assert long_reject.status_code == 422
    assert "the limit is 2000" in long_reject.text
    assert 'id="steps-json"' in long_reject.text  # the plan's page, its forms
    assert 'maxlength="2000" required></textarea>' in page
    assert pipeline.wait_for(goal_id, HELD).status == "held"
