"""webhook_post against a real local HTTP server: the key travels, retries reuse it, hosts are
allowed by the operator only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from plangate.errors import ToolError
from plangate.integrations.webhook import webhook_post
from plangate.tools import ToolContext, load_tools
from tests.http_recorder import HttpRecorder, Reply, http_recorder, isolate_environment

CONTEXT = ToolContext(goal_id="g1", plan_id="p1", step_id="hook", idempotency_key="k" * 40)
PAYLOAD = {"text": "Ticket count 128 exceeded SLA 100", "count": 128}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpRecorder]:
    """A recording server on 127.0.0.1, the one host webhooks may reach."""
    isolate_environment(monkeypatch)
    monkeypatch.setenv("PLANGATE_WEBHOOK_ALLOWED_HOSTS", "hooks.example.com, 127.0.0.1")
    with http_recorder() as recorder:
        yield recorder


def post(server: HttpRecorder, path: str = "/hook") -> object:
    return webhook_post.invoke({"url": server.url + path, "payload": PAYLOAD}, CONTEXT)


def test_posts_json_with_the_steps_idempotency_key(server: HttpRecorder) -> None:
    """Given an allowed receiver, when the tool runs, then it POSTs the payload as JSON with
    `Idempotency-Key` equal to the context's key, and reports the delivery."""
    output = post(server)

    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/hook")
    assert request.headers["idempotency-key"] == CONTEXT.idempotency_key
    assert request.headers["content-type"] == "application/json"
    assert request.json() == PAYLOAD
    assert output == {"status": 200, "idempotency_key": CONTEXT.idempotency_key, "attempts": 1}


def test_a_server_error_is_retried_with_the_same_key(server: HttpRecorder) -> None:
    """Given a receiver that answers 500 once, then 200, when the tool runs, then it posts twice
    with one key (so the receiver can drop the duplicate) and succeeds."""
    server.answer("/hook", Reply(500, {"error": "try later"}), Reply(202))

    output = post(server)

    keys = [r.headers["idempotency-key"] for r in server.requests]
    assert keys == [CONTEXT.idempotency_key] * 2
    assert [r.json() for r in server.requests] == [PAYLOAD, PAYLOAD]
    assert output == {"status": 202, "idempotency_key": CONTEXT.idempotency_key, "attempts": 2}


def test_a_refusal_fails_at_once_with_status_and_body(server: HttpRecorder) -> None:
    """Given a receiver that answers 422, then the step fails with the status and the start of
    the body, after one request: asking again would be refused again."""
    server.answer("/hook", Reply(422, {"error": "field 'channel' is required"}))

    with pytest.raises(ToolError) as failure:
        post(server)

    message = str(failure.value)
    assert "refused the request: HTTP 422" in message
    assert "field 'channel' is required" in message
    assert f"webhook {server.url} " in message
    assert len(server.requests) == 1


def test_a_receiver_that_keeps_failing_is_tried_a_bounded_number_of_times(
    server: HttpRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLANGATE_HTTP_ATTEMPTS", "4")
    server.answer("/hook", Reply(503, {"error": "down"}))

    with pytest.raises(ToolError, match="after 4 attempt\\(s\\); last: HTTP 503"):
        post(server)

    assert [r.headers["idempotency-key"] for r in server.requests] == [CONTEXT.idempotency_key] * 4


def test_a_slow_receiver_times_out_and_is_retried_with_the_same_key(
    server: HttpRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a receiver slower than the timeout, then each attempt is cut off and retried with
    the same key (the first may have arrived), and the step fails saying it timed out."""
    monkeypatch.setenv("PLANGATE_HTTP_TIMEOUT", "0.2")
    monkeypatch.setenv("PLANGATE_HTTP_ATTEMPTS", "2")
    server.answer("/hook", Reply(200, delay=2.0))

    with pytest.raises(ToolError, match="last: timed out"):
        post(server)

    assert [r.headers["idempotency-key"] for r in server.requests] == [CONTEXT.idempotency_key] * 2


def test_a_redirect_is_not_followed(server: HttpRecorder) -> None:
    """Given an allowed receiver that redirects, then the tool does not follow it: a redirect
    could lead to a host nobody allowed."""
    server.answer("/hook", Reply(302, {}, headers={"Location": "http://10.0.0.1/admin"}))

    with pytest.raises(ToolError, match="HTTP 302 \\(a redirect\\); redirects are not followed"):
        post(server)

    assert [r.path for r in server.requests] == ["/hook"]


@pytest.mark.parametrize(
    "allowed",
    ["", "hooks.example.com", "127.0.0.2", "127.0.0.1:1"],
    ids=["unset", "other-host", "similar-address", "other-port"],
)
def test_a_host_not_allowed_is_refused_before_any_request(
    server: HttpRecorder, monkeypatch: pytest.MonkeyPatch, allowed: str
) -> None:
    """Given a plan naming a host the operator did not allow, then nothing is sent and the error
    says how to allow it."""
    monkeypatch.setenv("PLANGATE_WEBHOOK_ALLOWED_HOSTS", allowed)

    with pytest.raises(ToolError) as failure:
        post(server)

    message = str(failure.value)
    assert "webhook host '127.0.0.1' is not allowed" in message
    assert "PLANGATE_WEBHOOK_ALLOWED_HOSTS=127.0.0.1" in message
    assert server.requests == []


def test_an_allowed_host_and_port_pair_is_reached(
    server: HttpRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLANGATE_WEBHOOK_ALLOWED_HOSTS", server.url.removeprefix("http://"))
    post(server)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("file:///etc/passwd", "absolute http or https URL"),
        ("ftp://127.0.0.1/x", "absolute http or https URL"),
        ("/relative/path", "absolute http or https URL"),
        ("http://user:secret@127.0.0.1/hook", "must not carry a user or password"),
        ("http://127.0.0.1:99999/hook", "malformed"),
        ("http://[::1/hook", "malformed"),
    ],
)
def test_urls_that_are_not_plain_http_are_refused(
    server: HttpRecorder, url: str, complaint: str
) -> None:
    with pytest.raises(ToolError, match=complaint) as failure:
        webhook_post.invoke({"url": url, "payload": {}}, CONTEXT)
    assert "secret" not in str(failure.value)
    assert server.requests == []


def test_an_unreachable_receiver_fails_naming_the_host_not_the_path(server: HttpRecorder) -> None:
    """Given a webhook URL whose path is a token and nobody listening, then the error names the
    host only: webhook paths are often secrets."""
    with http_recorder() as gone:
        url = gone.url
    with pytest.raises(ToolError) as failure:
        webhook_post.invoke({"url": f"{url}/T000/B000/XXXXSECRET", "payload": {}}, CONTEXT)

    message = str(failure.value)
    assert f"webhook {url} did not answer successfully after 3 attempt(s)" in message
    assert "XXXXSECRET" not in message


def test_integration_modules_load_as_tool_modules() -> None:
    """Given PLANGATE_TOOLS naming the integration modules, then each exports its tool, with
    writes declared idempotent and the one read declared a read."""
    registry = load_tools(
        [
            "plangate.demo.tools",
            "plangate.integrations.webhook",
            "plangate.integrations.pagerduty",
            "plangate.integrations.jira",
        ]
    )

    effects = {name: (s.effect, s.idempotent) for name, s in registry.catalog().items()}
    assert effects == {
        "ticket_count": ("read", True),
        "sla_threshold": ("read", True),
        "notify_oncall": ("write", True),
        "webhook_post": ("write", True),
        "pagerduty_trigger": ("write", True),
        "jira_issue_count": ("read", True),
    }
    assert "context" not in registry.get("webhook_post").spec.args_schema["properties"]


def test_a_bad_retry_setting_names_the_variable(
    server: HttpRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLANGATE_HTTP_ATTEMPTS", "0")
    with pytest.raises(ToolError, match="PLANGATE_HTTP_ATTEMPTS: Input should be greater"):
        post(server)
    assert server.requests == []


def test_the_preview_names_the_host_only() -> None:
    args = {"url": "https://hooks.example.com/T000/XXXXSECRET", "payload": {}}
    assert webhook_post.preview(args) == "POST JSON to https://hooks.example.com"
    assert "malformed" in (webhook_post.preview({"url": "http://[::1"}) or "")
