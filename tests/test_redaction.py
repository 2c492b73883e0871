"""One redaction point: canary secrets echoed by upstream servers leak nowhere.

A fleet of worker processes on a real Redis, exporting spans to a real OTLP receiver process,
logging JSON at DEBUG, plans with a model server that echoes the API key back, posts to a webhook
that quotes the deployment's secrets, and calls an MCP server that quotes its bearer token. None
of the canaries, in any form (raw, URL-encoded, JSON-escaped, base64), may appear in a log line,
a span, a dead letter, the audit export, a goal's status, or an HTTP answer.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kombu.messaging import Producer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from plangate import redaction, span_redaction
from plangate.bus import Bus
from plangate.client import Client
from plangate.config import Settings
from plangate.logs import JsonFormatter
from plangate.server import create_app
from plangate.store import GoalRow, open_store
from plangate.store import audit as audit_log
from plangate.store.audit_entries import export as export_entries
from plangate.store.goals import ensure_goal, transition
from schemas import DeadLetter, GoalSubmitted
from tests.fleet import Fleet, serving_app
from tests.http_recorder import Reply, http_recorder
from tests.openai_stub import OpenAIStub, echoing, plan_reply, running_stub
from tests.servers import accepts_connections, free_port, stop_process, wait_until_ready
from tests.support import eventually

ROOT = Path(__file__).resolve().parents[1]
MODEL_KEY = 'sk-canary-model-5f2a/+b=c&d"e'
PAGERDUTY_KEY = "pdcanary0123456789abcdef01234567"
SESSION_SECRET = "session-canary-0123456789abcdef-xyz/+="
INTAKE_TOKEN = "intake-canary-token-42x"
MCP_TOKEN = "mcp-canary-token-9z/+=q"
CANARIES = (MODEL_KEY, PAGERDUTY_KEY, SESSION_SECRET, INTAKE_TOKEN, MCP_TOKEN)
APPROVE_ALL = """
rules:
  - name: approve-everything
    match: "true"
    action: approve
    reason: the redaction tests approve every plan
"""


def forms(canary: str) -> dict[str, str]:
    """The ways a server may quote `canary` back."""
    return {
        "raw": canary,
        "url": urllib.parse.quote(canary, safe=""),
        "url+": urllib.parse.quote_plus(canary),
        "json": json.dumps(canary)[1:-1],
        "base64": base64.b64encode(canary.encode()).decode(),
        "bearer base64": base64.b64encode(f"Bearer {canary}".encode()).decode(),
    }


def leaks(text: str) -> list[str]:
    """Return which canary forms, or parts of them, `text` holds (none, if redaction works)."""
    found = []
    for canary in CANARIES:
        searched = forms(canary) | {"middle": canary[4:-4]}
        # The part of a base64 form made of the canary's bytes alone, wherever it starts.
        searched["middle of bearer base64"] = searched["bearer base64"][12:-8]
        found += [f"{name} of {canary!r}" for name, form in searched.items() if form in text]
    return found


def echoed_secrets() -> bytes:
    """A webhook answer quoting every canary in every form (a careless receiver or proxy)."""
    quoted = "; ".join(
        f"{name}={form}" for canary in CANARIES for name, form in forms(canary).items()
    )
    return json.dumps({"error": f"refused: {quoted}", "echo": list(CANARIES)}).encode()


# --- the registry itself -------------------------------------------------------------------


def test_every_form_of_a_registered_secret_is_redacted() -> None:
    """Given a registered secret with characters every encoding changes,
    When it is quoted raw, URL-encoded (either case), JSON-escaped (once or twice), as a
    Python repr, HTML-escaped, or inside base64 at any offset,
    Then `redact` leaves none of it.
    """
    secret = 'p@ss/w"rd+x&y=z-0123'
    redaction.register_secret(secret)
    quoted = urllib.parse.quote(secret, safe="")
    texts = [
        f"key {secret}!",
        f"url={quoted} lower={quoted.lower()} plus={urllib.parse.quote_plus(secret)}",
        json.dumps({"message": json.dumps({"key": secret})}),
        repr({"key": secret}),
        "<b>" + html.escape(secret) + "</b>",
        *(base64.b64encode(f"{prefix}{secret}!".encode()).decode() for prefix in ("", "u:", "us:")),
    ]
    for text in texts:
        cleaned = redaction.redact(text)
        assert "[redacted]" in cleaned, text
        assert "ss/w" not in cleaned, cleaned
        assert "0123" not in cleaned, cleaned


def test_secrets_are_learned_from_settings_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given secrets in settings, URLs and OTLP headers, and harmless values under such names,
    When settings are read,
    Then the secrets are registered, and short values or a password equal to its user are not.
    """
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-canary-111")
    monkeypatch.setenv("SOMETHING_TOKEN", "env-token-canary-222")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20otlp-canary-333")
    monkeypatch.setenv("PLANGATE_BROKER_URL", "redis://:broker-canary-444@127.0.0.1:6379/0")
    monkeypatch.setenv("SHORT_TOKEN", "true")
    Settings(
        database_url="postgresql+psycopg://app:db%40canary-555@db/app",
        session_secret="settings-session-canary-666-" + "x" * 8,
        reviewer_token="reviewer-canary-777",
        webhook_url="https://hooks.example/notify?token=hook-canary-888",
        public_url="http://plangate:plangate@review.example",
    )

    for secret in (
        "sk-env-canary-111",
        "env-token-canary-222",
        "otlp-canary-333",
        "broker-canary-444",
        "db@canary-555",
        "db%40canary-555",
        "settings-session-canary-666-xxxxxxxx",
        "reviewer-canary-777",
        "hook-canary-888",
    ):
        assert redaction.is_secret(secret), secret
        assert redaction.redact(f"<{secret}>") == "<[redacted]>"
    assert not redaction.is_secret("true")
    assert not redaction.is_secret("plangate")


def test_log_records_are_redacted_in_message_arguments_and_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Given a registered secret,
    When a log record quotes it in its message, an argument and an exception,
    Then every handler sees it redacted, and the JSON line too.
    """
    secret = "log-canary-secret-0001"
    redaction.register_secret(secret)
    log = logging.getLogger("plangate.test_redaction")
    with caplog.at_level(logging.INFO):
        try:
            raise RuntimeError(f"upstream said {secret}")
        except RuntimeError as exc:
            log.warning("key %s failed: %s", secret, exc, exc_info=True)
        log.info(f"inline {secret}")

    lines = [JsonFormatter().format(record) for record in caplog.records]
    assert secret not in caplog.text + "".join(lines)
    assert caplog.text.count("[redacted]") >= 4


def test_exported_spans_are_redacted_in_attributes_events_and_status() -> None:
    """Given a provider exporting through the RedactingExporter,
    When a span quotes a secret in an attribute, an exception event and its status, and a
    reason holds a bidirectional override and an escape sequence,
    Then the exported span holds none of the secret, and shows those characters as escapes.
    """
    secret = "span-canary-secret-0002"
    redaction.register_secret(secret)
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_redaction.RedactingExporter(memory)))
    with provider.get_tracer("t").start_as_current_span(f"call {secret}") as span:
        span.set_attribute("error.message", f"echo {secret}")
        span.set_attribute("list", [secret, "ok"])
        span.record_exception(RuntimeError(f"boom {secret}"))
        span.set_status(Status(StatusCode.ERROR, f"failed: {secret}"))
        span.set_attribute("bad", "lone \udfff surrogate")
        span.set_attribute("reason", "approved for EVIL\u202eEMCA\x1b[2J")

    (exported,) = memory.get_finished_spans()
    text = repr(
        (exported.name, exported.attributes, [(e.name, e.attributes) for e in exported.events])
    ) + str(exported.status.description)
    assert secret not in text
    assert text.count("[redacted]") >= 5
    assert exported.attributes is not None
    assert exported.attributes["bad"] == "lone \ufffd surrogate"
    # What a trace viewer shows an engineer reads as it is: no override reorders it.
    assert exported.attributes["reason"] == "approved for EVIL\\u202eEMCA\\x1b[2J"


def test_audit_entries_and_goal_reasons_are_redacted_and_storable(tmp_path: Path) -> None:
    """Given a goal whose failure reason quotes a secret and a lone surrogate,
    When it is stored,
    Then the reason and its audit entry say `[redacted]`, and the chain still verifies.
    """
    secret = "audit-canary-secret-0003"
    redaction.register_secret(secret)
    store = open_store(f"sqlite:///{tmp_path / 'plangate.db'}")
    try:
        with store.session() as session:
            ensure_goal(session, GoalSubmitted(goal_id="g1", text="goal"), {})
            transition(
                session,
                "g1",
                "plan_failed",
                by="planner",
                actor="planner",
                reason=f"the server said {secret} \udfff",
                data={"detail": {secret: [secret]}},
            )
        entries = list(export_entries(store))
        with store.session() as session:
            row = session.get(GoalRow, "g1")
            assert row is not None
            reason = row.status_reason
        assert audit_log.verify(store).ok
    finally:
        store.close()
    assert reason == "the server said [redacted] \ufffd"
    assert secret not in json.dumps(entries)
    assert entries[-1]["data"]["detail"] == {"[redacted]": ["[redacted]"]}


# --- the fleet, with echoing servers -------------------------------------------------------


@dataclass
class World:
    """The running fleet and the servers around it."""

    fleet: Fleet
    stub: OpenAIStub
    webhook_url: str
    spans_file: Path
    outputs: list[str]

    def spans(self) -> list[dict[str, Any]]:
        text = self.spans_file.read_text(encoding="utf-8") if self.spans_file.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a plangate command; keep what it printed for the final check."""
        done = self.fleet.plangate(*args)
        self.outputs += [done.stdout, done.stderr]
        return done

    def submit(self, goal: str) -> dict[str, Any]:
        done = self.run("submit", goal, "--wait", "--json", "--timeout", "15")
        assert done.stdout, f"{done.stderr}\n{self.fleet.logs()}"
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    def everything(self, trace_id: str | None = None) -> str:
        """Every text that left the processes: logs, spans, audit, statuses, dead letters."""
        if trace_id is not None:
            eventually(
                lambda: any(s["trace_id"] == trace_id for s in self.spans()),
                timeout=5,
                what="the goal's spans",
            )
        logs = "".join(
            path.read_text(errors="replace") for path in sorted(self.fleet.folder.glob("*.log"))
        )
        store = open_store(self.fleet.database_url, upgrade=False)
        try:
            audit = json.dumps(list(export_entries(store)), default=str)
        finally:
            store.close()
        dead = json.dumps([letter.reason for letter in self.dead_letters()])
        return "\n".join([logs, json.dumps(self.spans()), audit, dead, *self.outputs])

    def dead_letters(self) -> list[DeadLetter]:
        settings = self.fleet.settings()
        bus = Bus(settings.broker_url, settings.namespace)
        try:
            return bus.dead_letters()
        finally:
            bus.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("redaction")
    receiver_port, mcp_port = free_port(), free_port()
    spans_file = folder / "spans.jsonl"
    receiver = _start(
        folder, "receiver", "tests.otlp_receiver", str(receiver_port), str(spans_file)
    )
    mcp = _start(folder, "mcp", "tests.mcp_echo_server", "--port", str(mcp_port))
    try:
        wait_until_ready("otlp receiver", lambda: accepts_connections(receiver_port), receiver, [])
        wait_until_ready("mcp echo server", lambda: accepts_connections(mcp_port), mcp, [])
        echo = {
            "url": f"http://127.0.0.1:{mcp_port}/mcp",
            "headers": {"Authorization": "Bearer ${MCP_CANARY}"},
        }
        (folder / "mcp.json").write_text(json.dumps({"mcpServers": {"echo": echo}}))
        (folder / "policy.yaml").write_text(APPROVE_ALL)
        with running_stub() as stub, http_recorder() as webhook:
            webhook.answer("/hook", Reply(400, echoed_secrets()))
            host = urllib.parse.urlsplit(webhook.url).netloc
            fleet = Fleet(
                broker_url=redis_url,
                database_url=f"sqlite:///{folder / 'plangate.db'}",
                folder=folder,
                extra_env={
                    "PLANGATE_PLANNER": "openai",
                    "PLANGATE_PLANNER_MAX_RETRIES": "0",
                    "OPENAI_BASE_URL": stub.base_url,
                    "OPENAI_API_KEY": MODEL_KEY,
                    "PAGERDUTY_ROUTING_KEY": PAGERDUTY_KEY,
                    "PLANGATE_SESSION_SECRET": SESSION_SECRET,
                    "PLANGATE_INTAKE_TOKEN": INTAKE_TOKEN,
                    "MCP_CANARY": MCP_TOKEN,
                    "PLANGATE_TOOLS": "plangate.demo.tools,plangate.integrations.webhook",
                    "PLANGATE_MCP_SERVERS": str(folder / "mcp.json"),
                    "PLANGATE_WEBHOOK_ALLOWED_HOSTS": host,
                    "PLANGATE_HTTP_ATTEMPTS": "1",
                    "PLANGATE_POLICY_FILE": str(folder / "policy.yaml"),
                    "PLANGATE_LOG_LEVEL": "DEBUG",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver_port}",
                    "OTEL_BSP_SCHEDULE_DELAY": "100",
                    "NO_PROXY": "127.0.0.1",
                },
            )
            upgrade = fleet.plangate("db", "upgrade")
            assert upgrade.returncode == 0, upgrade.stderr
            fleet.start_all()
            try:
                eventually(lambda: _consuming(folder), timeout=30, what="every worker consuming")
                yield World(fleet, stub, f"{webhook.url}/hook", spans_file, [])
            finally:
                fleet.stop_all()
    finally:
        stop_process(mcp)
        stop_process(receiver)


def _consuming(folder: Path) -> bool:
    logs = [path.read_text(errors="replace") for path in folder.glob("*-[0-9].log")]
    return len(logs) == 3 and all("worker started" in log for log in logs)


def _start(folder: Path, name: str, module: str, *args: str) -> subprocess.Popen[bytes]:
    with (folder / f"{name}.out").open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.mark.redis
def test_a_model_server_echoing_the_api_key_fails_the_goal_without_it(world: World) -> None:
    """Given a model server that answers 401 quoting the bearer token in four forms,
    When a goal is planned,
    Then it fails with the server's words, the key `[redacted]`, and no canary leaves.
    """
    world.stub.script(echoing(401))

    result = world.submit("check the tickets")

    assert result["status"] == "plan_failed", result
    assert "refused the API key" in result["reason"]
    assert "[redacted]" in result["reason"]
    assert leaks(world.everything(result["trace_id"])) == []


@pytest.mark.redis
def test_a_webhook_quoting_secrets_fails_its_step_without_them(world: World) -> None:
    """Given a webhook that answers 400 quoting every canary,
    When an approved plan posts to it,
    Then the goal fails with the answer quoted redacted, and no canary leaves.
    """
    args = {"url": world.webhook_url, "payload": {"text": "hello"}}
    world.stub.script(plan_reply([{"id": "post", "tool": "webhook_post", "args": args}]))

    result = world.submit("post to the webhook")

    assert result["status"] == "failed", result
    assert "webhook" in result["reason"], result
    assert "[redacted]" in result["reason"], result
    assert leaks(world.everything(result["trace_id"])) == []


@pytest.mark.redis
def test_an_mcp_server_quoting_its_token_fails_its_step_without_it(world: World) -> None:
    """Given an MCP server whose tool fails quoting the Authorization header it was sent,
    When a plan calls it,
    Then the goal fails with the server's words redacted, and no canary leaves.
    """
    world.stub.script(plan_reply([{"id": "who", "tool": "echo.whoami"}]))

    result = world.submit("who am i")

    assert result["status"] == "failed", result
    status = world.run("status", result["goal_id"], "--json").stdout
    assert "unknown caller" in status, status
    assert "[redacted]" in status, status
    assert leaks(world.everything(result["trace_id"])) == []


@pytest.mark.redis
def test_dead_letter_reasons_and_http_answers_hold_no_canary(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given the fleet, and `serve` knowing the same secrets,
    When a message quoting a canary is dead-lettered and HTTP requests quote canaries,
    Then the dead letter's reason and every answer say `[redacted]`.
    """
    environment = world.fleet.env()
    for name in ("OPENAI_API_KEY", "PAGERDUTY_ROUTING_KEY", "PLANGATE_INTAKE_TOKEN"):
        monkeypatch.setenv(name, environment[name])
    monkeypatch.setenv("PLANGATE_SESSION_SECRET", SESSION_SECRET)
    settings = world.fleet.settings()
    bus = Bus(settings.broker_url, settings.namespace)
    try:
        with bus.connection() as connection:
            producer = Producer(connection.channel(), exchange=bus.topology.exchange)
            body = json.dumps({"schema_version": MODEL_KEY, "type": "goal.submitted"})
            producer.publish(
                body.encode(),
                routing_key="goal.submitted",
                content_type="application/json",
                content_encoding="utf-8",
            )
    finally:
        bus.close()
    letters = eventually(world.dead_letters, timeout=10, what="the dead letter")
    assert letters[-1].reason == (
        "schema_version '[redacted]' is a string: it must be an integer, one of [1]"
    )

    with Client(settings) as client, serving_app(create_app(settings, client=client)) as url:
        answers = [
            _get(f"{url}/api/v1/goals/{PAGERDUTY_KEY}", INTAKE_TOKEN),
            _get(f"{url}/api/v1/goals/{urllib.parse.quote(MODEL_KEY, safe='')}", INTAKE_TOKEN),
            _get(f"{url}/api/v1/goals/x", MCP_TOKEN),
        ]
    assert [status for status, _ in answers] == [404, 404, 401], answers
    assert all(body.startswith('{"error":') for _, body in answers), answers
    assert "[redacted]" in answers[0][1]
    world.outputs += [body for _, body in answers]
    assert leaks(world.everything()) == []


def _get(url: str, token: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()
