"""The gate stage's handler: plan.proposed in; approved, denied or held out.

The plan is validated again here (nothing crosses a boundary unchecked) and its hash
recomputed; then the policy decides. A hold records what a person's decision on it needs.
Redelivery republishes the decision already taken. A person's approval (review.decided) is
checked against its hold and signed here too: the gate is the only signer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.orm import Session

from approval_gate.approvers import ApproverCheck, RecordedApprovers
from approval_gate.decisions import approval_issued, decision_of, follow_decision, record_decision
from approval_gate.history import History
from approval_gate.holds import DEFAULT_HOLD_TTL, record_hold
from approval_gate.notify import HeldNotice
from approval_gate.policy import Policy
from approval_gate.policy_lint import PolicyWarnings
from approval_gate.policy_reload import ReloadingPolicy
from approval_gate.release import Signing, release, release_reviewed
from plangate import telemetry
from plangate.bus import Delivery, Envelope
from plangate.catalog import read_catalog
from plangate.errors import Conflict, Reject
from plangate.signing import Signer, TrustedKeys
from plangate.store import DecisionRow, GoalRow, PlanPreviewRow, Store
from plangate.store.audit_policies import PolicyText, PolicyTexts
from plangate.store.decision_records import hold_asks
from plangate.store.hot_statements import HotStatement
from plangate.store.locks import lock_names
from plangate.store.outbox import emit
from plangate.store.plan_revision import PlanRevision, read_revision
from schemas import (
    Catalog,
    Decision,
    Message,
    PlanProposed,
    PreviewRequested,
    ReviewDecided,
    plan_hash,
)

# Plain statements, built once: what the gate reads of a goal and its decisions on every plan.
_GOALS = cast(Table, GoalRow.__table__)
_GOAL = HotStatement(
    select(_GOALS.c.status, _GOALS.c.text, _GOALS.c.metadata).where(
        _GOALS.c.id == bindparam("goal_id")
    )
)
_DECISIONS = cast(Table, DecisionRow.__table__)
_LATEST_DECISION = HotStatement(
    select(_DECISIONS.c.id)
    .where(_DECISIONS.c.plan_id == bindparam("plan_id"))
    .order_by(_DECISIONS.c.id.desc())
    .limit(1)
)


class GateHandler:
    """Decides each proposed plan revision by policy: approve, deny or hold for a person."""

    def __init__(
        self,
        store: Store,
        policy: Policy | ReloadingPolicy,
        signer: Signer,
        ttl: timedelta,
        on_held: Callable[[HeldNotice], object] | None = None,
        hold_ttl: timedelta = DEFAULT_HOLD_TTL,
        catalog: Callable[[Session], Catalog] = read_catalog,
        approvers: ApproverCheck | None = None,
        hold_keys: TrustedKeys | None = None,
        previews: bool = True,
    ) -> None:
        self._store = store
        self._previews = previews  # the dry runs the rules ask for
        # The keys the gate's seals on holds may be by: its own, and those it trusted before.
        self._hold_keys = hold_keys or TrustedKeys([signer.public_key])
        # Who approved, checked before signing; the default trusts this process's records.
        self._approvers = approvers or RecordedApprovers()
        self._policies = policy if isinstance(policy, ReloadingPolicy) else ReloadingPolicy(policy)
        self._signer = signer
        self._ttl = ttl
        self._on_held = on_held
        self._hold_ttl = hold_ttl
        self._catalog = catalog
        self._warnings = PolicyWarnings()
        self._texts = PolicyTexts(store)  # each version's text, in the log before its decisions

    def look(self) -> None:
        """Read the policy file again if it changed; a gate worker's sweep calls it.

        Between plans, too: a file broken while none came was said (and counted) only at the
        next plan.
        """
        self._policies.current()

    def __call__(self, message: Message, delivery: Delivery) -> Sequence[Envelope]:
        """Handle one plan.proposed (or review.decided) message."""
        if isinstance(message, ReviewDecided):
            return self._release(message)
        if not isinstance(message, PlanProposed):
            raise Reject(f"the gate does not handle {type(message).__name__}")
        plan = message.plan
        digest = plan_hash(plan)
        if digest != message.plan_hash:
            raise Reject(f"plan {plan.plan_id}: its hash does not match the plan it carries")
        # A policy that reads no history decides on the plan, the tools and the goal's words,
        # none of which changes under it: on SQLite it decides before the writing transaction,
        # outside the write lock, which every writer of every process waits for.
        policy = self._policies.current()  # one version for the whole decision
        self._texts.adopt(PolicyText(policy.version, policy.digest, policy.text, policy.source))
        unlocked = self._store.serialises_writes and not policy.reads_history
        early = self._decide_first(policy, message) if unlocked else None
        with self._store.session() as session:
            row = read_revision(session, plan.plan_id)
            if row is None or row.plan_hash != digest:
                raise Reject(f"plan {plan.plan_id} revision {plan.revision} is not in the store")
            repeated = self._repeat_earlier_decision(session, row)
            if repeated is not None:
                return repeated
            goal = _GOAL.first(session, {"goal_id": plan.goal_id})
            status, goal_text, goal_meta = goal if goal is not None else (None, "", {})
            if status == "cancelled":
                return []  # an operator stopped it: nothing more is decided
            goal_meta = dict(goal_meta)
            history = None
            if policy.reads_history:  # one decision at a time per tool (see history)
                lock_names(session, (f"plangate.history:{step.tool}" for step in plan.steps))
                history = History(session, plan, {k: str(v) for k, v in goal_meta.items()})
            decision = (
                early
                if early is not None
                else self._decide(
                    policy, message, self._catalog(session), goal_text, goal_meta, history
                )
            )
            try:
                record_decision(session, row, "policy", decision)
            except Conflict:  # another gate decided this revision meanwhile: say what it decided
                repeated = self._repeat_earlier_decision(session, row)
                assert repeated is not None
                return repeated
            held = None
            if decision.action == "hold":
                held = record_hold(session, row, decision, policy, self._hold_ttl, self._signer)
            envelopes = [
                follow_decision(
                    session,
                    row,
                    decision,
                    self._signer,
                    self._ttl,
                    proposed=plan,
                    recorded=hold_asks(held) if held is not None else None,
                )
            ]
            if self._previews and policy.wants_preview(decision):
                # An executor has the tools: it runs the reads and asks the writes. The row
                # is the request it checks; the message only wakes it.
                session.add(
                    PlanPreviewRow(plan_id=plan.plan_id, goal_id=plan.goal_id, plan_hash=digest)
                )
                ask = PreviewRequested(goal_id=plan.goal_id, plan=plan, plan_hash=digest)
                envelopes.append(emit(session, ask))
        if decision.action == "hold" and self._on_held is not None:
            # After the commit, once per revision: a redelivery repeats, it does not re-notify.
            notice = HeldNotice(
                plan.goal_id,
                plan.plan_id,
                plan.revision,
                decision.rule,
                decision.reason,
                plan.summary,
            )
            self._on_held(notice)
        return envelopes

    def _decide_first(self, policy: Policy, message: PlanProposed) -> Decision | None:
        """Decide in a transaction that only reads; None if the plan is not for deciding now.

        The writing transaction checks everything again and records the decision; it decides
        itself for a plan this one left (decided already, its goal stopped or unknown).
        """
        plan = message.plan
        with self._store.reading() as session:
            if _LATEST_DECISION.first(session, {"plan_id": plan.plan_id}) is not None:
                return None  # a redelivery: said again, not decided again
            goal = _GOAL.first(session, {"goal_id": plan.goal_id})
            if goal is None or goal[0] == "cancelled":
                return None
            catalog = self._catalog(session)
        _, goal_text, goal_meta = goal
        return self._decide(policy, message, catalog, goal_text, dict(goal_meta), None)

    def _release(self, message: ReviewDecided) -> Sequence[Envelope]:
        """Check a person's approval against its hold and sign it (refusals: dead letters)."""
        with self._store.session() as session:
            released = release_reviewed(session, message, self._signing(), self._approvers)
        if isinstance(released, Reject):  # raised once the audit of the refusal is committed
            raise released
        return released

    def _signing(self) -> Signing:
        return Signing(self._signer, self._ttl, self._hold_keys)

    def _repeat_earlier_decision(
        self, session: Session, row: PlanRevision
    ) -> list[Envelope] | None:
        """On a redelivery (or a lost race), say again what was decided; move nothing."""
        latest = _LATEST_DECISION.first(session, {"plan_id": row.plan_id})
        if latest is None:
            return None
        (latest_id,) = latest
        earlier = session.get_one(DecisionRow, latest_id)
        if earlier.stage == "human" and earlier.action == "approve":
            # A person's approval is signed only once checked against its hold.
            return release(session, row, earlier, self._signing(), self._approvers)
        decided = decision_of(earlier)
        if decided.action == "approve" and not approval_issued(session, row.plan_id):
            # The gate signs a policy's approval in the transaction that records it: one
            # recorded without its signature was written by someone else. Say so; sign nothing.
            raise Reject(
                f"plan {row.plan_id}: an approval by policy is recorded that the gate never "
                "signed; nothing is signed (has the database been written to by hand?)"
            )
        return [follow_decision(session, row, decided, self._signer, self._ttl, move_goal=False)]

    def _decide(
        self,
        policy: Policy,
        message: PlanProposed,
        catalog: Catalog,
        goal_text: str,
        goal_meta: dict[str, str],
        history: History | None,
    ) -> Decision:
        self._warnings.check(policy, catalog, self._approvers.known)
        with telemetry.tracer().start_as_current_span("decide") as span:
            decision = policy.decide_as_gate(message.plan, catalog, goal_text, goal_meta, history)
            span.set_attribute("plangate.decision.action", decision.action)
            span.set_attribute("plangate.decision.decided_by", decision.decided_by)
            span.set_attribute("plangate.decision.rule", decision.rule or "")
            span.set_attribute("plangate.goal_id", message.goal_id)
            span.set_attribute("plangate.plan_id", message.plan.plan_id)
            span.set_attribute("plangate.plan_hash", message.plan_hash)
            span.set_attribute("plangate.policy_version", decision.policy_version)
            return decision
