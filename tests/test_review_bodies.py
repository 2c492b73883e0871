"""The review API reads its JSON bodies as strictly as goal intake, and answers as it does.

Approve, reject, edit, settle, cancel and retry were parsed by FastAPI: of two equal keys the
last won, a NUL in a comment was stored as U+FFFD, an unknown field was ignored, and a cancel
without a body was refused though none of its fields is required. Intake refuses all of those,
with its own statuses (415, 400, 422) and words.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest

from plangate.client import Client
from plangate.config import Settings
from plangate.server.reviewers import Reviewer
from tests.support import serving_with_reviewers

TOKEN = "review-bodies-token-0123456789abcdef"
APPROVE = "/api/v1/reviews/no-such-plan/approve"
Server = tuple[str, int, Client]


@pytest.fixture
def server(settings: Settings) -> Iterator[Server]:
    """`plangate serve`'s app on the memory transport, with one reviewer."""
    with serving_with_reviewers(settings, Reviewer.with_token("alice", TOKEN, ["finance"])) as at:
        yield at


def post(
    server: Server, path: str, body: bytes | None, content_type: str = "application/json"
) -> tuple[int, dict[str, str]]:
    """POST `body` as the reviewer; return the status and the JSON answer."""
    connection = http.client.HTTPConnection(server[0], server[1], timeout=30)
    headers = {"authorization": f"Bearer {TOKEN}"}
    if body is not None:
        headers["content-type"] = content_type
    connection.request("POST", path, body=body, headers=headers)
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    return response.status, answer


@pytest.mark.parametrize(
    ("body", "content_type", "status", "said"),
    [
        (
            b'{"plan_hash": "sha256:0", "plan_hash": "sha256:1"}',
            "application/json",
            400,
            "the body is not valid JSON (JSON object repeats the key 'plan_hash'); send a JSON "
            "object",
        ),
        (b'{"plan_hash": ', "application/json", 400, "the body is not valid JSON"),
        (
            b'{"plan_hash": "sha256:0"}',
            "text/plain",
            415,
            "unsupported content type 'text/plain'; send application/json",
        ),
        (
            b'{"plan_hash": "sha256:0", "comment": ' + b"[" * 70 + b"]" * 70 + b"}",
            "application/json",
            422,
            "the body is refused: JSON is nested too deeply (more than 64 levels); flatten it",
        ),
        (
            b'{"plan_hash": "sha256:0", "coment": "typo"}',
            "application/json",
            422,
            "invalid request: coment: Extra inputs are not permitted",
        ),
        (
            b'{"plan_hash": "sha256:0", "comment": "ok\\u0000"}',
            "application/json",
            422,
            "holds NUL, which cannot be stored; send valid Unicode text without NUL",
        ),
    ],
    ids=["repeated key", "malformed", "content type", "too deep", "unknown field", "NUL"],
)
def test_a_decisions_body_is_refused_as_intake_refuses_it(
    server: Server, body: bytes, content_type: str, status: int, said: str
) -> None:
    """Given a reviewer approving a plan,
    When the body repeats a key, is not JSON, is not JSON at all, nests too deep, names a
    field approve does not take, or holds NUL,
    Then it is refused as goal intake refuses it, saying what to send (before, the last key
    won, NUL was stored as U+FFFD and an unknown field was ignored: each reached the plan).
    """
    answered, answer = post(server, APPROVE, body, content_type)
    assert answered == status, answer
    assert said in answer["error"]


def test_a_cancel_without_a_body_cancels(server: Server) -> None:
    """Given a submitted goal,
    When a reviewer cancels it with no body at all (the reason is optional),
    Then it is cancelled (it was 422: a body was required).
    """
    goal = server[2].submit("Check Jira ticket count")
    status, answer = post(server, f"/api/v1/goals/{goal.goal_id}/cancel", None)
    assert status == 200, answer
    assert answer["status"] == "cancelled"


def test_a_well_formed_decision_still_reaches_the_route(server: Server) -> None:
    """Given an approval with a hash and a comment, sent as before,
    When it is posted for a plan that does not exist,
    Then the route answers it (404 naming the plan), as before.
    """
    body = json.dumps({"plan_hash": "sha256:0", "comment": "fine"}).encode()
    status, answer = post(server, APPROVE, body)
    assert status == 404, answer
    assert answer["error"].startswith("no plan 'no-such-plan'")


def test_a_body_cut_short_is_said_to_be_invalid_json_once_with_its_place() -> None:
    """It read `the body is not valid JSON (body is not valid JSON: Unterminated string
    starting at at char 9)`."""
    from plangate.server.errors import ApiError
    from plangate.server.json_bodies import json_value

    with pytest.raises(ApiError) as raised:
        json_value(b'{"text": "abc', "the body")

    said = raised.value.message
    assert raised.value.status == 400
    assert said.count("not valid JSON") == 1
    assert "at at" not in said
    assert "starting at line 1 column 10" in said
