"""The OpenAPI document against the live server: what each operation answers, it documents.

A team wrote a client from /openapi.json alone: reads documented a body's 400/413/415 they never
answer, no operation documented the 503 (with Retry-After) every one answers while the store
does not, and a bad query parameter was described to a caller with no token. Each test asks the
app (on a real SQLite store, with its pipeline running) and compares with its own document.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.reviewers import Reviewer
from plangate.server import create_app
from plangate.server.reviewers import Reviewers

CAROL = {"Authorization": "Bearer carol-token-0123456789"}
UNKNOWN = "0" * 32


@pytest.fixture
def http(pipeline: Pipeline, settings: Settings) -> Iterator[TestClient]:
    """`plangate serve`'s app on the pipeline's store, with reviewer carol and an intake token."""
    reviewers = Reviewers([Reviewer.with_token("carol", "carol-token-0123456789")])
    app = create_app(settings, intake_token="intake", reviewers=reviewers)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def spec(http: TestClient) -> dict[str, Any]:
    """The document the server serves."""
    document: dict[str, Any] = http.get("/openapi.json").json()
    return document


def api_operations(spec: dict[str, Any], method: str) -> dict[str, dict[str, Any]]:
    """Return the document's API operations of `method`, by path."""
    return {
        path: operations[method]
        for path, operations in spec["paths"].items()
        if path.startswith("/api/") and method in operations
    }


def filled(path: str, goal_id: str = UNKNOWN) -> str:
    """Return a path template with its parameters filled in."""
    return path.format(goal_id=goal_id, plan_id=UNKNOWN, step_id="s")


def test_a_request_without_a_token_is_told_to_authenticate_before_any_parameter_is_checked(
    http: TestClient, spec: dict[str, Any]
) -> None:
    """Given every read of the API,
    When a caller with no token sends it with a parameter the route does not take, or a known
    one out of its range,
    Then each answer is 401 saying to send a token, never a 422 describing the parameters;
    with carol's token the same request is the 422.
    """
    for path in api_operations(spec, "get"):
        for query in ({"verbose": "1"}, {"limit": "0"}):
            anonymous = http.get(filled(path), params=query)
            assert anonymous.status_code == 401, (path, query, anonymous.text)
            assert "Authorization: Bearer" in anonymous.json()["error"], path
        assert http.get(filled(path), params={"verbose": "1"}, headers=CAROL).status_code == 422
