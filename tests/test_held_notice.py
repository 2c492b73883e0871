"""The webhook that tells people a plan waits for them, against a real server on 127.0.0.1:
it arrives, a passing failure is retried, and a failing webhook only costs a log line."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from approval_gate.notify import HeldNotice, WebhookNotifier
from plangate import telemetry
from plangate.logs import JsonFormatter
from tests.http_recorder import HttpRecorder, Reply, http_recorder, isolate_environment

NOTICE = HeldNotice(
    goal_id="g1",
    plan_id="p1",
    revision=2,
    rule="hold-writes",
    reason="the plan writes; a person must approve it",
    summary="page on-call",
)
PUBLIC = "https://review.example.test"
TOKEN = "hook-token-4b1d9e"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpRecorder]:
    isolate_environment(monkeypatch)
    monkeypatch.delenv("PLANGATE_HTTP_DEADLINE", raising=False)
    with http_recorder() as recorder:
        yield recorder


def notifier(server: HttpRecorder, timeout: float = 5.0) -> WebhookNotifier:
    return WebhookNotifier(f"{server.url}/hook?token={TOKEN}", PUBLIC, timeout=timeout)


def test_a_held_plan_is_posted_once_with_its_review_link(server: HttpRecorder) -> None:
    """Given a webhook, when a plan is held, then one JSON POST carries a Slack-style text with
    the review link and the same facts as fields."""
    notifier(server)(NOTICE).join(timeout=10)

    [request] = server.requests
    assert (request.method, request.path, request.query) == ("POST", "/hook", {"token": [TOKEN]})
    assert request.headers["content-type"] == "application/json"
    body = request.json()
    assert body["review_url"] == f"{PUBLIC}/reviews/p1"
    assert f"<{PUBLIC}/reviews/p1|Review it>" in body["text"]
    assert "Plan revision 2 of goal g1 is held for review: page on-call" in body["text"]
    assert (body["goal_id"], body["plan_id"], body["revision"]) == ("g1", "p1", 2)
    assert (body["rule"], body["reason"]) == ("hold-writes", NOTICE.reason)


def test_a_webhook_that_is_briefly_down_gets_the_notice_on_a_retry(server: HttpRecorder) -> None:
    server.answer("/hook", Reply(503, {"error": "down"}), Reply(200, b"ok"))

    assert notifier(server).send(NOTICE) is True

    assert len(server.requests) == 2


def test_a_hanging_webhook_is_given_up_within_the_notifiers_timeout(
    server: HttpRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a webhook that never answers and a notifier timeout of 0.5 s, then sending gives up
    within about that, and says so in the log."""
    server.answer("/hook", Reply(200, delay=30))

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="approval_gate.notify"):
        assert notifier(server, timeout=0.5).send(NOTICE) is False

    assert time.monotonic() - started < 2
    assert "the review webhook failed for plan p1" in caplog.text
    assert "within 0.5 s" in caplog.text


def test_a_refusing_webhook_is_logged_without_its_url(
    server: HttpRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a webhook answering 404, then it is asked once, and the log line says what it
    answered and what to check, but not the URL: a webhook's URL holds its token."""
    server.answer("/hook", Reply(404, {"error": "no such hook"}))

    with caplog.at_level(logging.WARNING, logger="approval_gate.notify"):
        assert notifier(server).send(NOTICE) is False

    assert len(server.requests) == 1
    assert "the review webhook refused the request: HTTP 404" in caplog.text
    assert "check PLANGATE_WEBHOOK_URL" in caplog.text
    assert TOKEN not in caplog.text


def test_a_redirecting_webhook_is_not_followed(server: HttpRecorder) -> None:
    server.answer("/hook", Reply(302, {}, headers={"Location": f"{server.url}/elsewhere"}))

    assert notifier(server).send(NOTICE) is False

    assert [r.path for r in server.requests] == ["/hook"]


def test_a_webhook_url_that_is_not_http_is_not_called(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="approval_gate.notify"):
        assert WebhookNotifier("ftp://hooks.example/x", PUBLIC).send(NOTICE) is False
    assert "PLANGATE_WEBHOOK_URL must be an http(s) URL" in caplog.text


def test_a_failed_notice_is_logged_with_its_goal_and_trace_and_counted(
    server: HttpRecorder,
) -> None:
    """Sent from a thread of its own, the failure's JSON line carried no goal id and no trace
    id (operate.md promises both where a goal is concerned), and nothing counted it."""
    server.answer("/hook", Reply(404, {"error": "no such hook"}))
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(JsonFormatter())  # formats in the thread that logs, as a worker's
    logger = logging.getLogger("approval_gate.notify")
    logger.addHandler(handler)
    before = REGISTRY.get_sample_value("plangate_review_webhook_failures_total") or 0.0
    telemetry.setup_tracing()
    try:
        with telemetry.tracer().start_as_current_span("decide") as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            notifier(server)(NOTICE).join(timeout=10)
    finally:
        logger.removeHandler(handler)

    lines = [json.loads(line) for line in written.getvalue().splitlines() if line.strip()]
    [failed] = [line for line in lines if "review webhook failed" in line["message"]]
    assert (failed["goal_id"], failed["plan_id"]) == ("g1", "p1")
    assert failed["trace_id"] == trace_id
    after = REGISTRY.get_sample_value("plangate_review_webhook_failures_total")
    assert after == before + 1
