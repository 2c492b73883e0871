"""`plangate policy backtest`: a candidate policy replayed over recorded plans, changing nothing."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, cast

from sqlalchemy import func, select, text

from approval_gate.backtest import backtest
from approval_gate.policy import Policy, load_policy
from plangate.embedded import Pipeline
from plangate.store import AuditRow, DecisionRow, GoalRow, Store
from plangate.tools import load_tools
from tests.conftest import SEED_GOAL
from tests.support import HELD, audit_kinds, eventually
from tests.test_audit import plangate_cli

HOLD_EVERY_PAGE = """\
rules:
  - name: approve-read-only
    match: 'plan.steps.all(s, s.effect == "read")'
    action: approve
    reason: every step only reads
  - name: deny-pages
    match: 'plan.steps.exists(s, s.tool == "notify_oncall")'
    action: deny
    reason: nobody pages from here
"""


def counts(store: Store) -> tuple[int, int, list[str]]:
    with store.session() as session:
        audited = session.execute(select(func.count()).select_from(AuditRow)).scalar_one()
        decided = session.execute(select(func.count()).select_from(DecisionRow)).scalar_one()
        states = sorted(session.execute(select(GoalRow.status)).scalars())
    return audited, decided, states


def test_a_backtest_over_100_goals_shows_what_would_change_and_changes_nothing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Given 100 goals decided by the default policy: 50 read-only (approved), 50 that page
    on-call (held),
    When `plangate policy backtest` replays a candidate that denies pages,
    Then it says 100 decisions replayed, 50 would change (hold -> deny), lists each, and the
    store holds the same audit entries, decisions and goal states as before.
    """
    reads = [pipeline.submit(f"how many tickets are open ({n})").goal_id for n in range(50)]
    pages = [pipeline.submit(f"{SEED_GOAL} ({n})").goal_id for n in range(50)]
    for goal_id in reads:
        assert pipeline.wait_for(goal_id, timeout=30).status == "completed"
    for goal_id in pages:
        pipeline.wait_for(goal_id, HELD, timeout=30)
    # A held page gets its dry run after the hold: the store is still once each is recorded.
    eventually(
        lambda: all("plan.previewed" in audit_kinds(pipeline.store, page) for page in pages),
        timeout=30,
        what="the held pages' previews",
    )
    before = counts(pipeline.store)
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(HOLD_EVERY_PAGE)
    tools = ("--tools", "plangate.demo.tools")

    shown = plangate_cli(pipeline.settings.data_dir, "policy", "backtest", str(candidate), *tools)
    as_json = plangate_cli(
        pipeline.settings.data_dir, "policy", "backtest", str(candidate), *tools, "--json"
    )

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"100 decisions replayed with {candidate}; 50 would change"
    assert lines[1] == "  hold -> deny: 50"
    assert sum("hold -> deny (rule deny-pages: nobody pages from here)" in x for x in lines) == 50
    body = json.loads(as_json.stdout)
    assert {change["goal_id"] for change in body["changes"]} == set(pages)
    assert counts(pipeline.store) == before


CAP_OF_TWO_A_DAY = """\
rules:
  - name: two-counts-a-day
    match: 'plan.steps.all(s, s.effect == "read") && history.count("ticket_count", "1d") < 2'
    action: approve
    reason: fewer than two counts approved today
  - name: hold-the-rest
    match: 'true'
    action: hold
    reason: a person decides
"""


def test_a_cap_over_history_is_replayed_as_it_stood_when_each_plan_was_decided(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Given three read-only goals approved one after another,
    When a candidate capping them at two a day is backtested,
    Then only the third would change (approve -> hold): the first two were decided with
    fewer than two approved before them. History was read as it is now, so all three saw the
    two others and the cap looked stricter than it would have been.
    """
    goals = []
    for number in range(3):
        goal_id = pipeline.submit(f"how many tickets are open ({number})").goal_id
        assert pipeline.wait_for(goal_id, timeout=30).status == "completed"
        goals.append(goal_id)
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(CAP_OF_TWO_A_DAY)

    replayed = plangate_cli(
        pipeline.settings.data_dir,
        "policy",
        "backtest",
        str(candidate),
        "--tools",
        "plangate.demo.tools",
        "--json",
    )

    assert replayed.returncode == 0, replayed.stderr
    changes = json.loads(replayed.stdout)["changes"]
    assert [(change["goal_id"], change["was"], change["now"]) for change in changes] == [
        (goals[2], "approve", "hold")
    ]


FINANCE_HOLDS_PAGES = """\
rules:
  - name: hold-pages-for-finance
    match: 'plan.steps.exists(s, s.tool == "notify_oncall")'
    action: hold
    reason: two of finance decide pages
    requires_role: finance
    approvals: 2
"""


def test_a_hold_asking_other_roles_or_approvals_is_a_change(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Given a page held by the default policy (anyone may approve it alone),
    When a candidate holding pages for two of finance is replayed,
    Then the backtest counts it as a change, saying what the hold would ask: it said
    "0 would change", though who may release the plan changed.
    """
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=30)
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(FINANCE_HOLDS_PAGES)

    shown = plangate_cli(
        pipeline.settings.data_dir,
        "policy",
        "backtest",
        str(candidate),
        "--tools",
        "plangate.demo.tools",
    )

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"1 decisions replayed with {candidate}; 1 would change"
    assert lines[1] == "  hold -> hold (role finance, 2 approvals): 1"


class WritingWhileDeciding:
    """A candidate policy that, while it decides, has another thread write to the store.

    It answers as the packaged policy does; what it records is whether that write went
    through while the backtest was in the middle of its replay.
    """

    def __init__(self, store: Store, policy: Policy) -> None:
        self.store, self.policy = store, policy
        self.reads_history = policy.reads_history
        self.wrote_while_replaying: bool | None = None

    def decide_as_gate(self, *args: Any) -> Any:
        if self.wrote_while_replaying is None:
            self.wrote_while_replaying = self._write_beside()
        return self.policy.decide_as_gate(*args)

    def hold_terms(self, decision: Any) -> Any:
        return self.policy.hold_terms(decision)

    def _write_beside(self) -> bool:
        """Return whether another thread's write transaction commits within 5 s."""
        committed = threading.Event()

        def write() -> None:
            with self.store.session() as session:
                session.execute(text("UPDATE goals SET updated_at = updated_at WHERE 0"))
            committed.set()

        threading.Thread(target=write, daemon=True).start()
        return committed.wait(timeout=5)


def test_a_backtest_holds_no_write_lock_while_it_replays(pipeline: Pipeline) -> None:
    """A backtest read in one writing transaction: on SQLite it held the write lock every
    worker takes for as long as it replayed (minutes over a year of plans), and the pipeline
    stood still.

    Given three decided goals,
    When a backtest replays them and, in the middle of its replay, another thread writes,
    Then that write goes through at once, and every plan is replayed, progress told.
    """
    for number in range(3):
        goal_id = pipeline.submit(f"how many tickets are open ({number})").goal_id
        assert pipeline.wait_for(goal_id, timeout=30).status == "completed"
    candidate = WritingWhileDeciding(pipeline.store, load_policy(pipeline.settings))
    told: list[tuple[int, int]] = []

    report = backtest(
        pipeline.store,
        cast(Policy, candidate),
        load_tools(["plangate.demo.tools"]).catalog(),
        progress=lambda *at: told.append(at),
    )

    assert candidate.wrote_while_replaying is True
    assert report.replayed == 3
    assert told[-1] == (3, 3)
