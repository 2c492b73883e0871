"""The time of one policy decision, beside its parts.

The demo's three-step plan (the playbook planner's plan for the seed goal) decided by the
default policy, many times; side by side: building every CEL variable from the plan and
catalog and converting them into a CEL context (what each decision did before it built only
the variables its rules read), the plan variable with every field beside only the fields the
rules read (what a decision builds now), and the whole `Policy.decide` as it is now.

    python bench/policy.py [--decisions 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cel

from approval_gate.policy import load_policy
from approval_gate.policy_context import policy_context
from plangate.config import Settings
from plangate.stages import configured_tools
from planner_worker.playbook import PlaybookPlanner
from schemas import GoalSubmitted, Plan, new_id

SEED_GOAL = "Check Jira ticket count, compare with SLA, and notify on-call engineer if breached"


REPEATS = 5


def per_call(work: Callable[[], object], calls: int) -> float:
    """Return the mean time of one call in microseconds, in the best of `REPEATS` runs.

    The least disturbed run, as `timeit` advises: on a shared 2-core machine a run's mean
    moves by half between minutes, with the code unchanged, from other tenants' work.
    """
    for _ in range(calls // 10):
        work()
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        for _ in range(calls):
            work()
        best = min(best, time.perf_counter() - started)
    return best / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=2000)
    calls = parser.parse_args().decisions
    settings = Settings(data_dir=Path(tempfile.mkdtemp()))
    policy = load_policy(settings)
    catalog = configured_tools(settings).catalog()
    goal = GoalSubmitted(goal_id=new_id(), text=SEED_GOAL)
    draft = PlaybookPlanner.load().draft(goal, catalog)
    plan = Plan(
        plan_id=new_id(), goal_id=goal.goal_id, revision=1, summary=draft.summary, steps=draft.steps
    )
    variables = policy_context(plan, catalog, SEED_GOAL)

    def decide_afresh() -> object:
        policy.memo.clear()
        return policy.decide(plan, catalog, SEED_GOAL)

    read = policy_context(plan, catalog, needed=("plan",), reads=policy.reads)["plan"]
    sides = {
        "every variable built (plan, goal, tools)": lambda: policy_context(
            plan, catalog, SEED_GOAL
        ),
        "every variable converted to CEL": lambda: cel.Context(variables=variables),
        "plan built with every field": lambda: policy_context(plan, catalog, needed=("plan",)),
        "plan built with the fields the rules read": lambda: policy_context(
            plan, catalog, needed=("plan",), reads=policy.reads
        ),
        "plan with every field converted to CEL": lambda: cel.Context(
            variables={"plan": variables["plan"]}
        ),
        "plan with the fields the rules read converted": lambda: cel.Context(
            variables={"plan": read}
        ),
        "Policy.decide, a plan of a kind decided before": lambda: policy.decide(
            plan, catalog, SEED_GOAL
        ),
        "Policy.decide, a plan never seen (memo emptied)": decide_afresh,
    }
    decision = policy.decide(plan, catalog, SEED_GOAL)
    print(f"{len(plan.steps)}-step plan, {len(policy.rules)} rules, decided: {decision.action}")
    for name, work in sides.items():
        print(f"  {name:<55} {per_call(work, calls):8.1f} µs")


if __name__ == "__main__":
    main()
