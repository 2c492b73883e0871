"""The OpenAPI document against the live server: what each operation answers, it documents.

A team wrote a client from /openapi.json alone: reads documented a body's 400/413/415 they never
answer, no operation documented the 503 (with Retry-After) every one answers while the store
does not, and a bad query parameter was described to a caller with no token. Each test asks the
app (on a real SQLite store, with its pipeline running) and compares with its own document.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, get_args

import pytest
from fastapi.testclient import TestClient

from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.reviewers import Reviewer
from plangate.server import create_app
from plangate.server.body_limit import MAX_REQUEST_BYTES
from plangate.server.json_bodies import JSON
from plangate.server.ratelimit import MAX_FAILURES
from plangate.server.reviewers import Reviewers, ReviewersFile
from schemas.plan import Step
from schemas.tool_spec import Effect
from tests.conftest import SEED_GOAL
from tests.support import HELD, only_plan, write_reviewers

CAROL = {"Authorization": "Bearer carol-token-0123456789"}
UNKNOWN = "0" * 32
ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}


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


INTAKE = {"Authorization": "Bearer intake"}
# A request each operation takes (its token, a body it reads), to see what the store does to it.
TAKEN: dict[str, dict[str, Any]] = {
    "/api/v1/goals": {"json": {"text": "count the open tickets"}, "headers": INTAKE},
    "/cancel": {"json": {}},
    "/retry": {"json": {}},
    "/approve": {"json": {"plan_hash": "seen"}},
    "/reject": {"json": {"plan_hash": "seen", "comment": "no"}},
    "/edit": {"json": {"plan_hash": "seen", "steps": [{"id": "count", "tool": "ticket_count"}]}},
    "/settle": {"json": {"happened": False, "unknown_since": "2030-01-01T00:00:00Z"}},
}


def taken(method: str, path: str) -> dict[str, Any]:
    """Return the keywords of a request `method path` takes: a token, and a body it reads."""
    if method == "get":
        return {"headers": CAROL}
    [request] = [TAKEN[end] for end in TAKEN if path.endswith(end)]
    return {"headers": CAROL, **request}


@contextmanager
def store_not_answering(database: Path) -> Iterator[None]:
    """Rename every table of the SQLite store away; rename them back when the block ends.

    Every statement fails meanwhile, and a look at the store finds no schema it knows: it is
    not the store `serve` can work with, as in an outage or a database restored empty.
    """
    named = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    with closing(sqlite3.connect(database)) as db, db:
        tables = [name for (name,) in db.execute(named)]
        for name in tables:
            db.execute(f'ALTER TABLE "{name}" RENAME TO "gone_{name}"')
    try:
        yield
    finally:
        with closing(sqlite3.connect(database)) as db, db:
            for name in tables:
                db.execute(f'ALTER TABLE "gone_{name}" RENAME TO "{name}"')


def test_every_operation_documents_the_503_it_answers_while_the_store_does_not(
    http: TestClient, spec: dict[str, Any], settings: Settings
) -> None:
    """Given the store not answering (its file moved away),
    When each operation of the API is sent a request it would take,
    Then each answers 503 with Retry-After and the error body, and its document says so: a 503
    with the Retry-After header and the one error body schema (no operation documented it).
    """
    database = Path(settings.resolved_database_url().removeprefix("sqlite:///"))
    operations = [
        (method, path) for method in ("get", "post") for path in api_operations(spec, method)
    ]
    with store_not_answering(database):
        answers = {
            (method, path): http.request(method, filled(path), **taken(method, path))
            for method, path in operations
        }

    for (method, path), answer in answers.items():
        documented = api_operations(spec, method)[path]["responses"]["503"]
        assert answer.status_code == 503, (method, path, answer.text)
        assert set(answer.json()) == {"error"}, (method, path)
        assert int(answer.headers["retry-after"]) > 0
        assert documented["content"]["application/json"]["schema"] == ERROR_BODY
        assert "Retry-After" in documented["headers"], (method, path)


def statuses(answers: dict[str, Any]) -> set[int]:
    """Return the error statuses an operation's document lists."""
    return {int(code) for code in answers if code.startswith(("4", "5"))}


def test_each_read_documents_exactly_the_refusals_it_answers_and_no_body_s(
    http: TestClient, spec: dict[str, Any], pipeline: Pipeline
) -> None:
    """Given a held goal, and every read (GET) of the API,
    When each is asked with no token, with a parameter it does not take, for an id there is
    not (a read by id), and past the failed tokens an address may send,
    Then the refusals it answers (with the 503 of the test above) are exactly those it
    documents, each the error body: reads listed a body's 400, 409, 413 and 415, and the
    reviews' reads 403 and 404, none of which they can answer.
    """
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=5)
    plan_id = only_plan(pipeline.store, goal_id).plan_id
    reads = api_operations(spec, "get")
    seen: dict[str, set[int]] = {path: {503} for path in reads}  # the test above answers 503

    for path in reads:
        there = path.format(goal_id=goal_id, plan_id=plan_id)
        assert http.get(there, headers=CAROL).status_code == 200, path
        seen[path].add(http.get(there).status_code)
        seen[path].add(http.get(there, params={"verbose": "1"}, headers=CAROL).status_code)
        if "{" in path:
            seen[path].add(http.get(filled(path), headers=CAROL).status_code)
    for _ in range(MAX_FAILURES):
        http.get("/api/v1/reviews", headers={"Authorization": "Bearer guessed"})
    for path in reads:
        seen[path].add(
            http.get(filled(path), headers={"Authorization": "Bearer guessed"}).status_code
        )

    for path, read in reads.items():
        assert seen[path] == statuses(read["responses"]), path
    assert seen["/api/v1/goals/{goal_id}"] == {401, 404, 422, 429, 503}
    assert seen["/api/v1/reviews"] == {401, 422, 429, 503}


# What no request here can make an operation answer, documented as the code does answer it:
# a role the hold asks for (403), a body trickled in over 30 s (408), a decision raced (409).
NOT_PROVOKED_HERE = {403, 408, 409}


def test_each_write_answers_and_documents_the_refusals_of_the_body_it_reads(
    http: TestClient, spec: dict[str, Any]
) -> None:
    """Given every operation of the API that reads a body (POST),
    When each is sent what it refuses: no token, an id there is not, JSON that does not parse,
    a body that is not JSON, one over the bound, a field none of its bodies names,
    Then each answers the refusal, and documents it with the error body; what it documents is
    what it answers (with the 503 and 429 seen above, and those no request here makes).
    """
    huge = b"{" + b" " * MAX_REQUEST_BYTES + b"}"
    for path, write in api_operations(spec, "post").items():
        request = taken("post", path)
        url, headers = filled(path), request["headers"]
        refused = [
            http.post(url, json=request["json"]),
            http.post(url, content=b"{", headers={**headers, "Content-Type": JSON}),
            http.post(url, content=b"text", headers={**headers, "Content-Type": "text/plain"}),
            http.post(url, content=huge, headers={**headers, "Content-Type": JSON}),
            http.post(url, json={"coment": "a misspelt field"}, headers=headers),
        ]
        if "{" in path:
            refused.append(http.post(url, json=request["json"], headers=headers))
        seen = {answer.status_code for answer in refused}

        for answer in refused:
            assert set(answer.json()) == {"error"}, (path, answer.status_code)
        assert seen >= {400, 401, 413, 415, 422}, (path, seen)
        documented = statuses(write["responses"])
        assert seen <= documented, (path, seen - documented)
        assert documented - seen <= {429, 503} | NOT_PROVOKED_HERE, path


def test_a_503_for_a_reviewers_file_that_cannot_be_read_says_when_to_try_again(
    pipeline: Pipeline, settings: Settings, tmp_path: Path
) -> None:
    """Given a reviewers file that is not valid YAML (it is read again once it changes),
    When a reviewer asks the API for the held plans,
    Then the answer is the documented 503: the error body, and Retry-After (it had none, though
    the document says every 503 carries one).
    """
    carol = Reviewer.with_token("carol", "carol-token-0123456789")
    path = write_reviewers(tmp_path / "reviewers.yaml", [carol])
    with TestClient(create_app(settings, reviewers=ReviewersFile(path))) as http:
        assert http.get("/api/v1/reviews", headers=CAROL).status_code == 200
        path.write_text(path.read_text() + "  - [this is not a reviewer\n")
        answer = http.get("/api/v1/reviews", headers=CAROL)

    assert answer.status_code == 503, answer.text
    assert "nobody can review until this is fixed" in answer.json()["error"]
    assert int(answer.headers["retry-after"]) > 0


def test_a_body_is_documented_as_required_exactly_where_the_api_refuses_none(
    http: TestClient, spec: dict[str, Any]
) -> None:
    """Given every operation that reads a body,
    When each is sent no body at all (with its token, for an id there is not),
    Then the decisions (approve, reject, edit, settle) and a submission refuse it, and
    their document marks the body required (the decisions' did not); cancel and retry take
    none (a reason is optional), and their body is not marked required.
    """
    required = {}
    for path, write in api_operations(spec, "post").items():
        answer = http.post(filled(path), headers=taken("post", path)["headers"])
        assert answer.status_code in (404, 415, 422), (path, answer.text)
        required[path] = answer.status_code != 404  # refused, or taken: no goal or plan
        assert write["requestBody"].get("required", False) is required[path], path

    assert {path.rsplit("/", 1)[-1] for path, needed in required.items() if needed} == {
        "goals",
        "approve",
        "reject",
        "edit",
        "settle",
    }


def refs(node: Any) -> Iterator[str]:
    """Yield every `$ref` in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_an_edits_steps_are_the_plan_step_schema_the_api_validates_them_against(
    spec: dict[str, Any],
) -> None:
    """Given the document's body of an edit,
    Then its steps are each a reference to the plan's step schema (`schemas.plan.Step`: id,
    tool, args, when, after), a named schema of the document; they were untyped objects, and
    every reference in the document resolves within it.
    """
    body = spec["paths"]["/api/v1/reviews/{plan_id}/edit"]["post"]["requestBody"]
    steps = body["content"]["application/json"]["schema"]["properties"]["steps"]
    named = spec["components"]["schemas"]

    assert steps["items"] == {"$ref": "#/components/schemas/Step"}
    assert steps["minItems"] == 1
    assert set(named["Step"]["properties"]) == set(Step.model_fields)
    assert named["Step"]["required"] == Step.model_json_schema()["required"]
    assert named["Step"]["additionalProperties"] is False
    for ref in refs(spec):
        assert ref.removeprefix("#/components/schemas/") in named, ref


def test_every_goal_state_a_review_answer_carries_is_the_state_machines_enum(
    spec: dict[str, Any],
) -> None:
    """Given the document's answers of the review API,
    Then a decision's outcome `status`, a held plan's and an unsettled step's `goal_status` are
    the one `GoalStatus` enum, and a reviewed step's `effect` is an enum of the tool effects
    (`schemas.tool_spec.Effect`): they were plain strings, and a generated client knew none.
    """
    named = spec["components"]["schemas"]
    state = {"$ref": "#/components/schemas/GoalStatus"}

    assert named["Outcome"]["properties"]["status"]["$ref"] == state["$ref"]
    for answer in ("ReviewSummary", "ReviewDetail", "UnsettledView"):
        assert named[answer]["properties"]["goal_status"]["$ref"] == state["$ref"], answer
    assert named["ReviewStep"]["properties"]["effect"]["enum"] == list(get_args(Effect))
