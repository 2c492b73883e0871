"""A plan whose tools the catalog has but this executor lacks: handed back, or failed.

Its plan is valid where the gate approved it: this executor was started with other tools
(PLANGATE_TOOLS), and another may have them. It failed the goal, "the plan is invalid"; then
it was handed back three times, and with one executor in two lacking a tool, one plan in eight
landed on it all three times and failed while an executor offering the tool ran. Now it is
handed on, without using an attempt, as long as executors have said they offer the tools
lately (`plangate.catalog.keep_offering`), for `HANDED_ON_FOR` at most (tools split between
executors none of which has them all would hand it on for ever); then, or once none offers
them, a few tries more, then the goal fails saying why (handed back for ever, it went round the
dead-letter queue).

So is a plan this executor cannot run because its own spec of a tool differs from the
catalog's (a rollout: one executor's `create_refund` takes a new required argument, another's
does not): the plan was made for the other version, which another executor offers. One in two
such goals failed `bad_args` after a person had approved it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from plangate.catalog import load_catalog, offered_lately
from plangate.errors import NotReady, Retry
from plangate.store import Store
from plangate.tools import ToolRegistry
from schemas import Catalog, Plan, PlanInvalid, PlanProblem, utcnow

log = logging.getLogger(__name__)

KEY_WAIT = 30.0  # before a plan no running executor can take is tried again
HAND_BACKS = 3  # tries of a plan by executors lacking its tools, when none offers them lately
HANDED_ON = 2.0  # before a plan another executor offers the tools of is sent on again
HANDED_ON_FOR = timedelta(minutes=10)  # from the message's making: then it is tried as lacking


@dataclass(frozen=True)
class _Elsewhere:
    """The plan's tools another executor may run where this one cannot: lacking, or otherwise."""

    tools: list[str]
    lacking: bool  # else this executor's spec of them differs from the catalog's

    def __str__(self) -> str:
        said = ", ".join(self.tools)
        return f"lacks the tools {said}" if self.lacking else f"offers other versions of {said}"


def hand_back_if_lacking(
    plan: Plan,
    registry: ToolRegistry,
    store: Store,
    attempt: int,
    made_at: datetime,
    *,
    gives_up: bool = True,
    problems: Sequence[PlanProblem] = (),
) -> PlanInvalid | None:
    """Hand `plan` back (NotReady or Retry) if another executor may run it where this one cannot.

    That is, the catalog has tools this executor lacks, or this executor's spec of one differs
    from the catalog's (the plan, invalid here, was made for the other). None when neither (the
    plan is invalid: said as validation said); PlanInvalid, saying what to do, when no executor
    offered the tools lately (or they were handed on since `made_at` for `HANDED_ON_FOR`) and
    its tries are spent. Unless `gives_up` is false (a held plan's preview, which lives as long
    as the hold): then it waits, `KEY_WAIT` at a time, for an executor offering the tools to
    start (dead-lettered, the review said "not ready yet" for good, even once one had).
    `problems`: what validation said here: only their steps' tools are checked for another
    version (all the plan's, without), and they are kept in the PlanInvalid of one.
    """
    elsewhere = _elsewhere(plan, registry, load_catalog(store), problems)
    if elsewhere is None:
        return None
    fresh = utcnow() - made_at < HANDED_ON_FOR
    if fresh and all(offered_lately(store, elsewhere.tools).values()):
        log.info(
            "plan %s of goal %s: this executor %s: handed on to an executor offering the plan's",
            plan.plan_id,
            plan.goal_id,
            elsewhere,
        )
        # Spread, so that the same idle consumer does not take it back each time.
        delay = HANDED_ON * random.uniform(0.5, 1.5)
        raise NotReady(f"this executor {elsewhere}; handed on", delay=delay)
    if not gives_up:
        raise NotReady(f"this executor {elsewhere}; waiting for one", delay=KEY_WAIT)
    if attempt < HAND_BACKS:
        log.error(
            "goal %s: this executor %s, %s: start one with the PLANGATE_TOOLS that offer "
            "them; handed back meanwhile",
            plan.goal_id,
            elsewhere,
            "which the catalog has but no running executor has offered lately (or none offers "
            "all the plan's tools)"
            if elsewhere.lacking
            else "and no executor offering the plan's version ran it",
        )
        raise Retry(f"this executor {elsewhere}", delay=KEY_WAIT)
    return PlanInvalid([_given_up(elsewhere), *([] if elsewhere.lacking else problems)])


def _elsewhere(
    plan: Plan, registry: ToolRegistry, catalog: Catalog, problems: Sequence[PlanProblem]
) -> _Elsewhere | None:
    """Return the plan's tools another executor may run where this one cannot, if any."""
    tools = {step.tool for step in plan.steps}
    own = registry.catalog()
    missing = sorted(tools - own.keys())
    if missing:
        return _Elsewhere(missing, lacking=True) if set(missing) <= catalog.keys() else None
    # Only the tools of the steps found invalid here (all, for a problem of the whole plan): a
    # plan invalid for other reasons is not handed round because a description differs.
    steps = {problem.step_id for problem in problems}
    if problems and None not in steps:
        tools = {step.tool for step in plan.steps if step.id in steps}
    differing = sorted(
        tool
        for tool in tools & catalog.keys()
        if own[tool].model_dump(mode="json") != catalog[tool].model_dump(mode="json")
    )
    return _Elsewhere(differing, lacking=False) if differing else None


def _given_up(elsewhere: _Elsewhere) -> PlanProblem:
    said = ", ".join(elsewhere.tools)
    if elsewhere.lacking:
        return PlanProblem(
            "unknown_tool",
            f"the executors that took it lack the tools {said}, which the catalog has but no "
            "running executor offers with the plan's other tools: start executors with all of "
            "them (PLANGATE_TOOLS), then retry the goal",
        )
    return PlanProblem(
        "bad_args",
        f"executors offer different versions of {said}: the ones that took it do not take the "
        "arguments the plan was approved with, and none offering the plan's version ran it "
        f"within {int(HANDED_ON_FOR.total_seconds() // 60)} minutes: give every executor the "
        "same version (`tool NAME differs from the catalog's` in their logs says which), then "
        "retry the goal",
    )
