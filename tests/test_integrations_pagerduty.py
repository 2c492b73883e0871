"""pagerduty_trigger against a real local HTTP server standing in for the Events API v2."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from plangate.demo import tools as demo
from plangate.errors import ToolError
from plangate.integrations.pagerduty import pagerduty_trigger
from plangate.tools import ToolContext
from tests.http_recorder import HttpRecorder, Reply, http_recorder, isolate_environment

ROUTING_KEY = "R0UT1NGKEYsecret0123456789abcdef"
CONTEXT = ToolContext(goal_id="g1", plan_id="p1", step_id="page", idempotency_key="d" * 40)
ACCEPTED = Reply(202, {"status": "success", "message": "Event processed", "dedup_key": "d" * 40})


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpRecorder]:
    """A recording server answering as PagerDuty does, with the routing key set."""
    isolate_environment(monkeypatch)
    with http_recorder() as recorder:
        monkeypatch.setenv("PAGERDUTY_EVENTS_URL", f"{recorder.url}/v2/enqueue")
        monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", ROUTING_KEY)
        recorder.answer("/v2/enqueue", ACCEPTED)
        yield recorder


def test_trigger_sends_the_idempotency_key_as_dedup_key(server: HttpRecorder) -> None:
    """Given a routing key, when the tool runs, then PagerDuty receives a trigger event with the
    routing key and dedup_key = the step's idempotency key; the output has the key, no secret."""
    output = pagerduty_trigger.invoke(
        {"summary": "Ticket count 128 exceeded SLA 100", "severity": "critical"}, CONTEXT
    )

    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/v2/enqueue")
    event = request.json()
    assert event == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": CONTEXT.idempotency_key,
        "payload": {
            "summary": "Ticket count 128 exceeded SLA 100",
            "source": "plangate",
            "severity": "critical",
            "custom_details": {"goal_id": "g1", "plan_id": "p1", "step_id": "page"},
        },
    }
    assert output == {"dedup_key": CONTEXT.idempotency_key, "status": "success"}
    assert ROUTING_KEY not in json.dumps(output)


def test_a_server_error_is_retried_with_the_same_dedup_key(server: HttpRecorder) -> None:
    server.answer("/v2/enqueue", Reply(500, {"status": "error"}), ACCEPTED)

    pagerduty_trigger.invoke({"summary": "disk full"}, CONTEXT)

    assert [r.json()["dedup_key"] for r in server.requests] == [CONTEXT.idempotency_key] * 2


def test_a_refusal_never_shows_the_routing_key(server: HttpRecorder) -> None:
    """Given PagerDuty refusing the event and quoting the routing key back,
    then the step's error gives the status and the reason, with the key blanked out."""
    server.answer(
        "/v2/enqueue",
        Reply(
            400,
            {
                "status": "invalid event",
                "message": "Event object is invalid",
                "errors": [f"routing_key {ROUTING_KEY} is not a known integration key"],
            },
        ),
    )

    with pytest.raises(ToolError) as failure:
        pagerduty_trigger.invoke({"summary": "disk full"}, CONTEXT)

    message = str(failure.value)
    assert "PagerDuty refused the request: HTTP 400" in message
    assert "Event object is invalid" in message
    assert "routing_key [redacted] is not a known integration key" in message
    assert "Events API v2 integration key" in message
    assert ROUTING_KEY not in message
    assert ROUTING_KEY not in repr(failure.value.__cause__)


def test_an_answer_quoting_the_routing_key_is_scrubbed_from_the_output(
    server: HttpRecorder,
) -> None:
    server.answer("/v2/enqueue", Reply(202, {"status": f"queued for {ROUTING_KEY}"}))

    output = pagerduty_trigger.invoke({"summary": "disk full"}, CONTEXT)

    assert output == {"dedup_key": CONTEXT.idempotency_key, "status": "queued for [redacted]"}


def test_an_answer_that_is_not_json_fails_without_the_routing_key(server: HttpRecorder) -> None:
    server.answer("/v2/enqueue", Reply(202, f"<html>accepted {ROUTING_KEY}</html>".encode()))

    with pytest.raises(ToolError, match="body that is not JSON") as failure:
        pagerduty_trigger.invoke({"summary": "disk full"}, CONTEXT)

    assert ROUTING_KEY not in str(failure.value)


def test_a_missing_routing_key_says_which_variable_to_set(
    server: HttpRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PAGERDUTY_ROUTING_KEY")

    with pytest.raises(ToolError, match="PAGERDUTY_ROUTING_KEY is not set; set it to the Events"):
        pagerduty_trigger.invoke({"summary": "disk full"}, CONTEXT)

    assert server.requests == []


def test_a_severity_pagerduty_does_not_know_is_refused_before_sending(
    server: HttpRecorder,
) -> None:
    with pytest.raises(ToolError, match="bad arguments: severity"):
        pagerduty_trigger.invoke({"summary": "disk full", "severity": "urgent"}, CONTEXT)
    assert server.requests == []


def test_demo_notify_oncall_pages_through_pagerduty_when_configured(
    server: HttpRecorder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Given PAGERDUTY_ROUTING_KEY set, when the demo's notify_oncall runs, then it pages with the
    same key as dedup_key and writes nothing to the notifications file."""
    monkeypatch.setenv("PLANGATE_DEMO_NOTIFICATIONS", f"{tmp_path}/notifications.jsonl")

    output = demo.notify_oncall.invoke({"message": "Ticket count 128 exceeded SLA 100"}, CONTEXT)

    [request] = server.requests
    assert request.json()["dedup_key"] == CONTEXT.idempotency_key
    assert request.json()["payload"]["summary"] == "Ticket count 128 exceeded SLA 100"
    assert output == {"notification_id": CONTEXT.idempotency_key, "deduplicated": False}
    assert demo.read_notifications() == []
