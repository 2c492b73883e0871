"""Executors started with different tools, as separate processes on one broker and store.

During a rollout, or with tool modules split by team, one executor may lack a tool another
offers. A plan it cannot run is handed on to the executors that offer its tools, for as long as
one has said lately that it does; only when none has is the goal failed, saying why.
"""

from __future__ import annotations

import pytest

from plangate.catalog import load_catalog
from plangate.client import Client
from plangate.store import open_store
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
