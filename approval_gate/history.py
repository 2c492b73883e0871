"""Limits over history: what rules may ask of the plans already approved.

`history.count(tool, window)`: how many steps calling `tool` are in plans approved within
`window` (`"1h"`, `"30m"`, `"1d"`), by the policy or by people, whether their runs are
pending, in flight or finished. `history.sum(tool, arg, window, key)`: the sum of the
numeric argument `arg` over those steps, among goals whose metadata `key` has this goal's
value (the day's refunds for this customer); an argument a `${ref}` fills in, at the value its
step ran with (its audit entry's). The plan being decided is not counted: a rule
adds its own steps if it means to.

A decision that reads history holds a lock on each tool of its plan until it commits
(`plangate.store.locks`): the next decision on a plan with those tools reads this one's
approval, so a burst of goals cannot pass a cap together.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from plangate.errors import PolicyError
from plangate.store import ApprovalRow, AuditRow, GoalRow, PlanRow
from plangate.store.goal_list import parse_since
from schemas import Plan, utcnow
from schemas.cel_check import call_literals
from schemas.goal_states import TERMINAL
from schemas.references import references_in

FUNCTIONS = ("count", "sum")  # called on `history`: history.count(...), history.sum(...)
_SIGNATURE = {"count": "tool, window", "sum": "tool, arg, window, key"}
_ARITY = {name: len(signature.split(", ")) for name, signature in _SIGNATURE.items()}


class History:
    """The approved plans a rule may count, read in the deciding transaction."""

    def __init__(
        self,
        session: Session | None,
        plan: Plan,
        goal_metadata: Mapping[str, str] | None = None,
        as_of: datetime | None = None,
    ) -> None:
        self._session = session
        self._plan_id = plan.plan_id
        self._metadata = dict(goal_metadata or {})
        # A moment past (a backtest replays a decision as it was taken): the windows end there,
        # and what was approved after it is not counted.
        self._as_of = as_of

    def functions(self) -> dict[str, Callable[..., Any]]:
        """Return the CEL functions, by name, that rules call on `history`."""
        return {"count": self.count, "sum": self.sum}

    def count(self, _history: object, tool: str, window: str) -> int:
        """Return how many steps calling `tool` were approved within `window`."""
        return sum(1 for _args, _meta in self._steps(tool, window))

    def sum(self, _history: object, tool: str, arg: str, window: str, key: str) -> float:
        """Return the sum of `arg` over `tool`'s approved steps, among goals sharing `key`."""
        if key not in self._metadata:
            raise PolicyError(f"history.sum: this goal's metadata has no {key!r}")
        total = 0.0
        for args, meta in self._steps(tool, window):
            if meta.get(key) != self._metadata[key]:
                continue
            value = args.get(arg, 0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                # A reference not run yet: the total is not known until it has.
                raise PolicyError(f"history.sum: {tool}'s {arg!r} is not a number: {value!r}")
            total += value
        return total

    def _steps(self, tool: str, window: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        since = _since(window)
        if self._session is None:
            return []
        query = (
            select(PlanRow.plan_id, PlanRow.goal_id, PlanRow.body, GoalRow.meta, GoalRow.status)
            .join(ApprovalRow, ApprovalRow.plan_id == PlanRow.plan_id)
            .join(GoalRow, GoalRow.id == PlanRow.goal_id)
            .where(PlanRow.plan_id != self._plan_id)
        )
        if self._as_of is None:
            query = query.where(ApprovalRow.created_at >= since)
        else:
            since = self._as_of - (utcnow() - since)
            query = query.where(ApprovalRow.created_at.between(since, self._as_of))
        steps = [
            (plan_id, goal_id, step, dict(meta or {}), status)
            for plan_id, goal_id, body, meta, status in self._session.execute(query).all()
            for step in body.get("steps", [])
            if step.get("tool") == tool
        ]
        # An argument a `${ref}` fills in is text in the plan: the value it ran with is in
        # its step's audit entry. (Summed as text, one such refund made every later decision
        # on the customer's refunds fail for the whole window.) A step of a goal that ended
        # with no call of it (skipped, cancelled first) added nothing; one that may be under
        # way, or may or may not have happened, is not known: its text makes the sum fail.
        referring = {goal_id for _, goal_id, step, _, _ in steps if _refers(step.get("args"))}
        called, seen = self._called_with(referring) if referring else ({}, set())
        counted = []
        for plan_id, _, step, meta, status in steps:
            key = (plan_id, str(step.get("id")))
            if key in called:
                counted.append((called[key], meta))
            elif not (_refers(step.get("args")) and status in TERMINAL and key not in seen):
                counted.append((dict(step.get("args") or {}), meta))
        return counted

    def _called_with(
        self, goal_ids: set[str]
    ) -> tuple[dict[tuple[str, str], dict[str, Any]], set[tuple[str, str]]]:
        """Return what each step of these goals was called with, as its entry says.

        And every step an entry says was called (one with no arguments: unknown, settled).
        """
        assert self._session is not None
        entries = self._session.execute(
            select(AuditRow.kind, AuditRow.data)
            .where(AuditRow.goal_id.in_(goal_ids), AuditRow.kind.like("step.%"))
            .order_by(AuditRow.seq)
        ).all()
        called: dict[tuple[str, str], dict[str, Any]] = {}
        seen: set[tuple[str, str]] = set()
        for kind, data in entries:
            if kind == "step.skipped" or "plan_id" not in data or "step_id" not in data:
                continue  # ended without a call (a `when`, a goal cancelled first)
            key = (str(data["plan_id"]), str(data["step_id"]))
            seen.add(key)
            if isinstance(data.get("args"), dict):
                called[key] = dict(data["args"])
        return called, seen


def _refers(args: object) -> bool:
    """Say whether a step's arguments hold a reference to another step's output."""
    return isinstance(args, dict) and any(True for _ in references_in(args))


def no_history(plan: Plan, goal_metadata: Mapping[str, str] | None = None) -> History:
    """Return history as a new deployment has it, nothing approved yet: for a policy's tests.

    `plangate policy test` must decide alike on any machine and in CI, so it never counts a
    store's record; a window or key a rule gets wrong is still an error there.
    """
    return History(None, plan, goal_metadata)


def window_problems(source: str) -> list[str]:
    """Return the windows a rule writes out for `history` that are no window.

    Found when the policy loads: at a decision, a wrong one held every plan the rule met.
    """
    problems = []
    for function, index in (("count", 1), ("sum", 2)):
        for args in call_literals(source, "history", function):
            if len(args) != _ARITY[function]:  # it held every plan the rule met, saying so late
                problems.append(
                    f"history.{function} takes {_ARITY[function]} arguments "
                    f"({_SIGNATURE[function]}), not {len(args)}"
                )
                continue
            window = args[index] if len(args) > index else None
            if window is None:
                continue
            try:
                _since(window)
            except PolicyError as exc:
                problems.append(str(exc).replace("history:", f"history.{function}:", 1))
    return problems


def _since(window: str) -> datetime:
    if re.fullmatch(r"0+[smhdw]", window.strip()):  # a cap over it never counts anything
        raise PolicyError(
            f"history: {window!r} is an empty window (it counts nothing); say 30m, 1h, 1d or 1w"
        )
    # An age only: a date (which `--since` takes) is a fixed start, or one in the future that
    # counts nothing, as an empty window does.
    if not re.fullmatch(r"\d+[smhdw]", window.strip()):
        raise PolicyError(f"history: {window!r} is no window; say 30m, 1h, 1d or 1w")
    try:
        return parse_since(window)
    except Exception as exc:
        raise PolicyError(f"history: {window!r} is no window; say 30m, 1h, 1d or 1w") from exc
