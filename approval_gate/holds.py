"""The hold: what a decision on a held revision needs, recorded by the gate when it holds.

The gate writes one hold per held revision: the rule that held it, its reason, the policy
version, the roles a deciding reviewer must hold, and when the hold expires. Every decision by a
person is checked against that record, in the process that takes the decision and again by the
gate before it signs. The policy file of whichever process decides plays no part, so a policy
edited (or absent) while plans are held changes nothing for them.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from approval_gate.policy import Policy
from plangate.errors import ApprovalInvalid, Conflict, Forbidden, UnknownSigner
from plangate.reviewers import person_key
from plangate.signing import Signer, TrustedKeys
from plangate.store import DecisionRow, GoalRow, HoldRow, PlanRow
from plangate.store.decision_records import hold_asks
from plangate.store.goal_list import submitters_of
from plangate.store.models import EDIT_PREFIX
from plangate.store.plan_revision import PlanRevision
from plangate.unsealed_holds import WAY_OUT
from schemas import Decision, SignedEnvelope, utcnow

DEFAULT_HOLD_TTL = timedelta(days=1)
HOLD_TYPE = "application/vnd.plangate.hold+json"  # the payload type of a hold's seal


def record_hold(
    session: Session,
    plan: PlanRevision,
    decision: Decision,
    policy: Policy,
    default_ttl: timedelta = DEFAULT_HOLD_TTL,
    signer: Signer | None = None,
) -> HoldRow:
    """Store what a decision on this held revision needs, read from the policy that held it.

    Sealed with the gate's key (`signer`), so that the gate, before it signs an approval,
    knows the hold is the one it wrote: not one whose number of approvers, roles or expiry
    were changed in the database since.
    """
    terms = policy.hold_terms(decision)
    ttl = default_ttl if terms.ttl_seconds is None else timedelta(seconds=terms.ttl_seconds)
    now = utcnow()
    hold = HoldRow(
        plan_id=plan.plan_id,
        goal_id=plan.goal_id,
        rule=decision.rule,
        reason=decision.reason,
        policy_version=decision.policy_version,
        required_roles=list(terms.roles),
        expires_at=now + ttl,
        created_at=now,
        approvals_required=terms.approvals,
        approver_not_submitter=terms.approver_not_submitter,
    )
    if signer is not None:
        payload = hold_payload(hold, plan)
        hold.seal = signer.envelope(HOLD_TYPE, payload).model_dump(mode="json")
    session.add(hold)
    return hold


def hold_payload(hold: HoldRow, plan: PlanRevision) -> bytes:
    """Return the canonical JSON of what a hold asks of `plan` (this very revision and hash)."""
    asked = {
        "plan_id": hold.plan_id,
        "goal_id": hold.goal_id,
        "revision": plan.revision,
        "plan_hash": plan.plan_hash,  # a plan rewritten with its hash is not the one held
        "reason": hold.reason,
        "rule": hold.rule,
        "policy_version": hold.policy_version,
        "required_roles": sorted(str(role) for role in hold.required_roles or []),
        "approvals_required": hold.approvals_required,
        "approver_not_submitter": hold.approver_not_submitter,
        "expires_at": hold_asks(hold)["expires_at"],
    }
    return json.dumps(asked, sort_keys=True, separators=(",", ":")).encode()


def release_bar(hold: HoldRow | None) -> str | None:
    """Say why no approval of a revision held so can ever be released, whoever gives it.

    A hold without a seal was written before migration 0014 sealed holds (by a gate of a
    release at 0013 or older, even one still running after the upgrade): the gate signs no
    approval of it. The gate's refusal, the review's views and `serve` ask here alike, so that
    nobody is invited to approve what the gate will refuse. None: nothing bars its release.
    """
    if hold is None or hold.seal is not None:
        return None  # a plan held before holds were recorded: `check_reviewer` says why
    return (
        "cannot be released: its hold carries no seal (a gate of a release before schema "
        f"0014 held it), and the gate signs no approval of an unsealed hold: {WAY_OUT}"
    )


def check_releasable(hold: HoldRow | None, plan_id: str) -> None:
    """Refuse an approval of a revision that no approval can release (Conflict, saying why)."""
    if (bar := release_bar(hold)) is not None:
        raise Conflict(f"plan {plan_id} {bar}")


def check_sealed(hold: HoldRow, plan: PlanRevision, keys: TrustedKeys) -> None:
    """Refuse a hold the gate did not seal as it stands, for this plan (Forbidden, saying why)."""
    if (bar := release_bar(hold)) is not None:
        raise Forbidden(f"plan {hold.plan_id} {bar}; nothing is signed", "")
    try:
        envelope = SignedEnvelope.model_validate(hold.seal)
        payload, _ = keys.verified_payload(envelope, HOLD_TYPE)
        now = hold_payload(hold, plan)
        if payload != now:
            raise ApprovalInvalid(_what_changed(payload, now))
    except UnknownSigner as exc:
        # Not a tampered hold: its key left the trusted keys folder (a rotation finished too
        # early, or a revocation), and which of the two only the operator knows.
        raise Forbidden(
            f"the hold of plan {hold.plan_id} was sealed by key {', '.join(exc.key_ids)}, which "
            "the gate no longer trusts; nothing is signed. If that key was rotated out, put its "
            "public key back in the trusted keys folder and approve again; if it was revoked, "
            "reject the plan and submit the goal again",
            "",
        ) from None
    except (ApprovalInvalid, ValueError) as exc:
        reason = exc.reason if isinstance(exc, ApprovalInvalid) else str(exc)
        raise Forbidden(
            f"the hold of plan {hold.plan_id} is not as the gate recorded it ({reason}); "
            "nothing is signed: reject the plan and submit the goal again",
            "",
        ) from None


def _what_changed(sealed: bytes, now: bytes) -> str:
    """Say how a hold differs from what the gate sealed: which of its terms, or its version.

    "What it asks was changed" alone read as tampering to the operator of a rolling upgrade,
    whose gates of two versions sealed holds of two shapes.
    """
    try:
        was, current = json.loads(sealed), json.loads(now)
    except ValueError:
        return "what it asks was changed after the gate sealed it"
    if not isinstance(was, dict) or set(was) != set(current):
        return (
            "it was sealed by a gate of another plangate version, whose seal holds other terms "
            "(decide it with a gate of that version), or changed after it was sealed"
        )
    changed = sorted(name for name in current if was[name] != current[name])
    return f"what it asks was changed after the gate sealed it: {', '.join(changed)}"


def hold_of(session: Session, plan_id: str) -> HoldRow | None:
    """Return the hold of a revision, if the gate held it."""
    return session.get(HoldRow, plan_id)


def legacy_expiry(decision: DecisionRow, default_ttl: timedelta = DEFAULT_HOLD_TTL) -> datetime:
    """Return when a plan held before holds were recorded expires: the default TTL."""
    return decision.created_at + default_ttl


def required_roles(hold: HoldRow) -> frozenset[str]:
    """Return the roles a reviewer must hold to decide the revision."""
    return frozenset(str(role) for role in hold.required_roles or [])


def check_reviewer(
    hold: HoldRow | None, plan_id: str, reviewer: str, roles: frozenset[str], what: str
) -> None:
    """Refuse a reviewer who lacks a role the hold requires (Forbidden, saying which)."""
    if hold is None:
        # Held before this version recorded holds: what the holding rule required is not
        # known, so nobody may approve it (fail closed); it can be rejected, or it expires.
        if what == "reject":
            return
        raise Forbidden(
            f"plan {plan_id} was held before plangate recorded what a decision on it needs, "
            "so it cannot be approved or edited; reject it, and submit the goal again",
            "",
        )
    missing = sorted(required_roles(hold) - roles)
    if missing:
        needed = ", ".join(repr(role) for role in missing)
        raise Forbidden(
            f"rule {hold.rule!r} requires the role {needed} to {what} plan {plan_id}; "
            f"{reviewer} does not have it: ask a reviewer who does",
            missing[0],
        )


def check_not_submitter(hold: HoldRow | None, goal: GoalRow, reviewer: str) -> None:
    """Refuse the goal's submitter as an approver where the hold bars it (Forbidden).

    The submitter is whoever the goal's metadata names under any of `SUBMITTER_KEYS`
    (`submitter`, `submitted_by`, `source`, `ce.source`, `user`, as the submitting service set
    them), told apart regardless of case and spaces (a service may send `CAROL`); a goal that
    names none has no one to bar.
    """
    if hold is not None and barred_as_submitter(hold, goal, reviewer):
        raise Forbidden(
            f"rule {hold.rule!r} bars the goal's submitter from approving it, and {reviewer} "
            "submitted goal " + goal.id + ": ask another reviewer",
            "",
        )


def barred_as_submitter(hold: HoldRow | None, goal: GoalRow, reviewer: str) -> bool:
    """Return whether the hold bars `reviewer` from approving as the goal's submitter."""
    if hold is None or not hold.approver_not_submitter:
        return False
    return person_key(reviewer) in {person_key(name) for name in submitters_of(goal.meta)}


def check_approver(
    session: Session,
    hold: HoldRow | None,
    goal: GoalRow,
    plan: PlanRevision,
    reviewer: str,
    roles: frozenset[str],
) -> None:
    """Refuse a reviewer the hold does not let approve this revision (Forbidden, saying why).

    Every bar at once: the roles the hold asks, the submitter where it bars them, and the
    revision's authors. Whoever asks who may approve asks here, so all of them agree.
    """
    check_reviewer(hold, plan.plan_id, reviewer, roles, "approve")
    check_not_submitter(hold, goal, reviewer)
    check_not_author(session, hold, plan, reviewer)


def check_not_author(
    session: Session, hold: HoldRow | None, plan: PlanRevision, reviewer: str
) -> None:
    """Refuse an author of a revision as an approver of it (Forbidden).

    Whoever wrote the revision is a pair of eyes already: their approval would release a plan
    nobody else read, under whatever rule their own edit made it meet (an edit that makes a
    plan meet a rule asking fewer approvals must not let its editor release it alone). Its
    authors are the editors of every edit it is built on, back to the planner's draft: a
    second, small edit by someone else leaves the first editor's words in the plan.
    """
    if hold is None:
        return
    edited = revision_editors(session, plan).get(reviewer)
    if edited is not None:
        which = f"revision {edited}, which this one builds on"
        if edited == plan.revision:
            which = "this revision"
        needed = approvals_needed(hold)
        others = "another reviewer" if needed <= 1 else f"{needed} reviewers"
        raise Forbidden(
            f"{reviewer} wrote {which} (an edit), and rule {hold.rule!r} asks "
            f"{others} besides its authors to approve it: ask "
            + ("another reviewer" if needed <= 1 else "others"),
            "",
        )


def revision_editors(session: Session, plan: PlanRevision) -> dict[str, int]:
    """Return who edited the revision or the edits it is built on, each with their latest one.

    The chain ends at the newest revision a planner drafted (a retry drafts afresh, so edits
    before it left nothing in this one).
    """
    rows = session.execute(
        select(PlanRow.revision, PlanRow.planner)
        .where(PlanRow.goal_id == plan.goal_id, PlanRow.revision <= plan.revision)
        .order_by(PlanRow.revision.desc())
    )
    editors: dict[str, int] = {}
    for revision, planner in rows:
        if not planner.startswith(EDIT_PREFIX):
            break
        editors.setdefault(planner.removeprefix(EDIT_PREFIX), revision)
    return editors


def approvals_needed(hold: HoldRow) -> int:
    """Return how many distinct reviewers must approve a revision held so (at least 1)."""
    return max(1, hold.approvals_required)


def check_open(hold: HoldRow | None, plan_id: str, at: datetime) -> None:
    """Refuse a decision taken at or after the hold expired (Conflict), sweep or no sweep."""
    if hold is not None and at >= hold.expires_at:
        raise Conflict(
            f"plan {plan_id} was held until {hold.expires_at.isoformat()}; the hold has expired "
            "and the plan can no longer be decided"
        )
