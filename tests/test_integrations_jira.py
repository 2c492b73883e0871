"""Jira's search count against a real local HTTP server standing in for a Jira site."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from plangate.demo import tools as demo
from plangate.errors import ToolError
from plangate.integrations.jira import jira_issue_count
from plangate.tools import ToolContext
from tests.http_recorder import HttpRecorder, Reply, http_recorder, isolate_environment

CONTEXT = ToolContext(goal_id="g1", plan_id="p1", step_id="count", idempotency_key="c" * 40)
SEARCH = "/jira/rest/api/2/search"
API_TOKEN = "ATATT3xFfGF0-secret-api-token"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpRecorder]:
    """A recording server answering Jira searches under the context path /jira."""
    isolate_environment(monkeypatch)
    monkeypatch.delenv("PLANGATE_DEMO_TICKET_COUNT", raising=False)
    with http_recorder() as recorder:
        monkeypatch.setenv("JIRA_URL", f"{recorder.url}/jira/")
        recorder.answer(SEARCH, Reply(200, {"startAt": 0, "maxResults": 0, "total": 137}))
        yield recorder


def test_ticket_count_is_jiras_total_of_open_issues_with_basic_auth(
    server: HttpRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given JIRA_URL with a user and API token, when the demo's ticket_count runs, then it asks
    Jira's search for open issues, no issue bodies, signed in with basic auth, and returns the
    total."""
    monkeypatch.setenv("JIRA_USER", "bot@example.com")
    monkeypatch.setenv("JIRA_API_TOKEN", API_TOKEN)

    count = demo.ticket_count.invoke({}, CONTEXT)

    [request] = server.requests
    assert (request.method, request.path) == ("GET", SEARCH)
    assert request.query == {"jql": ["statusCategory != Done"], "maxResults": ["0"]}
    expected = base64.b64encode(f"bot@example.com:{API_TOKEN}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected}"
    assert count == 137


def test_jql_and_a_bearer_token_come_from_the_environment(
    server: HttpRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JIRA_JQL", 'project = OPS AND status = "Open"')
    monkeypatch.setenv("JIRA_TOKEN", "pat-0123")

    assert demo.ticket_count() == 137

    [request] = server.requests
    assert request.query["jql"] == ['project = OPS AND status = "Open"']
    assert request.headers["authorization"] == "Bearer pat-0123"


def test_the_jira_tool_takes_its_query_from_the_plan(server: HttpRecorder) -> None:
    count = jira_issue_count.invoke({"jql": "project = SUP"}, CONTEXT)

    assert count == 137
    [request] = server.requests
    assert request.query["jql"] == ["project = SUP"]
    assert "authorization" not in request.headers  # no credentials set: an anonymous search


def test_refused_credentials_fail_saying_what_to_check_without_the_token(
    server: HttpRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JIRA_USER", "bot@example.com")
    monkeypatch.setenv("JIRA_API_TOKEN", API_TOKEN)
    server.answer(SEARCH, Reply(401, {"errorMessages": [f"bad token {API_TOKEN}"]}))

    with pytest.raises(ToolError) as failure:
        demo.ticket_count.invoke({}, CONTEXT)

    message = str(failure.value)
    assert "Jira refused the request: HTTP 401" in message
    assert "check JIRA_URL, the JQL, and JIRA_USER with JIRA_API_TOKEN or JIRA_TOKEN" in message
    assert API_TOKEN not in message
    assert len(server.requests) == 1


def test_an_answer_without_a_total_says_to_check_the_url(server: HttpRecorder) -> None:
    server.answer(SEARCH, Reply(200, {"issues": []}))

    with pytest.raises(ToolError, match="has no total; check that JIRA_URL is the Jira site"):
        demo.ticket_count.invoke({}, CONTEXT)


@pytest.mark.parametrize(
    ("variables", "complaint"),
    [
        ({"JIRA_USER": "bot"}, "JIRA_USER and JIRA_API_TOKEN go together"),
        ({"JIRA_API_TOKEN": API_TOKEN}, "JIRA_USER and JIRA_API_TOKEN go together"),
        ({"JIRA_TOKEN": "pat", "JIRA_USER": "bot"}, "set either JIRA_TOKEN, or JIRA_USER"),
    ],
)
def test_half_set_credentials_are_refused_before_asking(
    server: HttpRecorder,
    monkeypatch: pytest.MonkeyPatch,
    variables: dict[str, str],
    complaint: str,
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ToolError, match=complaint):
        demo.ticket_count.invoke({}, CONTEXT)

    assert server.requests == []


def test_without_jira_url_the_count_comes_from_the_data_file(
    server: HttpRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JIRA_URL")
    monkeypatch.setenv("PLANGATE_DEMO_TICKET_COUNT", "12")

    assert demo.ticket_count() == 12
    assert server.requests == []
