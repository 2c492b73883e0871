"""The embedded mode's latency beside LangGraph's, and beside itself polling as it did.

One process, one SQLite file per side, the approve-all policy and the instant tools of
`pipeline.py`: the seed goal planned, approved and run, one goal at a time, sides in turns.

- plangate: the embedded `Pipeline` (memory transport that wakes on a put); latency from
  `submit` to the goal's outcome on an observer of outcomes (no store polling), as a service
  waiting for results would: the LangGraph side returns its final state and streams nothing.
- polling: the same on kombu's own memory transport, looking every 10 ms (as it was).
- LangGraph: a graph plan -> gate -> execute compiled with its SQLite checkpointer (a checkpoint
  after every node), doing the same work in the nodes: the playbook planner's draft, the plan
  validated, the policy's decision, the three tools invoked. What a home-made LangGraph
  version of plangate's embedded mode costs, without plangate's outbox, audit or signing.

    pip install -e '.[bench]'
    python bench/embedded.py [--goals 50]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from kombu.transport import memory  # noqa: E402

from plangate.bus import bus as bus_module  # noqa: E402
from plangate.config import Settings  # noqa: E402
from plangate.embedded import Pipeline  # noqa: E402
from schemas.routing import TERMINAL_TYPES  # noqa: E402

SEED_GOAL = "Check Jira ticket count, compare with SLA, and notify on-call engineer if breached"
WARMUP_GOALS = 3


# The polling side's broker: kombu's own memory transport, polling every 10 ms (as before),
# under a scheme of its own so that each side's connections get their own transport.
POLLING = "polling-memory"
bus_module._TRANSPORTS[POLLING] = memory.Transport
bus_module._TRANSPORT_OPTIONS[POLLING] = {"polling_interval": 0.01}


@contextmanager
def pipeline(folder: Path, namespace: str, broker_url: str) -> Iterator[Pipeline]:
    settings = Settings(
        data_dir=folder,
        namespace=namespace,
        policy_file=BENCH / "approve_all.yaml",
        tools="instant_tools",
        planner="playbook",
    )
    with Pipeline(settings, broker_url=broker_url) as running:
        yield running


def one_goal(running: Pipeline) -> float:
    """Submit the seed goal; return the seconds until its outcome is published."""
    with running.bus.observe(types=TERMINAL_TYPES) as observer:
        started = time.perf_counter()
        goal_id = running.submit(SEED_GOAL).goal_id
        while True:
            message = observer.next(timeout=30)
            if message is None:
                sys.exit(f"goal {goal_id} did not end within 30 s")
            if message.goal_id == goal_id and message.type in TERMINAL_TYPES:
                if message.type != "execution.completed":
                    sys.exit(f"goal {goal_id} ended as {message.type}")
                return time.perf_counter() - started


class GoalState(TypedDict, total=False):
    """What flows through the LangGraph side's graph."""

    goal_id: str
    text: str
    plan: dict[str, Any]
    action: str
    outputs: dict[str, Any]


def langgraph_side(folder: Path) -> tuple[Any, Callable[[], None]]:
    """Build the LangGraph side; return its compiled graph and a function that closes it."""
    import cel
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.graph import END, START, StateGraph

    from approval_gate.policy import Policy
    from plangate.tools import ToolContext, ToolRegistry
    from planner_worker.playbook import PlaybookPlanner
    from schemas import GoalSubmitted, Plan, new_id, validate_plan
    from schemas.references import resolve

    registry = ToolRegistry()
    registry.load_module("instant_tools")
    catalog = registry.catalog()
    planner = PlaybookPlanner.load()
    policy = Policy.load(BENCH / "approve_all.yaml")

    def plan(state: GoalState) -> GoalState:
        goal = GoalSubmitted(goal_id=state["goal_id"], text=state["text"])
        draft = planner.draft(goal, catalog)
        made = Plan(
            plan_id=new_id(),
            goal_id=goal.goal_id,
            revision=1,
            summary=draft.summary,
            steps=draft.steps,
        )
        validate_plan(made, catalog)
        return {"plan": made.model_dump(mode="json")}

    def gate(state: GoalState) -> GoalState:
        return {"action": policy.decide(Plan.model_validate(state["plan"]), catalog).action}

    def execute(state: GoalState) -> GoalState:
        made = Plan.model_validate(state["plan"])
        outputs: dict[str, Any] = {}
        for step in made.steps:
            view = {"steps": {k: {"output": v, "status": "succeeded"} for k, v in outputs.items()}}
            if step.when and cel.evaluate(step.when, view) is not True:
                continue
            context = ToolContext(made.goal_id, made.plan_id, step.id, f"{made.plan_id}:{step.id}")
            outputs[step.id] = registry.get(step.tool).invoke(resolve(step.args, outputs), context)
        return {"outputs": outputs}

    graph = StateGraph(GoalState)
    graph.add_node("plan", plan)
    graph.add_node("gate", gate)
    graph.add_node("execute", execute)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "gate")
    graph.add_conditional_edges("gate", lambda s: "execute" if s["action"] == "approve" else END)
    graph.add_edge("execute", END)
    connection = sqlite3.connect(folder / "langgraph.db", check_same_thread=False)
    compiled = graph.compile(checkpointer=SqliteSaver(connection))
    return compiled, connection.close


def one_langgraph_goal(graph: Any) -> float:
    """Run the seed goal through the LangGraph side; return the seconds it took."""
    started = time.perf_counter()
    goal_id = uuid.uuid4().hex
    final = graph.invoke(
        {"goal_id": goal_id, "text": SEED_GOAL}, {"configurable": {"thread_id": goal_id}}
    )
    if final.get("action") != "approve" or len(final.get("outputs", {})) != 3:
        sys.exit(f"the LangGraph side did not run the plan: {final}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--goals", type=int, default=50, help="sequential goals per side")
    goals = parser.parse_args().goals
    latencies: dict[str, list[float]] = {
        "plangate": [],
        "plangate polling": [],
        "LangGraph + SQLite": [],
    }
    with (
        tempfile.TemporaryDirectory() as folder,
        pipeline(Path(folder) / "waking", "waking", "memory://") as waking,
        pipeline(Path(folder) / "polling", "polling", f"{POLLING}://") as polling,
    ):
        graph, close_graph = langgraph_side(Path(folder))
        sides: dict[str, Callable[[], float]] = {
            "plangate": lambda: one_goal(waking),
            "plangate polling": lambda: one_goal(polling),
            "LangGraph + SQLite": lambda: one_langgraph_goal(graph),
        }
        for run in sides.values():
            for _ in range(WARMUP_GOALS):
                run()
        for _ in range(goals):
            for name, run in sides.items():
                latencies[name].append(run())
        close_graph()
    print(f"embedded mode, {goals} sequential goals per side (in turns), SQLite, one process")
    base = statistics.median(latencies["LangGraph + SQLite"])
    for name, measured in latencies.items():
        p50 = statistics.median(measured)
        p99 = sorted(measured)[max(0, round(len(measured) * 0.99) - 1)]
        print(
            f"  {name:<20} p50 {p50 * 1000:6.1f} ms   p99 {p99 * 1000:6.1f} ms   "
            f"p50 {p50 / base:5.2f}x LangGraph's"
        )


if __name__ == "__main__":
    main()
