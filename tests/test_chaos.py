"""Chaos: hundreds of goals while workers are SIGKILLed at random; nothing lost, nothing twice."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from plangate.bus import Bus
from plangate.client import Client
from plangate.config import Settings
from plangate.store import TERMINAL_STATUSES, AuditRow, GoalRow, Store, audit_records, open_store
from tests.fleet import FAST_SWEEPS, STAGES, Fleet

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(600)]

GOALS = int(os.environ.get("CHAOS_GOALS", "320"))
KILLS = 24
ROOT = Path(__file__).resolve().parent.parent
APPROVE_ALL = 'rules:\n  - {name: approve-all, match: "true", action: approve, reason: chaos}\n'


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def client_store(settings: Settings) -> Store:
    return open_store(settings.resolved_database_url(), upgrade=False)


def resent(store: Store, goal_ids: list[str]) -> Counter[str]:
    """Return how many messages the reconciler sent again for these goals, by goal state."""
    try:
        with store.session() as session:
            rows = session.execute(
                select(AuditRow.data).where(
                    AuditRow.kind == "goal.resent", AuditRow.goal_id.in_(goal_ids)
                )
            ).scalars()
            return Counter(str(data.get("status")) for data in rows)
    finally:
        store.close()


def wait_for_the_end(store: Store, goal_ids: list[str], timeout: float) -> dict[str, str]:
    """Poll (one query a second) until every goal is terminal; return the last statuses."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            with store.session() as session:
                rows = session.execute(
                    select(GoalRow.id, GoalRow.status).where(GoalRow.id.in_(goal_ids))
                ).all()
            statuses = {goal_id: status for goal_id, status in rows}
            done = all(status in TERMINAL_STATUSES for status in statuses.values())
            if done or time.monotonic() > deadline:
                return statuses
            time.sleep(1)
    finally:
        store.close()


def test_chaos_no_goal_lost_and_each_write_happens_once(
    tmp_path: Path, redis_url: str, postgres_database_url: str
) -> None:
    """Given two workers of each stage on Redis and PostgreSQL,
    When 320 goals (read-only and write plans) run while a driver SIGKILLs a random worker
    24 times and restarts it,
    Then every goal ends, none is lost, and every write goal's effect happened exactly once.
    """
    (tmp_path / "policy.yaml").write_text(APPROVE_ALL)
    effects, duplicates = tmp_path / "effects.jsonl", tmp_path / "duplicates.jsonl"
    fleet = Fleet(
        redis_url,
        postgres_database_url,
        tmp_path,
        extra_env={
            **FAST_SWEEPS,
            "PLANGATE_POLICY_FILE": str(tmp_path / "policy.yaml"),
            "PLANGATE_PLAYBOOK_FILE": str(ROOT / "tests" / "data" / "chaos_playbook.yaml"),
            "PLANGATE_TOOLS": "tests.chaos_tools",
            "PYTHONPATH": str(ROOT),
            "CHAOS_EFFECTS": str(effects),
            "CHAOS_DUPLICATES": str(duplicates),
            "PLANGATE_CONCURRENCY": "8",
        },
    )
    assert fleet.plangate("db", "upgrade").returncode == 0
    for stage in STAGES:
        fleet.start(stage)
        fleet.start(stage)
    settings = Settings(
        broker_url=redis_url,
        database_url=postgres_database_url,
        namespace=fleet.namespace,
        data_dir=tmp_path / "data",
    )
    kills = 0
    stop_chaos = threading.Event()

    def chaos_monkey() -> None:
        nonlocal kills
        chance = random.Random(7)
        while kills < KILLS and not stop_chaos.wait(chance.uniform(0.3, 0.9)):
            live = [(s, p) for s, p in fleet.processes if p.poll() is None]
            stage, victim = chance.choice(live)
            fleet.kill(victim)
            kills += 1
            fleet.start(stage)

    monkey = threading.Thread(target=chaos_monkey, daemon=True)
    try:
        with Client(settings) as client:
            monkey.start()
            kinds = {}
            for number in range(GOALS):
                kind = "write" if number % 2 else "read"
                handle = client.submit(f"chaos {kind} {number}")
                kinds[handle.goal_id] = kind
            monkey.join(timeout=120)
            stop_chaos.set()
            statuses = wait_for_the_end(client_store(settings), list(kinds), timeout=300)
            resends_by_state = resent(client_store(settings), list(kinds))
            resends = resends_by_state.total()
        bus = Bus(redis_url, fleet.namespace)
        letters = bus.dead_letters()
        dead = len(letters)
        bus.close()
    finally:
        stop_chaos.set()
        fleet.stop_all()

    counts = Counter(statuses.values())
    effect_goals = Counter(line.split('"goal_id": "')[1][:32] for line in _lines(effects))
    write_goals = [g for g, kind in kinds.items() if kind == "write"]
    print(
        f"\nchaos: submitted {GOALS}, completed {counts['completed']}, failed {counts['failed']},"
        f" dead-lettered {dead}, kills {kills},"
        f" duplicates suppressed {len(_lines(duplicates))}; states {dict(counts)};"
        f" resends {resends} ({resends * 1000 / GOALS:.0f} per 1,000 goals)"
        f" by state {dict(resends_by_state)}"
    )
    for letter in letters:  # none is a loss (every goal completed), but each says why
        print(f"  dead letter from {letter.queue} ({letter.routing_key}): {letter.reason}")
    assert kills >= 20
    assert counts["completed"] == GOALS, (counts, fleet.logs())
    assert all(effect_goals[goal_id] == 1 for goal_id in write_goals), effect_goals
    assert set(effect_goals) == set(write_goals)
    assert not [p for _, p in fleet.processes if p.poll() is None]
    # A killed worker's messages come back by themselves (plangate.bus.redis_claims), and the
    # reconciler leaves alone what is held, retried or still queued: resends stay rare.
    assert resends * 1000 / GOALS <= 100, resends
    # What `status` shows of every goal agrees with its audit log, whatever the kills cut
    # short: `plangate audit verify` would otherwise cry tampering after a crash.
    store = client_store(settings)
    try:
        assert audit_records.disagreement(store) is None
    finally:
        store.close()
