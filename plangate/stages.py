"""Wiring: build each stage's handler from settings. The one place that knows all three."""

from __future__ import annotations

from datetime import timedelta

from approval_gate.handler import GateHandler
from approval_gate.policy import load_policy
from approval_gate.review import Review
from executor_worker.handler import ExecutorHandler
from plangate.bus import Bus, Envelope, Handler, Stage
from plangate.catalog import publish_catalog
from plangate.config import Settings
from plangate.signing import load_or_create_signer, load_trusted_keys
from plangate.store import Store
from plangate.tools import ToolRegistry, load_tools
from planner_worker.handler import PlannerHandler
from planner_worker.playbook import load_playbook_planner


def build_handler(
    stage: Stage,
    settings: Settings,
    store: Store,
    bus: Bus,
    registry: ToolRegistry | None = None,
) -> Handler:
    """Return the handler of one stage, configured from `settings`."""
    if stage == "planner":
        return PlannerHandler(store, load_playbook_planner(settings))
    if stage == "gate":
        signer = load_or_create_signer(settings)
        ttl = timedelta(seconds=settings.approval_ttl_seconds)
        return GateHandler(store, load_policy(settings), signer, ttl)
    tools = registry or load_tools(settings.tool_modules())
    publish_catalog(store, tools.catalog().values())

    def notify(envelope: Envelope) -> None:
        bus.publish([envelope])

    return ExecutorHandler(store, tools, load_trusted_keys(settings), notify)


def build_review(settings: Settings, store: Store) -> Review:
    """Return the human review service (it signs approvals like the gate)."""
    ttl = timedelta(seconds=settings.approval_ttl_seconds)
    return Review(store, load_or_create_signer(settings), ttl)
