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
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta

from plangate.catalog import load_catalog, offered_lately
from plangate.errors import NotReady, Retry
from plangate.store import Store
from plangate.tools import ToolRegistry
from schemas import Plan, PlanInvalid, PlanProblem, utcnow

log = logging.getLogger(__name__)

KEY_WAIT = 30.0  # before a plan no running executor can take is tried again
HAND_BACKS = 3  # tries of a plan by executors lacking its tools, when none offers them lately
HANDED_ON = 2.0  # before a plan another executor offers the tools of is sent on again
HANDED_ON_FOR = timedelta(minutes=10)  # from the message's making: then it is tried as lacking


def hand_back_if_lacking(
    plan: Plan,
    registry: ToolRegistry,
    store: Store,
    attempt: int,
    made_at: datetime,
    *,
    gives_up: bool = True,
) -> PlanInvalid | None:
    """Hand `plan` back (NotReady or Retry) if the catalog has tools this executor lacks.

    None when it lacks none, or some are not in the catalog either (the plan is invalid);
    PlanInvalid, saying what to do, when no executor offered them lately (or they were handed
    on since `made_at` for `HANDED_ON_FOR`) and its tries are spent. Unless `gives_up` is
    false (a held plan's preview, which lives as long as the hold): then it waits, `KEY_WAIT`
    at a time, for an executor offering the tools to start (dead-lettered, the review said
    "not ready yet" for good, even once one had).
    """
    missing = sorted({step.tool for step in plan.steps} - registry.catalog().keys())
    if not missing or not set(missing) <= load_catalog(store).keys():
        return None
    said = ", ".join(missing)
    fresh = utcnow() - made_at < HANDED_ON_FOR
    if fresh and all(offered_lately(store, missing).values()):
        log.info(
            "plan %s of goal %s needs the tools %s, which this executor lacks: handed on to "
            "an executor offering them",
            plan.plan_id,
            plan.goal_id,
            said,
        )
        # Spread, so that the same idle consumer does not take it back each time.
        delay = HANDED_ON * random.uniform(0.5, 1.5)
        raise NotReady(f"this executor lacks the tools {said}; handed on", delay=delay)
    if not gives_up:
        raise NotReady(f"this executor lacks the tools {said}; waiting for one", delay=KEY_WAIT)
    if attempt < HAND_BACKS:
        log.error(
            "goal %s: this executor lacks the tools %s, which the catalog has but no running "
            "executor has offered lately (or none offers all the plan's tools): start one with "
            "the PLANGATE_TOOLS that offer them; handed back meanwhile",
            plan.goal_id,
            said,
        )
        raise Retry(f"this executor lacks the tools {said}", delay=KEY_WAIT)
    lacking = (
        f"the executors that took it lack the tools {said}, which the catalog has but no "
        "running executor offers with the plan's other tools: start executors with all of "
        "them (PLANGATE_TOOLS), then retry the goal"
    )
    return PlanInvalid([PlanProblem("unknown_tool", lacking)])
