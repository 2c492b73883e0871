"""Export over OTLP to a real receiver process: one trace per goal across three workers."""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from plangate import telemetry
from plangate.config import Settings
from tests.conftest import SEED_GOAL
from tests.fleet import Fleet
from tests.servers import accepts_connections, free_port, stop_process, wait_until_ready
from tests.span_recording import recording_spans
from tests.support import eventually
from tests.test_distributed import APPROVE_ALL, submit_and_wait
from tests.test_four_eyes import wait_until

SECRET = "sk-live-0123456789abcdef"
PLAYBOOK = f"""
playbooks:
  - name: ticket-sla-breach
    pattern: '(?i)ticket count'
    summary: Notify on-call if open tickets exceed the SLA
    steps:
      - id: count
        tool: ticket_count
      - id: sla
        tool: sla_threshold
      - id: notify
        tool: notify_oncall
        args:
          message: "Ticket count ${{count}} exceeded SLA ${{sla}}; token {SECRET}"
        when: steps.count.output > steps.sla.output
"""


@dataclass
class Receiver:
    """The OTLP receiver process and the file it writes spans to."""

    endpoint: str
    spans_file: Path

    def spans(self) -> list[dict[str, Any]]:
        text = self.spans_file.read_text(encoding="utf-8") if self.spans_file.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    """`python -m tests.otlp_receiver` as its own process on a free port."""
    port = free_port()
    spans_file = tmp_path / "spans.jsonl"
    log = tmp_path / "receiver.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.otlp_receiver", str(port), str(spans_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_ready("otlp receiver", lambda: accepts_connections(port), process, [log])
        yield Receiver(f"http://127.0.0.1:{port}", spans_file)
    finally:
        stop_process(process)


@pytest.mark.redis
def test_a_goal_through_three_workers_is_one_exported_trace(
    tmp_path: Path, redis_url: str, receiver: Receiver
) -> None:
    """Given three worker processes exporting to an OTLP receiver process,
    When a goal runs with a secret in a tool argument,
    Then the receiver holds one trace with every hop, decision, run and tool call,
    from three services, and the secret is in no attribute.
    """
    (tmp_path / "policy.yaml").write_text(APPROVE_ALL)
    (tmp_path / "playbook.yaml").write_text(PLAYBOOK)
    fleet = Fleet(
        broker_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'plangate.db'}",
        folder=tmp_path,
        extra_env={
            "PLANGATE_POLICY_FILE": str(tmp_path / "policy.yaml"),
            "PLANGATE_PLAYBOOK_FILE": str(tmp_path / "playbook.yaml"),
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            # No fast sweeps: a resend while workers start would (rightly) add a second span,
            # and this test counts spans exactly.
        },
    )
    assert fleet.plangate("db", "upgrade").returncode == 0
    try:
        fleet.start_all()
        result = submit_and_wait(fleet, SEED_GOAL)
        assert result["status"] == "completed", fleet.logs()
    finally:
        assert fleet.stop_all() == [0, 0, 0]  # SIGTERM flushes what is still buffered

    spans = receiver.spans()
    ours = [s for s in spans if s["trace_id"] == result["trace_id"]]
    names = [s["name"] for s in ours]
    assert {s["trace_id"] for s in spans} == {result["trace_id"]}
    for hop in ("goal.submitted", "plan.proposed", "plan.approved"):
        assert f"publish {hop}" in names, names
        assert f"process {hop}" in names, names
    for name in ("plan", "decide", "run plan"):
        assert names.count(name) == 1, names
    for tool in ("ticket_count", "sla_threshold", "notify_oncall"):
        assert names.count(f"execute_tool {tool}") == 1, names
    kinds = {s["name"]: s["kind"] for s in ours}
    assert kinds["publish plan.approved"] == "SPAN_KIND_PRODUCER"
    assert kinds["process plan.approved"] == "SPAN_KIND_CONSUMER"
    services = {s["service"] for s in ours}
    assert {"plangate-planner", "plangate-gate", "plangate-executor"} <= services
    by_id = {s["span_id"]: s for s in ours}
    run = next(s for s in ours if s["name"] == "run plan")
    assert by_id[run["parent_span_id"]]["name"] == "process plan.approved"
    plan = next(s for s in ours if s["name"] == "plan")
    assert run["links"] == [
        {"trace_id": result["trace_id"], "span_id": run["parent_span_id"]},
        {"trace_id": result["trace_id"], "span_id": plan["span_id"]},
    ]
    tool_parents = {s["parent_span_id"] for s in ours if s["name"].startswith("execute_tool")}
    assert tool_parents == {run["span_id"]}
    exported = json.dumps([s["attributes"] for s in spans])
    assert SECRET not in exported
    assert "exceeded SLA" not in exported

    shown = fleet.plangate(
        "trace", str(result["goal_id"]), "--json", PLANGATE_JAEGER_URL="http://j:1/"
    )
    assert json.loads(shown.stdout) == {
        "goal_id": result["goal_id"],
        "trace_id": result["trace_id"],
        "jaeger_url": f"http://j:1/trace/{result['trace_id']}",
    }
    text = fleet.plangate("trace", str(result["goal_id"])).stdout
    assert f"http://localhost:16686/trace/{result['trace_id']}" in text


@pytest.mark.redis
def test_a_worker_that_exports_nothing_keeps_the_goal_one_trace_for_those_that_do(
    tmp_path: Path, redis_url: str, receiver: Receiver
) -> None:
    """Given a client and a planner with no OTEL_* variables (they record no span past a
    goal's first), and a gate and an executor exporting to a receiver process,
    When a goal runs,
    Then every span the receiver holds is in the goal's trace, the one `submit` reported:
    the planner passed the trace context on, sampled, to the stages that export.
    """
    (tmp_path / "policy.yaml").write_text(APPROVE_ALL)
    fleet = Fleet(
        broker_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'plangate.db'}",
        folder=tmp_path,
        extra_env={"PLANGATE_POLICY_FILE": str(tmp_path / "policy.yaml")},
    )
    exporting = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    assert fleet.plangate("db", "upgrade").returncode == 0
    try:
        fleet.start("planner")
        fleet.start("gate", **exporting)
        fleet.start("executor", **exporting)
        result = submit_and_wait(fleet, SEED_GOAL)
        assert result["status"] == "completed", fleet.logs()
    finally:
        assert fleet.stop_all() == [0, 0, 0]  # SIGTERM flushes what is still buffered

    spans = receiver.spans()
    names = [s["name"] for s in spans]
    assert {s["trace_id"] for s in spans} == {result["trace_id"]}
    assert {s["service"] for s in spans} == {"plangate-gate", "plangate-executor"}
    for name in ("process plan.proposed", "decide", "process plan.approved", "run plan"):
        assert names.count(name) == 1, names


def test_with_no_otel_variables_nothing_exports_and_no_thread_runs(tmp_path: Path) -> None:
    """Given no OTEL_* variables, setup_tracing installs a provider with no exporter thread."""
    script = (
        "import threading\n"
        "from plangate import telemetry\n"
        "telemetry.setup_tracing()\n"
        "with telemetry.tracer().start_as_current_span('x'):\n"
        "    assert telemetry.current_trace_id()\n"
        "telemetry.flush()\n"
        "print(sorted(t.name for t in threading.enumerate()))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['MainThread']"
    assert done.stderr == ""


@pytest.mark.parametrize(
    "switch", [{"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"}]
)
def test_an_endpoint_switched_off_exports_nothing(
    tmp_path: Path, receiver: Receiver, switch: dict[str, str]
) -> None:
    """Given an endpoint but export switched off, `plangate run` sends the receiver nothing."""
    done = _run_goal(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, **switch})

    assert done.returncode == 0, done.stderr
    assert receiver.spans() == []


def test_plangate_run_flushes_its_spans_before_it_exits(tmp_path: Path, receiver: Receiver) -> None:
    """Given an endpoint and the default 5 s batch delay, `plangate run` still exports it all."""
    done = _run_goal(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint})

    assert done.returncode == 0, done.stderr
    names = {s["name"] for s in receiver.spans()}
    assert {"submit goal", "plan", "decide", "run plan", "execute_tool notify_oncall"} <= names
    assert {s["service"] for s in receiver.spans()} == {"plangate"}


def test_grpc_without_its_exporter_is_a_clear_config_error(tmp_path: Path) -> None:
    if importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is not None:
        pytest.skip("the gRPC exporter is installed here")
    grpc = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    done = _run_goal(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", **grpc})

    assert done.returncode == 2
    assert "pip install opentelemetry-exporter-otlp-proto-grpc" in done.stderr


def _run_goal(tmp_path: Path, otel: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "policy.yaml").write_text(APPROVE_ALL)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANGATE_", "OTEL_"))}
    env.update(
        PLANGATE_DATA_DIR=str(tmp_path / "data"),
        PLANGATE_DEMO_NOTIFICATIONS=str(tmp_path / "notifications.jsonl"),
        PLANGATE_PLANNER="playbook",
        PLANGATE_POLICY_FILE=str(tmp_path / "policy.yaml"),
        **otel,
    )
    return subprocess.run(
        [sys.executable, "-m", "plangate", "run", "--yes", "--json", SEED_GOAL],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("linked_only", [False, True])
def test_the_run_span_is_linked_and_parented_unless_link_only(linked_only: bool) -> None:
    """Given an incoming span, the run span links to it; link-only starts a new trace."""
    with (
        recording_spans(),
        telemetry.tracer().start_as_current_span("incoming") as incoming,
        telemetry.run_span("run plan", linked_only=linked_only) as run,
    ):
        pass

    came, ran = incoming.get_span_context(), run.get_span_context()
    assert [link.context for link in run.links] == [came]  # type: ignore[attr-defined]
    parent = run.parent  # type: ignore[attr-defined]
    if linked_only:
        assert parent is None
        assert ran.trace_id != came.trace_id
    else:
        assert parent is not None
        assert parent.span_id == came.span_id
        assert ran.trace_id == came.trace_id


@pytest.mark.parametrize(
    ("variable", "endpoint"),
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "otel-collector:4318"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:99999/v1/traces"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://[::1"),
    ],
)
def test_a_collector_address_that_cannot_work_is_refused_before_the_goal_runs(
    tmp_path: Path, variable: str, endpoint: str
) -> None:
    """Given an OTLP endpoint with no scheme, another scheme, a bad port or broken brackets,
    When `plangate run` starts,
    Then it stops at once with one line naming the variable and a working example, having
    stored no goal (the SDK used to say it in its own words after the work was done).
    """
    done = _run_goal(tmp_path, {variable: endpoint})

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {variable}={endpoint!r} is no collector address; give one like "
        "http://otel-collector:4318 (or unset it to export no spans)"
    ]
    database = tmp_path / "data" / "plangate.db"
    if database.exists():  # the schema may be made; no goal is
        with closing(sqlite3.connect(database)) as db:
            assert db.execute("SELECT count(*) FROM goals").fetchone() == (0,)


@pytest.mark.redis
def test_a_person_deciding_through_the_cli_or_serve_is_in_the_goals_one_trace(
    tmp_path: Path, redis_url: str, receiver: Receiver
) -> None:
    """Given workers, `serve` and the CLI as processes, all exporting,
    When a goal submitted over HTTP is held and alice approves it with `plangate review
    approve`, and a second, held too, is rejected through serve's API,
    Then each goal is one trace, rooted at serve's request: the HTTP request was a trace of
    its own (and serve's log named it), and neither person's decision was in any trace (the
    CLI recorded no span; serve none until a goal had been submitted through it).
    """
    fleet, alice = exporting_fleet(
        tmp_path,
        redis_url,
        receiver,
        PLANGATE_SESSION_SECRET="s" * 40,
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    assert fleet.plangate("db", "upgrade").returncode == 0
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "plangate", "serve", "--port", str(port)],
        env=fleet.env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        ready = [tmp_path / "serve.log"]
        wait_until_ready("serve", lambda: accepts_connections(port), serve, ready)
        fleet.start_all()
        with httpx.Client(base_url=base, timeout=30) as http:
            goals = [
                http.post("/api/v1/goals", json={"text": SEED_GOAL, "idempotency_key": key})
                for key in ("cli", "api")
            ]
            assert [g.status_code for g in goals] == [201, 201]
            ids = [g.json()["goal_id"] for g in goals]
            held = [wait_until(fleet, goal_id, {"held"}) for goal_id in ids]
            assert [h["status"] for h in held] == ["held", "held"], fleet.logs()
            approved = fleet.plangate(
                "review", "approve", str(held[0]["plan_id"]), PLANGATE_REVIEWER_TOKEN=alice
            )
            assert approved.returncode == 0, approved.stderr
            as_alice = {"Authorization": f"Bearer {alice}"}
            review = f"/api/v1/reviews/{held[1]['plan_id']}"
            shown = http.get(review, headers=as_alice).json()
            rejected = http.post(
                f"{review}/reject",
                json={"comment": "not today", "plan_hash": shown["plan_hash"]},
                headers=as_alice,
            )
            assert rejected.status_code == 200, rejected.text
        done = wait_until(fleet, ids[0], {"completed", "failed"})
        assert done["status"] == "completed", fleet.logs()
    finally:
        fleet.stop_all()
        stop_process(serve)
        log.close()

    spans = receiver.spans()
    for goal, trace_id in zip(goals, (g.json()["trace_id"] for g in goals), strict=True):
        ours = {s["span_id"]: s for s in spans if s["trace_id"] == trace_id}
        roots = [s for s in ours.values() if s["parent_span_id"] is None]
        assert [(r["service"], r["kind"]) for r in roots] == [
            ("plangate-serve", "SPAN_KIND_SERVER")
        ], goal.json()
        submitted = next(s for s in ours.values() if s["name"] == "submit goal")
        assert submitted["parent_span_id"] in ours
        decisions = [s for s in ours.values() if s["name"] == "review decision"]
        assert [d["attributes"]["plangate.decision.decided_by"] for d in decisions] == ["alice"]
    cli_decision, api_decision = (
        next(
            s
            for s in spans
            if s["name"] == "review decision" and s["trace_id"] == g.json()["trace_id"]
        )
        for g in goals
    )
    assert cli_decision["service"] == "plangate"
    assert cli_decision["attributes"]["plangate.decision.action"] == "approve"
    assert api_decision["service"] == "plangate-serve"
    assert api_decision["attributes"]["plangate.decision.action"] == "reject"


def exporting_fleet(
    tmp_path: Path, redis_url: str, receiver: Receiver, **env: str
) -> tuple[Fleet, str]:
    """A fleet on SQLite whose processes export to `receiver`, with alice a reviewer (no
    role); return it and alice's token."""
    from plangate.reviewers import add_reviewer

    reviewers = tmp_path / "reviewers.yaml"
    alice = add_reviewer(reviewers, "alice", [])
    fleet = Fleet(
        broker_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'plangate.db'}",
        folder=tmp_path,
        extra_env={
            "PLANGATE_REVIEWERS_FILE": str(reviewers),
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            **env,
        },
    )
    return fleet, alice


@pytest.mark.redis
def test_a_cancel_with_the_cli_on_the_store_is_a_span_of_the_goals_trace(
    tmp_path: Path, redis_url: str, receiver: Receiver
) -> None:
    """Given a goal submitted and waiting, and the CLI exporting spans,
    When alice cancels it with `plangate goals cancel --reason` on the store (no --server),
    Then a `cancel goal` span naming her and her reason is in the goal's trace: the CLI set up
    no tracing before it cancelled (only a send to the broker did), so the cancel of the
    default path was in no trace, while the same through serve was.
    """
    fleet, alice = exporting_fleet(tmp_path, redis_url, receiver)
    assert fleet.plangate("db", "upgrade").returncode == 0
    submitted = fleet.plangate("submit", "Check Jira", "--json")
    assert submitted.returncode == 0, submitted.stderr
    goal = json.loads(submitted.stdout)

    cancelled = fleet.plangate(
        "goals", "cancel", goal["goal_id"], "--reason", "wrong customer",
        PLANGATE_REVIEWER_TOKEN=alice,
    )  # fmt: skip

    assert cancelled.returncode == 0, cancelled.stderr
    spans = eventually(
        lambda: [s for s in receiver.spans() if s["name"] == "cancel goal"],
        what="the cancel's span",
    )
    [span] = spans
    assert span["trace_id"] == goal["trace_id"]
    assert span["attributes"]["plangate.decision.decided_by"] == "alice"
    assert span["attributes"]["plangate.decision.reason"] == "wrong customer"


def test_a_collector_down_is_one_warning_after_the_outcome(tmp_path: Path) -> None:
    """The SDK's own line ("Failed to export spans batch ...") ran into the command's output."""
    done = _run_goal(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"})

    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "collector" in line]
    assert len(warnings) == 1, done.stderr
    assert warnings[0].startswith("warning: the traces were not sent to the collector")
    assert "check OTEL_EXPORTER_OTLP_ENDPOINT" in warnings[0]
    # One try in the short command's half second: the exporter said only that its tries ran
    # out, which read as a collector that hangs.
    assert "Connection refused" in warnings[0], warnings[0]


def test_serve_traces_no_probe_or_scrape(tmp_path: Path) -> None:
    """A liveness probe every few seconds made a trace each, once serve recorded requests."""
    from fastapi.testclient import TestClient

    from plangate.client import Client
    from plangate.server.app import create_app
    from plangate.store import open_store

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'p.db'}", broker_url="memory://")
    open_store(settings.resolved_database_url()).close()  # made and migrated
    with (
        recording_spans() as exporter,
        Client(settings) as client,
        TestClient(create_app(settings, client=client)) as http,
    ):
        for path in ("/healthz", "/readyz", "/metrics"):
            http.get(path)
        http.get("/api/v1/goals/nosuchgoal")

    names = [span.name for span in exporter.get_finished_spans()]
    assert not any(path in name for name in names for path in ("healthz", "readyz", "metrics"))
    assert any("/api/v1/goals" in name for name in names), names
