"""Who approved: before it signs, the gate checks each recorded approval against the reviewers.

A person's approval reaches the gate as a row in the store, and the store is shared by every
process of a deployment: its credentials, and a reviewers file of one's own for the CLI, were
enough to record "alice approved". So a worker's gate reads the reviewers file `serve` uses,
and counts an approval only if its reviewer is still listed there and it carries the proof
of their token (`plangate.reviewers.approval_proof`); the roles it checks against the hold
are the ones the file gives now, so a reviewer removed, or a role taken away, counts no more.

In the embedded mode the approvals are recorded by the gate's own process, which trusts them.
"""

from __future__ import annotations

import hmac
import logging
from typing import Protocol

from plangate.config import Settings
from plangate.errors import Forbidden, NotReady, Unavailable
from plangate.reviewers import Reviewers, ReviewersFile, approval_proof
from plangate.store import ReviewerApprovalRow

log = logging.getLogger(__name__)


class ApproverCheck(Protocol):
    """Returns the roles an approval counts with; Forbidden, saying why, if it counts not."""

    def roles(self, approval: ReviewerApprovalRow) -> frozenset[str]:
        """Return the approver's roles if the approval is theirs (Forbidden otherwise)."""
        ...

    def known(self) -> Reviewers | None:
        """Return the reviewers whose approvals may count, where this check knows them."""
        ...


class RecordedApprovers:
    """The embedded mode's check: approvals recorded in this process count as recorded."""

    def roles(self, approval: ReviewerApprovalRow) -> frozenset[str]:
        """Return the roles recorded with the approval."""
        return frozenset(str(role) for role in approval.roles or [])

    def known(self) -> Reviewers | None:
        """Return None: any name may be recorded here."""
        return None


class ProvenApprovers:
    """A worker's check: the approver is in the reviewers file, and the proof holds."""

    def __init__(self, reviewers: Reviewers | ReviewersFile) -> None:
        self._reviewers = reviewers

    def roles(self, approval: ReviewerApprovalRow) -> frozenset[str]:
        """Return the roles the reviewers file gives the approver now."""
        who = approval.reviewer
        reviewers = self._reviewers.current()
        if reviewers.problem is not None:  # not the approver's doing: try again once fixed
            raise Unavailable(f"the gate's reviewers file cannot be read: {reviewers.problem}")
        reviewer = reviewers.named(who)
        if reviewer is None:
            raise Forbidden(f"{who} is not in the gate's reviewers file (removed, or never)", "")
        expected = approval_proof(reviewer.token_sha256, approval.plan_id, approval.plan_hash, who)
        given = (approval.proof or "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, expected.encode()):
            raise Forbidden(
                f"the approval recorded as {who}'s carries no proof of {who}'s token (it was "
                "not made with their token through plangate serve or the CLI)",
                "",
            )
        return reviewer.roles

    def known(self) -> Reviewers | None:
        """Return the reviewers file as it reads now (None while it cannot be read)."""
        reviewers = self._reviewers.current()
        return reviewers if reviewers.problem is None else None


class NoReviewers:
    """A worker's gate without a reviewers file: it cannot tell who approved, so none counts yet.

    The gate's own setting is missing, not the approver's right: their approval waits (a
    stored retry, holding no slot) until the gate is started with the file, then counts as the
    file says. Refused, it was withdrawn, and everyone had to approve again.
    """

    def roles(self, approval: ReviewerApprovalRow) -> frozenset[str]:
        """Keep every approval waiting (NotReady), saying what to configure."""
        log.warning(
            "%s's approval of plan %s waits: no PLANGATE_REVIEWERS_FILE, so this gate cannot "
            "check who approved; start it with the reviewers file serve uses",
            approval.reviewer,
            approval.plan_id,
        )
        # Every 30 s: a wait on a person's setting, not an outage (the backoff of an outage
        # never grew here, and each waiting approval came back, and was logged, every 2 s).
        raise NotReady(
            "this gate has no reviewers file to check who approved: start it with the one "
            "serve uses (PLANGATE_REVIEWERS_FILE)",
            delay=30.0,
        )

    def known(self) -> Reviewers | None:
        """Return no reviewers: none may approve."""
        return Reviewers()


def worker_approvers(settings: Settings) -> ApproverCheck:
    """Return a worker's check: by the reviewers file, or, without one, refusing everyone."""
    if settings.reviewers_file is None:
        log.warning(
            "PLANGATE_REVIEWERS_FILE is not set: this gate counts no approval by a person (each "
            "waits until the gate is given the reviewers file `plangate serve` uses)"
        )
        return NoReviewers()
    path = settings.reviewers_file
    if not path.exists():
        log.warning(
            "the reviewers file %s does not exist yet: no approval counts until it does", path
        )
    # Read again whenever it changes: a reviewer removed, or a role taken, counts no more.
    return ProvenApprovers(ReviewersFile(path, required=False))
