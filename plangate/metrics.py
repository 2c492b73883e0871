"""Prometheus metrics, with the official client: what every stage counts, and the store's gauges.

Counters and histograms live in the process's default registry and are counted where the
event happens (one line each: a message settled, a decision recorded, a tool called, tokens
spent, a resend, an expiry). What the store knows (goals by state, held plans, the oldest
hold, the outbox backlog) is read at scrape time by `StoreCollector`, a few indexed counts,
so the figures are the deployment's, whichever process is scraped.

Workers answer `/metrics` on their probe port (`PLANGATE_METRICS_PORT`); `serve` at `/metrics`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Literal, get_args

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from plangate.store import Store

MESSAGES = Counter(
    "plangate_messages",
    "Messages a stage settled, by type and outcome (handled, retried, dead_lettered, "
    "handed_back: an executor stopping gave a run back, as at each rolling restart).",
    ["stage", "type", "outcome"],
)
# Up to half an hour: the client's default buckets stopped at 10 s, where a p95 read by
# histogram_quantile stopped too, while a tool may take 60 s by default (its own timeout
# longer) and a handler up to PLANGATE_HANDLER_TIMEOUT_SECONDS (29 min).
_DURATION_BUCKETS = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    *(30.0, 60.0, 120.0, 300.0, 600.0, 1800.0),
)
HANDLER_SECONDS = Histogram(
    "plangate_handler_seconds",
    "How long a stage's handler took, by message type.",
    ["stage", "type"],
    buckets=_DURATION_BUCKETS,
)
DECISIONS = Counter(
    "plangate_decisions",
    "Decisions recorded, by action and rule (`person` for a person's).",
    ["action", "rule"],
)
APPROVALS_EXPIRED = Counter("plangate_approvals_expired", "Held plans that expired undecided.")
TOOL_CALLS = Counter(
    "plangate_tool_calls",
    "Tool calls, by tool and outcome (succeeded, failed, timed_out).",
    ["tool", "outcome"],
)
TOOL_SECONDS = Histogram(
    "plangate_tool_seconds", "How long a tool call took.", ["tool"], buckets=_DURATION_BUCKETS
)
LLM_TOKENS = Counter(
    "plangate_llm_tokens", "Tokens the planner's model spent, by model and kind.", ["model", "kind"]
)
LLM_CALL_OUTCOMES = (
    *("ok", "refused", "rate_limited", "unauthorized", "server_error", "timeout"),
    *("unreachable", "invalid_answer"),
)
LLM_CALLS = Counter(
    "plangate_llm_calls",
    "The planner's calls to its model server, by model and outcome: ok (a chat completion "
    "came back, whatever the plan in it), refused (HTTP 400, 404, another 4xx or a redirect), "
    "rate_limited (429), unauthorized (401, 403), server_error (5xx), timeout, unreachable "
    "(no connection, or it broke), invalid_answer (no sane chat completion, or too large).",
    ["model", "outcome"],
)
RESENDS = Counter("plangate_reconciler_resends", "Messages the reconciler sent again.")
IntakeOutcome = Literal["accepted", "duplicate", "rate_limited", "refused"]
INTAKE = Counter(
    "plangate_intake_goals",
    "Goals submitted to serve's intake, by outcome: accepted (a new goal), duplicate (the goal "
    "its key already named), rate_limited (429: past PLANGATE_INTAKE_GOALS_PER_MINUTE), "
    "refused (a body or header it cannot take).",
    ["outcome"],
)
WEBHOOK_FAILURES = Counter(
    "plangate_review_webhook_failures",
    "Held notices the review webhook did not take (logged; not sent again).",
)
SPANS_DROPPED = Counter(
    "plangate_spans_dropped",
    "Spans this process could not export, by reason: export_failed (the collector refused "
    "or did not answer their batch), queue_full (the export queue overflowed).",
    ["reason"],
)
# There at 0 from the start, so that `increase` sees the first spans lost.
for _reason in ("export_failed", "queue_full"):
    SPANS_DROPPED.labels(_reason)
# A state, not a rate: under light traffic `increase` of the counter fell to 0 between two
# goals, and an alert on it went pending and cleared for as long as the collector was down.
SPAN_EXPORT_FAILING = Gauge(
    "plangate_span_export_failing",
    "1 while this process's span exports fail (from a failed batch until one succeeds); 0 "
    "otherwise.",
)
SEALING_STOPPED = Gauge(
    "plangate_audit_sealing_stopped",
    "1 while a gate in this process seals no audit checkpoint (one it saw is gone from the "
    "store), or leaves out a chain rewritten since it was sealed; 0 otherwise, and always 0 "
    "in a process that runs no gate.",
)
POLICY_FILE_UNUSABLE = Gauge(
    "plangate_policy_file_unusable",
    "1 while a gate in this process has a policy file changed into one it cannot use (a rule "
    "that does not compile, a bound passed, the file gone) and decides with an older version; "
    "0 otherwise, and always 0 in a process that runs no gate.",
)
POLICY_VERSION = Gauge(
    "plangate_policy_version_info",
    "1, labelled with the policy version a gate in this process decides with (only that one; "
    "none in a process that runs no gate).",
    ["version"],
)
_POLICY_SHOWN: list[str] = []  # the version POLICY_VERSION is labelled with now
_POLICY_LOCK = threading.Lock()
_BROKER_UP: list[Gauge] = []  # made by the first worker stage to consume: serve has none
_BROKER_UP_LOCK = threading.Lock()


def broker_up(stage: str, up: bool) -> None:
    """Say whether a stage consumes from the broker (1) or is reconnecting (0).

    Only a worker's /metrics has the gauge, so that an alert on it never fires for `serve`,
    which consumes nothing.
    """
    with _BROKER_UP_LOCK:
        if not _BROKER_UP:
            _BROKER_UP.append(
                Gauge(
                    "plangate_broker_up",
                    "1 while the stage consumes from the broker; 0 while it reconnects.",
                    ["stage"],
                )
            )
    _BROKER_UP[0].labels(stage).set(1 if up else 0)


def policy_in_force(version: str, *, file_unusable: bool) -> None:
    """Say which policy version the gate decides with, and whether its file is unusable.

    The version before is removed: a panel or alert reading the version saw every one since
    the start.
    """
    with _POLICY_LOCK:
        for shown in _POLICY_SHOWN:
            if shown != version:
                POLICY_VERSION.remove(shown)
        _POLICY_SHOWN[:] = [version]
        POLICY_VERSION.labels(version).set(1)
    POLICY_FILE_UNUSABLE.set(1 if file_unusable else 0)


# SQLite's one write lock, which every writing transaction of every process takes in turn: the
# seconds this process held it bound the goals per second of the whole deployment (PostgreSQL
# has no such lock, and these stay empty there). Buckets from 0.1 ms: most hold it for 1-5 ms.
_LOCK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
SQLITE_LOCK_WAITED = Histogram(
    "plangate_sqlite_write_lock_waited_seconds",
    "How long this process's transactions waited for SQLite's write lock.",
    buckets=_LOCK_BUCKETS,
)
SQLITE_LOCK_HELD = Histogram(
    "plangate_sqlite_write_lock_held_seconds",
    "How long this process's transactions held SQLite's write lock (begin to commit).",
    buckets=_LOCK_BUCKETS,
)


ToolOutcome = Literal["succeeded", "failed", "timed_out"]


def tool_called(tool: str, outcome: ToolOutcome, seconds: float) -> None:
    """Count a tool call of a plan's run, and how long it took."""
    TOOL_SECONDS.labels(tool).observe(seconds)
    TOOL_CALLS.labels(tool, outcome).inc()


def intake_counted() -> None:
    """Show each outcome of serve's intake from its start, at 0 (`increase` sees the first)."""
    for outcome in get_args(IntakeOutcome):
        INTAKE.labels(outcome)


def intake(outcome: IntakeOutcome) -> None:
    """Count one submission to serve's intake."""
    INTAKE.labels(outcome).inc()


def tools_offered(tools: Iterable[str]) -> None:
    """Show each tool's call counts from the start, at 0.

    Prometheus' `increase` misses a series' first sample: a tool's first failures after an
    executor's start (its series born at 1) counted one short of PlangateToolFailing's 5.
    """
    for tool in tools:
        for outcome in get_args(ToolOutcome):
            TOOL_CALLS.labels(tool, outcome)


def settled(stage: str, kind: str, outcome: str) -> None:
    """Count a message a stage settled: handled, retried or dead_lettered."""
    MESSAGES.labels(stage, kind, outcome).inc()


_STORE_UP = "1 if the store answered this scrape's reads; 0 if not (its gauges are then left out)."


class StoreCollector(Collector):
    """Gauges read from the store at each scrape: goals by state, holds, the outbox backlog."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        """Yield the gauges; only `plangate_store_up` 0 when the store does not answer."""
        from sqlalchemy import func, not_, or_, select
        from sqlalchemy.exc import SQLAlchemyError

        from plangate.store.models import GoalRow, OutboxRow
        from plangate.store.outages import store_answered, store_failed
        from schemas import utcnow
        from schemas.goal_states import GoalStatus

        goals = GaugeMetricFamily("plangate_goals", "Goals by state.", labels=["state"])
        now = utcnow()
        # A delayed retry waits on purpose: counted as backlog, it read as a broker refusing
        # messages while the broker was healthy.
        due = or_(OutboxRow.not_before.is_(None), OutboxRow.not_before <= now)
        try:
            # Read only: on SQLite a writing transaction took the write lock, every worker's,
            # at every scrape of every process.
            with self._store.reading() as session:
                by_state = session.execute(
                    select(GoalRow.status, func.count(), func.min(GoalRow.updated_at)).group_by(
                        GoalRow.status
                    )
                ).all()
                backlog, delayed = session.execute(
                    select(func.count().filter(due), func.count().filter(not_(due))).where(
                        OutboxRow.sent_at.is_(None)
                    )
                ).one()
        except SQLAlchemyError as exc:
            store_failed(self._store, exc, "a metrics scrape")  # said once, not at every scrape
            # Said as a value, not only as gauges gone missing: a gap alerts nobody.
            yield GaugeMetricFamily("plangate_store_up", _STORE_UP, 0)
            return
        store_answered(self._store)
        yield GaugeMetricFamily("plangate_store_up", _STORE_UP, 1)
        counts = {state: count for state, count, _ in by_state}
        since = {state: moved for state, _, moved in by_state}
        # Every state, 0 included: a series that vanished when its last goal moved on left a
        # panel's line hanging and an alert on it (`> 0`) unable to resolve.
        for state in sorted(set(get_args(GoalStatus)) | set(counts)):
            goals.add_metric([state], counts.get(state, 0))
        yield goals
        yield GaugeMetricFamily(
            "plangate_held_plans", "Plans held for a person.", counts.get("held", 0)
        )
        for state, name, said in _OLDEST:
            age = (now - since[state]).total_seconds() if since.get(state) is not None else 0.0
            yield GaugeMetricFamily(name, said, age)
        yield GaugeMetricFamily(
            "plangate_outbox_backlog",
            "Messages stored, due now and not yet published (delayed retries not counted).",
            backlog or 0,
        )
        yield GaugeMetricFamily(
            "plangate_outbox_delayed",
            "Delayed retries stored, to be published once their time comes.",
            delayed or 0,
        )


# How long the oldest goal in a state has waited there, for the states a goal should leave.
_OLDEST = (
    ("held", "plangate_oldest_held_seconds", "Age of the oldest held plan (0: none held)."),
    (
        "submitted",
        "plangate_oldest_submitted_seconds",
        "How long the oldest submitted goal has waited for a planner to plan it (0: none).",
    ),
    (
        "approved",
        "plangate_oldest_approved_seconds",
        "How long the oldest approved goal has waited for an executor to start it (0: none).",
    ),
)

_collector: StoreCollector | None = None


def registry_with(store: Store) -> CollectorRegistry:
    """Return the default registry, its store gauges read from `store` (the latest given)."""
    global _collector
    if _collector is None:
        _collector = StoreCollector(store)
        REGISTRY.register(_collector)
    _collector._store = store
    return REGISTRY


def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """Return the registry in Prometheus' text format."""
    return generate_latest(registry)


def exposition_without_store() -> bytes:
    """Return the metrics of a process waiting for its store: `plangate_store_up` 0 among them.

    A worker waiting at its start showed no store gauge at all: PlangateStoreDown never fired.
    """
    registry = CollectorRegistry()
    registry.register(_StoreDown())
    return generate_latest(REGISTRY) + generate_latest(registry)


class _StoreDown(Collector):
    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("plangate_store_up", _STORE_UP, 0)


def decided(action: str, rule: str | None, decided_by: str = "") -> None:
    """Count a decision: a rule's by its name, a person's as `person`.

    One of the policy or the gate with no rule (none matched, a plan invalid) as `policy` or
    `gate`, as before. Not by the person's name: serve's /metrics answers anyone who reaches
    its port (the review page's), and listed every reviewer; who decided is in the audit log
    and the trace.
    """
    machine = decided_by if decided_by in ("policy", "gate") else "person"
    DECISIONS.labels(action, rule or machine).inc()
