"""A tool renamed or removed: planners stop planning with it; `plangate tools list` says so.

The catalog keeps every tool an executor ever published (nothing tells a rename from a
restart). Executors say every 30 s that they still offer their tools; a tool none has offered
for 100 s while others are offered is retired. While none offers any tool (every executor
restarting, an outage), planners plan with all of them, and plans wait for executors.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from plangate.bus import Delivery
from plangate.catalog import load_catalog, publish_catalog
from plangate.store import Store, ToolCatalogRow, open_store
from plangate.store.goals import ensure_goal
from planner_worker.handler import PlannerHandler
from planner_worker.planner import Draft
from schemas import Catalog, GoalSubmitted, Step, ToolSpec, utcnow
from tests.support import plangate_in

OLD = ToolSpec(name="customer_balance", effect="read", idempotent=True)
RENAMED = ToolSpec(name="get_customer_balance", effect="read", idempotent=True)
DELIVERY = Delivery("plangate.planner", "goal.submitted", {}, attempt=1, redelivered=False)


class SeesTheCatalog:
    """Plans one step with the balance tool it is given, and remembers the tools it was given."""

    def __init__(self) -> None:
        self.given: set[str] = set()

    def draft(self, goal: GoalSubmitted, catalog: Catalog) -> Draft:
        self.given = set(catalog)
        tool = "customer_balance" if "customer_balance" in catalog else "get_customer_balance"
        return Draft("balance of c-5", (Step(id="balance", tool=tool),), "test")


def last_offered(store: Store, name: str, ago: timedelta) -> None:
    with store.session() as session:
        session.execute(
            update(ToolCatalogRow)
            .where(ToolCatalogRow.name == name)
            .values(updated_at=utcnow() - ago)
        )


def planned_with(store: Store, goal_id: str) -> tuple[SeesTheCatalog, str]:
    """Plan one goal as a planner worker does; return the planner and the plan's one tool."""
    planner = SeesTheCatalog()
    goal = GoalSubmitted(goal_id=goal_id, text="balance of c-5")
    with store.session() as session:
        ensure_goal(session, goal, {})
    [proposal] = PlannerHandler(store, planner, lease=None)(goal, DELIVERY)
    return planner, str(json.loads(proposal.body)["plan"]["steps"][0]["tool"])


def test_a_tool_no_running_executor_offers_is_left_out_of_plans_while_others_are_offered(
    store: Store,
) -> None:
    """Given `customer_balance` renamed `get_customer_balance`: the old executor published the
    old name and stopped an hour ago, the new one offers the new name,
    When a goal is planned,
    Then the planner is given the new name only and plans with it (it planned with the old
    one, and every such goal waited 100 s, then failed "lack the tools customer_balance");
    the gate's catalog still has both (a plan made before the rename is failed by the
    executors saying why, not denied as invalid).
    """
    publish_catalog(store, [OLD, RENAMED])
    last_offered(store, "customer_balance", timedelta(hours=1))

    planner, tool = planned_with(store, "g-renamed")

    assert planner.given == {"get_customer_balance"}
    assert tool == "get_customer_balance"
    assert load_catalog(store).keys() == {"customer_balance", "get_customer_balance"}


def test_while_no_executor_offers_any_tool_the_planner_plans_with_all_of_them(
    store: Store,
) -> None:
    """Given every executor stopped for an hour (an outage, or all restarting at once),
    When a goal is planned,
    Then the planner is given every tool as before: its plan waits for the executors, instead
    of every goal failing for want of tools.
    """
    publish_catalog(store, [OLD, RENAMED])
    last_offered(store, "customer_balance", timedelta(hours=1))
    last_offered(store, "get_customer_balance", timedelta(hours=1))

    planner, tool = planned_with(store, "g-outage")

    assert planner.given == {"customer_balance", "get_customer_balance"}
    assert tool == "customer_balance"


def test_tools_list_says_which_tool_is_retired_and_since_when(tmp_path: Path) -> None:
    """Given the renamed tool's catalog in the store,
    When an operator runs `plangate tools list`,
    Then each tool is listed with its effect, the old name as retired, not offered since its
    last offer (and `--json` says the same, one tool a line).
    """
    url = f"sqlite:///{tmp_path / 'plangate.db'}"
    assert plangate_in(tmp_path, "db", "upgrade", PLANGATE_DATABASE_URL=url).returncode == 0
    store = open_store(url, upgrade=False)
    try:
        publish_catalog(store, [OLD, RENAMED])
        last_offered(store, "customer_balance", timedelta(hours=1))
    finally:
        store.close()

    listed = plangate_in(tmp_path, "tools", "list", PLANGATE_DATABASE_URL=url)
    as_json = plangate_in(tmp_path, "tools", "list", "--json", PLANGATE_DATABASE_URL=url)

    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert "read" in lines["customer_balance"]
    assert "retired: not offered since" in lines["customer_balance"]
    assert "retired" not in lines["get_customer_balance"]
    states = {o["name"]: o["state"] for o in map(json.loads, as_json.stdout.splitlines())}
    assert states == {"customer_balance": "retired", "get_customer_balance": "offered"}


def test_tools_list_says_when_no_executor_offers_any_tool(tmp_path: Path) -> None:
    """Given a catalog no executor has offered for an hour, When `plangate tools list` runs,
    Then no tool is called retired, and stderr asks whether executors are running."""
    url = f"sqlite:///{tmp_path / 'plangate.db'}"
    assert plangate_in(tmp_path, "db", "upgrade", PLANGATE_DATABASE_URL=url).returncode == 0
    store = open_store(url, upgrade=False)
    try:
        publish_catalog(store, [OLD])
        last_offered(store, "customer_balance", timedelta(hours=1))
    finally:
        store.close()

    listed = plangate_in(tmp_path, "tools", "list", PLANGATE_DATABASE_URL=url)

    assert "not offered since" in listed.stdout
    assert "retired" not in listed.stdout
    assert "are executors running?" in listed.stderr
