"""Wiring: build each stage's handler from settings. The one place that knows all three."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.orm import Session

from approval_gate.approvers import ApproverCheck, RecordedApprovers, worker_approvers
from approval_gate.expiry import expire_held
from approval_gate.handler import GateHandler
from approval_gate.notify import WebhookNotifier
from approval_gate.policy_reload import ReloadingPolicy
from approval_gate.review import Review
from executor_worker.handler import ExecutorHandler
from plangate import metrics, telemetry
from plangate.bus import Bus, Envelope, Handler, Stage
from plangate.bus.middleware import Middleware
from plangate.catalog import publish_catalog, read_catalog, read_offered_catalog
from plangate.checkpoint_memory import CheckpointMemory
from plangate.config import Settings
from plangate.errors import AuditBroken
from plangate.middleware import standard
from plangate.middleware.outages import DatabaseOutages
from plangate.signing import Signer, TrustedKeys
from plangate.signing_keys import load_or_create_signer, load_trusted_keys, trusted_keys_dir
from plangate.store import Store, audit_checkpoints
from plangate.tools import ToolRegistry, load_tools
from planner_worker.handler import PlannerHandler
from planner_worker.loading import (
    GIVEN_PLANNER_LEASE,
    given_planner_line,
    load_planner,
    planner_line,
    planner_warning,
    planning_lease,
)
from planner_worker.planner import Planner
from planner_worker.replan import ReplanPolicy
from schemas import Catalog

log = logging.getLogger(__name__)


def stage_middleware(stage: Stage) -> list[Middleware]:
    """Return what a stage's consume loop does around each message (`plangate.middleware`).

    The standard set, and database outages mapped to `Unavailable` innermost.
    """
    return [*standard(stage), DatabaseOutages()]


def build_handler(
    stage: Stage,
    settings: Settings,
    store: Store,
    bus: Bus,
    registry: ToolRegistry | None = None,
    *,
    previews: bool = True,
    stopping: threading.Event | None = None,
    planner: Planner | None = None,
) -> Handler:
    """Return the handler of one stage, configured from `settings`.

    `previews`: whether the gate asks for the dry runs its rules want (a run approving at its
    terminal unseen has no one to show them to). `stopping`: a worker's stop; once it is set,
    an executor starts no further step and hands its runs back to the broker, for another
    executor. (Embedded, no other executor would take them: its runs go on, and Ctrl-C
    cancels the goal instead.) `planner`: the planner stage's, given in code (else the one
    the settings choose).
    """
    return _stage_handler(stage, settings, store, bus, registry, previews, stopping, planner)


def _stage_handler(
    stage: Stage,
    settings: Settings,
    store: Store,
    bus: Bus,
    registry: ToolRegistry | None,
    previews: bool,
    stopping: threading.Event | None = None,
    planner: Planner | None = None,
) -> Handler:
    # Given the tools (embedded mode), every stage plans and decides with exactly those;
    # otherwise with the catalog the executors published to the store: planners with the
    # tools executors still offer, gates with every tool (a plan made before one was retired
    # is the executors' to hand on or fail, saying why).
    catalog: Callable[[Session], Catalog] = read_catalog
    planning: Callable[[Session], Catalog] = read_offered_catalog
    if registry is not None:
        catalog = planning = _fixed_catalog(registry.catalog())
    if stage == "planner":
        return _planner_handler(settings, store, planning, planner)
    if stage == "gate":
        # The policy first: a gate that refuses its policy (exit 2) made a key all the same
        # and published its .pub to the folder executors trust.
        policies = ReloadingPolicy.from_settings(settings)
        policy = policies.current()
        log.info(
            "deciding with policy version %s (%s)",
            policy.version,
            f"{settings.policy_file}, read again when it changes"
            if settings.policy_file
            else "the packaged default",
        )
        signer = load_or_create_signer(settings)
        # Said at every start: after a key's rotation, executors refuse what it signs until
        # its public key is in their trusted keys folder.
        log.info(
            "signing approvals with key %s; executors run them only with its public key in "
            "their trusted keys folder",
            signer.key_id,
        )
        ttl = timedelta(seconds=settings.approval_ttl_seconds)
        notifier = None
        if settings.webhook_url:
            notifier = WebhookNotifier(settings.webhook_url, settings.public_url)
        return GateHandler(
            store,
            policies,
            signer,
            ttl,
            on_held=notifier,
            hold_ttl=timedelta(seconds=settings.hold_ttl_seconds),
            catalog=catalog,
            # Embedded, people's approvals are recorded in this process; a worker checks them.
            approvers=RecordedApprovers() if registry is not None else worker_approvers(settings),
            hold_keys=_hold_keys(signer, settings),
            previews=previews,
        )
    tools = registry or configured_tools(settings)
    # Embedded on the data folder's store, its tools are the only ones; on a deployment's
    # store, a run's differing tools are said as a worker's are (policies read their effects).
    alone = registry is not None and settings.store_in_data_folder
    publish_catalog(store, tools.catalog().values(), shared=not alone)
    metrics.tools_offered(tools.catalog())

    lease = timedelta(seconds=settings.step_lease_seconds)
    trusted = load_trusted_keys(settings)
    if not trusted:  # every approval waits until the gate's key is there: say so at start
        log.warning(
            "no trusted keys in %s: this executor checks no approval until the gate's public "
            "key is there (the gate writes it into a folder it shares; else copy its .pub)",
            trusted_keys_dir(settings),
        )
    return ExecutorHandler(
        store,
        tools,
        trusted,
        bus.publish_one,
        step_lease=lease,
        tool_timeout=settings.tool_timeout_seconds,
        stopping=stopping,
    )


def _planner_handler(
    settings: Settings,
    store: Store,
    catalog: Callable[[Session], Catalog],
    given: Planner | None,
) -> PlannerHandler:
    """Return the planner stage's handler: with the planner `given` in code, else the settings'."""
    if given is None:
        planner, lease = load_planner(settings), planning_lease(settings)
        log.info("%s", planner_line(settings))
        if warning := planner_warning(settings):
            log.warning("%s", warning)
    else:
        planner, lease = given, GIVEN_PLANNER_LEASE
        log.info("%s", given_planner_line(given))
    return PlannerHandler(
        store, planner, ReplanPolicy.from_settings(settings), lease=lease, catalog=catalog
    )


def _fixed_catalog(fixed: Catalog) -> Callable[[Session], Catalog]:
    def catalog(_session: Session) -> Catalog:
        return fixed

    return catalog


def _hold_keys(signer: Signer, settings: Settings) -> TrustedKeys:
    """Return the keys a gate's seals on holds may be by: its own, and those it trusts.

    The folder is read again for a key not known yet, as after a rotation, and when it
    changes: a seal by a key removed from it (revoked) is refused.
    """

    def keys() -> list[Ed25519PublicKey]:
        return [signer.public_key, *load_trusted_keys(settings).values()]

    return TrustedKeys(keys(), reload=keys, folder=trusted_keys_dir(settings))


def configured_tools(settings: Settings) -> ToolRegistry:
    """Return the tools the settings name: Python modules, then MCP servers' tools."""
    tools = load_tools(settings.tool_modules())
    if settings.mcp_servers is not None:
        # Imported here: the mcp SDK is an optional extra, needed only when servers are set.
        from plangate.tools.mcp import open_mcp_servers

        servers = open_mcp_servers(settings.mcp_servers)
        try:
            for each in servers.tools:
                tools.register(each)
        except BaseException:
            servers.close()
            raise
    return tools


def build_review(
    settings: Settings, store: Store, approvers: ApproverCheck | None = None
) -> Review:
    """Return the human review service: it records decisions; it holds no key and no policy.

    It counts approvals as the gate will (`approvers`): by the reviewers file where there is
    one (serve, the CLI), else as recorded (the embedded mode, whose gate counts so).
    """
    if approvers is None and settings.reviewers_file is not None:
        approvers = worker_approvers(settings)
    # A person's decision is a span of the goal's trace: the process that records it (serve,
    # the CLI) exports it as the stages do theirs (it made none: no provider was installed).
    telemetry.setup_tracing()
    ttl = timedelta(seconds=settings.hold_ttl_seconds)
    return Review(store, hold_ttl=ttl, approvers=approvers)


def build_expiry(
    settings: Settings, goal_ids: Collection[str] | None = None
) -> Callable[[Store, datetime], list[Envelope]]:
    """Return the function that expires held plans past their TTL (as their holds say).

    With `goal_ids`, only those goals' plans (an embedded run looks after its own goal only).
    """
    default = timedelta(seconds=settings.hold_ttl_seconds)

    def expire(store: Store, now: datetime) -> list[Envelope]:
        return expire_held(store, now, default_ttl=default, goal_ids=goal_ids)

    return expire


def build_sealing(settings: Settings) -> Callable[[Store], None]:
    """Return what the gate's sweep calls to seal the audit chains.

    A checkpoint signed with the gate's key, at most every `audit_checkpoint_seconds`, and only
    if some chain moved (`plangate.store.audit_checkpoints`).
    """
    signer = load_or_create_signer(settings)
    trusted = load_trusted_keys(settings)  # the keys it signed with before a rotation
    memory = CheckpointMemory(settings.data_dir)
    every = settings.audit_checkpoint_seconds
    sealed_at = -every
    stopped = False  # whether the last sweep sealed nothing, or left a chain out

    def seal(store: Store) -> None:
        nonlocal sealed_at, stopped
        if time.monotonic() - sealed_at < every:
            return
        try:
            with store.session() as session:
                memory.check(session)  # never seal over checkpoints someone deleted
                refused = audit_checkpoints.write(session, signer, trusted=trusted).refused
        except AuditBroken as exc:
            stopped = True
            metrics.SEALING_STOPPED.set(1)
            log.error("%s", exc)  # said once a checkpoint interval, until a person looks
        else:
            # A chain rewritten since it was sealed is left out (the others are sealed).
            if stopped and not refused:
                log.info("every audit chain holds what was sealed again: sealing them all")
            stopped = bool(refused)
            metrics.SEALING_STOPPED.set(1 if refused else 0)
            for said in refused:
                log.error("%s", said)
            try:
                with store.reading() as session:
                    memory.remember_newest(session)
            except OSError as exc:  # a data folder it cannot write: seal on, unremembered
                log.warning("cannot remember the newest audit checkpoint: %s", exc)
        sealed_at = time.monotonic()

    return seal
