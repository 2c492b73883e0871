"""Who may still approve a held revision, and whether they are enough to release it.

After an edit, a revision needing two approvals from finance, in a team of two finance
reviewers one of whom wrote the edit, can never be released: it sat until it expired, the
review saying "1 of 2 approvals". Each reviewer in the reviewers file is asked here through
`check_approver`, the bars an approval is counted by, so what the review says and what the
gate counts cannot differ.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from approval_gate.approvals import approvals_required, progress
from approval_gate.holds import check_approver, required_roles
from plangate.errors import Forbidden
from plangate.reviewers import Reviewers
from plangate.store import GoalRow, HoldRow, PlanRow


def release_shortfall(
    session: Session,
    plan: PlanRow,
    hold: HoldRow,
    goal: GoalRow,
    approved: Sequence[str],
    reviewers: Reviewers,
) -> str | None:
    """Say why the revision cannot be released, if fewer reviewers may approve it than it needs.

    `approved`: who approved it so far, as the gate counts them (they may not approve again).
    None when enough reviewers are left: the file is read only until they are found.
    """
    needed = approvals_required(hold)
    left = needed - len(approved)
    if left <= 0:
        return None
    eligible: list[str] = []
    for reviewer in reviewers:
        if reviewer.name in approved:
            continue
        try:
            check_approver(session, hold, goal, plan, reviewer.name, reviewer.roles)
        except Forbidden:
            continue
        eligible.append(reviewer.name)
        if len(eligible) >= left:
            return None
    return _said(needed, approved, eligible, sorted(required_roles(hold)))


def _said(needed: int, approved: Sequence[str], eligible: list[str], roles: list[str]) -> str:
    with_roles = ""
    if roles:
        with_roles = f" with the role{'s' if len(roles) > 1 else ''} {', '.join(roles)}"
    many = "s" if needed > 1 else ""
    who = "no reviewer"
    if eligible:
        who = f"only {len(eligible)} more ({', '.join(eligible)})"
    add = f"plangate reviewers add NAME{''.join(f' --role {role}' for role in roles)}"
    return (
        f"cannot be released: {needed} approval{many} needed ({progress(list(approved), needed)})"
        f", and {who} in the reviewers file{with_roles} may still approve it (its editors, "
        "the submitter where the rule bars them, and who approved already may not): add a "
        f"reviewer (`{add}`) or reject it"
    )
