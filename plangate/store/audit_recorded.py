"""What one goal's audit chain says, as `status`, `goals list` and the review would show it.

Read entry by entry, in the order written (`Recorded.read`); `audit_records` compares the rows
the views read with it, and the export writes it beside the rows (`export_records`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

from plangate.redaction import REDACTED, escape_marker
from schemas.decoding import storable_text
from schemas.goal_states import GoalStatus

_STATUSES = frozenset(get_args(GoalStatus))
_STEP_ENDS = frozenset({"running", "succeeded", "failed", "skipped", "unknown"})


# Who the policy's decisions are recorded as deciding (a person's name the reviewer's).
POLICY_DECIDER = "policy"
# A goal's move that records a decision on its plan, and the decision's action.
_DECIDED = {
    "goal.approved": "approve",
    "goal.rejected": "reject",
    "goal.held": "hold",
    "goal.denied": "deny",
    "goal.expired": "expire",
}


def edit_reason(revision: int, comment: str = "") -> str:
    """Return the reason an edit's decision on the revision it replaced is recorded with."""
    return f"edited into revision {revision}" + (f": {comment}" if comment else "")


RECORDED_AT = "\x00recorded_at"  # no JSON key of an entry's data can be this one
# A row and the entry of what made it are written in one transaction, a moment apart.
_TIME_SLACK = timedelta(seconds=5)


def other_time(shown: datetime | None, said: dict[str, Any] | None) -> str | None:
    """Return the time an entry recorded, if a row's `shown` time is another; else None.

    `goals list --since` filters on a goal's row, `status` shows a decision's and a step's:
    backdated in SQL, they told another story while the log verified.
    """
    recorded = (said or {}).get(RECORDED_AT)
    if shown is None or not isinstance(recorded, str):
        return None
    try:
        at = datetime.fromisoformat(recorded)
    except ValueError:  # the chain walk says what is wrong with the entry
        return None
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    shown = shown if shown.tzinfo else shown.replace(tzinfo=UTC)
    return at.isoformat() if abs(shown - at) > _TIME_SLACK else None


@dataclass
class Recorded:
    """What one goal's chain says, as the views would show it."""

    submitted: dict[str, Any] | None = None
    status: tuple[str, str | None] | None = None  # the last move, and its reason
    plans: dict[str, str] = field(default_factory=dict)  # plan_id: plan_hash
    deciders: dict[str, set[tuple[str, str]]] = field(default_factory=dict)  # (who, action)
    approvers: dict[str, set[str]] = field(default_factory=dict)  # plan_id: who approved
    steps: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    editors: dict[str, str] = field(default_factory=dict)  # plan_id: who wrote it, an edit
    last_decision: dict[str, tuple[str, str]] = field(default_factory=dict)  # (who, action)
    policy_said: dict[str, dict[str, Any]] = field(default_factory=dict)  # plan_id: its entry
    # (plan_id, who, action): the last entry of that decision (a person's comment, roles).
    said: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    holds: dict[str, dict[str, Any]] = field(default_factory=dict)  # plan_id: its goal.held
    signed_for: dict[str, list[str]] = field(default_factory=dict)  # plan_id: its approvers
    ran_with: dict[str, str] = field(default_factory=dict)  # approval_id: the plan it ran
    # (plan_id, reviewer): the roles their approval was counted with.
    approver_roles: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def read(self, kind: str, actor: str, data: dict[str, Any], at: str | None = None) -> None:
        """Take in one entry of the goal's chain, in the order written (`at`: when, if known).

        What an entry says is kept with its time (RECORDED_AT): a row's own time must agree.
        """
        if at is not None:
            data = {**data, RECORDED_AT: at}
        if kind == "goal.submitted" and self.submitted is None:  # later ones: retries
            self.submitted = data
        if kind.startswith("goal.") and kind[5:] in _STATUSES:
            self.status = (kind[5:], data.get("reason"))
        if kind == "plan.edited" and isinstance(data.get("from_plan_id"), str):
            # The edit took the old revision's slot for a person's decision, as a reject.
            self.deciders.setdefault(data["from_plan_id"], set()).add((actor, "reject"))
            if "roles" in data and isinstance(data.get("revision"), int):
                reason = edit_reason(data["revision"], str(data.get("comment") or ""))
                said = {"reason": reason, "roles": data["roles"]}
                self.said[(data["from_plan_id"], actor, "reject")] = said
        plan_id = data.get("plan_id")
        if isinstance(plan_id, str):
            self._about_plan(kind, actor, plan_id, data)

    def approved_by(self, plan_id: str) -> set[str]:
        """Return who approved the plan: counted, released it, or named as its approvers."""
        deciders = self.deciders.get(plan_id, set())
        released = {who for who, action in deciders if action == "approve"}
        return self.approvers.get(plan_id, set()) | released

    def _about_plan(self, kind: str, actor: str, plan_id: str, data: dict[str, Any]) -> None:
        if kind in ("goal.proposed", "plan.edited") and isinstance(data.get("plan_hash"), str):
            self.plans[plan_id] = data["plan_hash"]
        if kind == "plan.edited":
            self.editors[plan_id] = actor
        if kind in _DECIDED and data.get("decided_by") == POLICY_DECIDER:
            self.policy_said.setdefault(plan_id, data)  # the policy decides a revision once
        if kind in _DECIDED and "decided_by" in data:
            decided = (str(data["decided_by"]), _DECIDED[kind])
            self.said[(plan_id, *decided)] = data
            if kind == "goal.held" and "required_roles" in data:
                self.holds.setdefault(plan_id, data)  # a revision is held once
            self.deciders.setdefault(plan_id, set()).add(decided)
            if kind == "goal.held":
                # Held again: a person's decision the gate withdrew (its row deleted with it)
                # is no longer the plan's, whoever the entry names.
                self.last_decision.pop(plan_id, None)
            else:
                self.last_decision[plan_id] = decided
        self._approvals(kind, actor, plan_id, data)
        approved = self.approvers.setdefault(plan_id, set())
        approved.update(str(who) for who in data.get("approvers") or ())
        if kind == "plan.approval_counted":
            approved.add(actor)
        step = data.get("step_id")
        if isinstance(step, str) and kind.startswith("step."):
            self._step(kind[5:], (plan_id, step), data)

    def _approvals(self, kind: str, actor: str, plan_id: str, data: dict[str, Any]) -> None:
        """Take in who approved with which roles, the signed approval and the run it started."""
        if kind == "plan.approval_counted" and isinstance(data.get("roles"), list):
            self.approver_roles[(plan_id, actor)] = data["roles"]
        if kind == "goal.approved" and isinstance(data.get("roles"), list):  # a person's
            self.approver_roles[(plan_id, str(data.get("decided_by")))] = data["roles"]
        if kind == "approval.signed" and isinstance(data.get("approvers"), list):
            self.signed_for[plan_id] = [str(who) for who in data["approvers"]]
        if kind == "goal.running" and isinstance(data.get("approval_id"), str):
            self.ran_with[data["approval_id"]] = plan_id

    def _step(self, what: str, step: tuple[str, str], data: dict[str, Any]) -> None:
        if what in _STEP_ENDS:
            self.steps[step] = {"status": what, **data}
        elif what == "settled":  # a person said it happened, with this output, or not
            if data.get("happened"):
                self.steps[step] = {"status": "succeeded", **data}
            elif data.get("recorded") in _STEP_ENDS:  # a cancelled goal's: its row kept
                self.steps[step] = {"status": data["recorded"], **data}
            else:  # its row `pending` (deleted before 0015): the resumed run calls it again
                self.steps.pop(step, None)


def shown_as_recorded(shown: Any, recorded: Any) -> bool:
    """Say whether a row's value is what the log recorded of it, but for what it redacted.

    The log keeps text redacted of the secrets the writing process knew (this one may know
    others, or none): a `[redacted]` recorded stands for any text shown in its place.
    """
    if isinstance(recorded, str) and isinstance(shown, str):
        return _matches(storable_text(escape_marker(shown)), recorded.split(REDACTED))
    if isinstance(recorded, dict) and isinstance(shown, dict):
        shown = {storable_text(escape_marker(str(key))): value for key, value in shown.items()}
        return recorded.keys() == shown.keys() and all(
            shown_as_recorded(shown[key], value) for key, value in recorded.items()
        )
    if isinstance(recorded, list) and isinstance(shown, list):
        return len(recorded) == len(shown) and all(map(shown_as_recorded, shown, recorded))
    return bool(shown == recorded)


def _matches(shown: str, parts: list[str]) -> bool:
    """Say whether `shown` is `parts` in order with anything between them (in linear time)."""
    first, last = parts[0], parts[-1]
    if len(parts) == 1:
        return shown == first
    if len(shown) < len(first) + len(last) or not shown.startswith(first):
        return False
    at, end = len(first), len(shown) - len(last)
    for part in parts[1:-1]:  # each where it first fits: no later place could fit more after
        found = shown.find(part, at, end)
        if found < 0:
            return False
        at = found + len(part)
    return shown.endswith(last)
