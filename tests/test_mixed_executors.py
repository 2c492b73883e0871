"""Executors started with different tools, as separate processes on one broker and store.

During a rollout, or with tool modules split by team, one executor may lack a tool another
offers. A plan it cannot run is handed on to the executors that offer its tools, for as long as
one has said lately that it does; only when none has is the goal failed, saying why.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from plangate.catalog import load_catalog, publish_catalog
from plangate.client import Client
from plangate.store import GoalRow, Store, ToolCatalogRow, open_store
from plangate.tools import load_tools
from schemas import utcnow
from tests.conftest import SEED_GOAL
from tests.fleet import Fleet
from tests.support import eventually

# A migrated store and a policy that approves everything, no workers yet.
from tests.test_distributed import fleet  # noqa: F401

# Processes that start, stop and hand plans on 2 s apart: a minute on a busy machine.
pytestmark = [pytest.mark.redis, pytest.mark.timeout(180)]


def test_a_plan_waits_for_the_executor_offering_its_tools_and_runs_once_it_is_back(
    fleet: Fleet,  # noqa: F811
) -> None:
    """Given a planner, a gate and two executors, each with a data folder of its own, one
    started without `notify_oncall`, the other (which offers it) stopped for a moment, as in
    a rolling restart,
    When goals needing it are approved meanwhile, and more once it is back,
    Then every goal completes, each page sent once: the executor lacking the tool hands each
    plan on while the catalog says an executor offered it lately. It handed a plan back three
    times, then failed its goal ("the plan is invalid"), even with an executor offering the
    tool running beside it (one plan in eight landed on the one lacking it three times).
    """
    # As deploy/ runs them: a data folder each, sharing only the gate's public keys folder.
    keys = fleet.folder / "keys"
    keys.mkdir()
    fleet.extra_env["PLANGATE_TRUSTED_KEYS_DIR"] = str(keys)

    def own_folder(name: str) -> str:
        return str(fleet.folder / f"{name}-data")

    fleet.start("planner", PLANGATE_DATA_DIR=own_folder("planner"))
    fleet.start("gate", PLANGATE_DATA_DIR=own_folder("gate"))
    full = fleet.start("executor", PLANGATE_DATA_DIR=own_folder("full-executor"))
    fleet.start(
        "executor",
        PLANGATE_DATA_DIR=own_folder("partial-executor"),
        PLANGATE_TOOLS="tests.partial_tools",
    )
    client = Client(fleet.settings())
    try:
        store = open_store(fleet.database_url)
        try:
            eventually(  # a worker starting on a busy machine: seconds
                lambda: "notify_oncall" in load_catalog(store),
                what="the full executor's catalog",
                timeout=30,
            )
        finally:
            store.close()
        full.terminate()
        full.wait(timeout=20)
        waiting = [client.submit(f"{SEED_GOAL} [{n}]") for n in range(2)]
        eventually(
            lambda: "handed on" in (fleet.folder / "executor-3.log").read_text(),
            what="the executor lacking the tool handing a plan on",
            timeout=40,
        )
        # Past three tries each (2 s apart): the old hand-back had failed them by now.
        eventually(
            lambda: (fleet.folder / "executor-3.log").read_text().count("handed on") >= 6,
            what="every plan handed on three times",
            timeout=60,
        )
        assert {h.status().status for h in waiting} == {"approved"}, fleet.logs()
        # Back, as after a rolling restart, with its folder as it left it.
        fleet.start("executor", PLANGATE_DATA_DIR=own_folder("full-executor"))
        more = [client.submit(f"{SEED_GOAL} [{n}]") for n in range(2, 4)]
        ended = [h.wait(timeout=60, until={"completed", "failed"}) for h in waiting + more]
    finally:
        client.close()

    assert [goal.status for goal in ended] == ["completed"] * 4, fleet.logs()
    pages = (fleet.folder / "notifications.jsonl").read_text().splitlines()
    assert len(pages) == 4


def test_submit_wait_names_the_tools_no_running_executor_offers_not_the_signing_key(
    fleet: Fleet,  # noqa: F811
) -> None:
    """Given a planner, a gate and an executor lacking `notify_oncall`, whose executor offering
    it stopped just after the goal was planned (its catalog row then not refreshed for 100 s),
    When `plangate submit --wait` follows the approved goal,
    Then after 10 s it says no running executor has offered `notify_oncall` lately, naming it,
    and what to start: it asked whether the executor trusts the gate's signing key, while the
    executor's log said it lacks the tool. `plangate status` says it too.
    """
    fleet.start("planner")
    fleet.start("gate")
    fleet.start("executor", PLANGATE_TOOLS="tests.partial_tools")
    store = open_store(fleet.database_url)
    try:
        # As the executor offering every demo tool did at its start, moments ago.
        publish_catalog(store, load_tools(["plangate.demo.tools"]).catalog().values())
        following = subprocess.Popen(
            [sys.executable, "-m", "plangate", "submit", SEED_GOAL, "--wait", "--timeout", "14"],
            env=fleet.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            goal_id = eventually(lambda: approved_goal(store), what="the goal approved", timeout=30)
            with store.session() as session:  # its executor gone for good since
                session.execute(
                    update(ToolCatalogRow)
                    .where(ToolCatalogRow.name == "notify_oncall")
                    .values(updated_at=utcnow() - timedelta(minutes=5))
                )
            _out, said = following.communicate(timeout=40)
        finally:
            if following.poll() is None:
                following.kill()
                following.wait()
    finally:
        store.close()
    shown = fleet.plangate("status", goal_id)

    assert "is still approved after" in said, said + fleet.logs()
    assert "no running executor has offered the tools notify_oncall lately" in said
    assert "PLANGATE_TOOLS" in said
    assert "signing key" not in said
    assert "waiting for an executor: no running executor has offered the tools notify_oncall" in (
        shown.stdout
    )


def approved_goal(store: Store) -> str | None:
    with store.reading() as session:
        return session.scalars(select(GoalRow.id).where(GoalRow.status == "approved")).first()
