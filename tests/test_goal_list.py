"""Operators find goals: `GET /api/v1/goals` and `plangate goals list`, filtered and paged."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import pytest

from plangate.client import Client
from plangate.config import Settings
from plangate.store.goal_list import list_goals
from tests.conftest import SEED_GOAL
from tests.fleet import Fleet
from tests.support import HELD, only_plan, running_pipeline, write_yaml
from tests.test_four_eyes import FINANCE, TWO_FROM_FINANCE
from tests.test_review_api import base_url, call, client, fleet, held_goal  # noqa: F401

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def goals(client: Client) -> dict[str, str]:  # noqa: F811
    """A held goal, a cancelled one and one no playbook can plan (plan_failed)."""
    held = held_goal(client).goal_id
    cancelled = held_goal(client).goal_id
    client.cancel(cancelled, "alice", "not today")
    failed = client.submit("bake a cake for the zebra").wait(timeout=30).goal_id
    return {"held": held, "cancelled": cancelled, "plan_failed": failed}


def listed(base_url: str, **query: object) -> tuple[int, dict[str, object]]:  # noqa: F811
    return call(f"{base_url}/api/v1/goals?{urllib.parse.urlencode(query)}")


def test_the_api_lists_goals_of_every_state_with_working_filters(
    base_url: str,  # noqa: F811
    client: Client,  # noqa: F811
    goals: dict[str, str],
) -> None:
    """Given a held, a cancelled and a failed goal,
    When a reviewer lists goals, by state, by text and a page of one at a time,
    Then each filter returns exactly its goals, and the pages walk every goal once.
    """
    assert client.status(goals["plan_failed"]).status == "plan_failed"
    status, everything = listed(base_url)
    assert status == 200
    shown = {g["goal_id"]: g for g in everything["goals"]}  # type: ignore[attr-defined]
    for state, goal_id in goals.items():
        assert shown[goal_id]["status"] == state
    assert shown[goals["held"]]["revision"] == 1
    assert shown[goals["held"]]["decided_by"]  # the rule that held it

    for state, goal_id in goals.items():
        status, page = listed(base_url, state=state)
        ids = [g["goal_id"] for g in page["goals"]]  # type: ignore[attr-defined]
        assert goal_id in ids
        assert all(g["status"] == state for g in page["goals"]), page  # type: ignore[attr-defined]
    status, found = listed(base_url, search="ZEBRA")
    assert [g["goal_id"] for g in found["goals"]] == [goals["plan_failed"]]  # type: ignore[attr-defined]

    seen: list[str] = []
    cursor = None
    while True:
        query: dict[str, object] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        status, page = listed(base_url, **query)
        assert status == 200
        seen += [g["goal_id"] for g in page["goals"]]  # type: ignore[attr-defined]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(shown)
    assert len(seen) == len(set(seen))


def test_bad_filters_are_4xx_json_and_the_list_needs_a_reviewer(base_url: str) -> None:  # noqa: F811
    for query, words in (
        ({"state": "sleeping"}, "Input should be 'submitted'"),
        ({"since": "yesterday"}, "neither an age"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"limit": 0}, ""),
    ):
        status, answer = listed(base_url, **query)
        assert status == 422, (query, answer)
        assert words in json.dumps(answer), answer
    status, _ = call(f"{base_url}/api/v1/goals", token=None)
    assert status == 401


def test_the_cli_lists_goals_with_filters(fleet: Fleet, goals: dict[str, str]) -> None:  # noqa: F811
    as_json = fleet.plangate("goals", "list", "--state", "cancelled", "--since", "1h", "--json")
    assert as_json.returncode == 0, as_json.stderr
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert goals["cancelled"] in [row["goal_id"] for row in rows]
    assert {row["status"] for row in rows} == {"cancelled"}

    table = fleet.plangate("goals", "list", "--search", "zebra", COLUMNS="200")
    assert goals["plan_failed"] in table.stdout
    assert "plan_failed" in table.stdout

    wrong = fleet.plangate("goals", "list", "--state", "sleeping")
    assert wrong.returncode == 2
    assert "no goal state 'sleeping'" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_the_cli_pages_through_every_goal_with_the_cursor_it_prints(
    fleet: Fleet,  # noqa: F811
    goals: dict[str, str],
) -> None:
    """Given more goals than --limit, When each page's printed cursor is passed with --after,
    Then the pages together list every goal once, newest first (past 200 goals, nothing else
    could reach the older ones)."""
    everyone = fleet.plangate("goals", "list", "--limit", "200", "--json")
    every_id = [json.loads(line)["goal_id"] for line in everyone.stdout.splitlines()]
    assert len(every_id) >= 3

    seen: list[str] = []
    after: list[str] = []
    while True:
        page = fleet.plangate("goals", "list", "--limit", "2", "--json", *after)
        assert page.returncode == 0, page.stderr
        seen += [json.loads(line)["goal_id"] for line in page.stdout.splitlines()]
        if "next page: --after " not in page.stderr:
            break
        after = ["--after", page.stderr.split("next page: --after ")[1].split()[0]]

    assert seen == every_id
    table = fleet.plangate("goals", "list", "--limit", "1", COLUMNS="200")
    assert "next page: --after " in table.stderr
    for cursor in ("not-a-cursor", ""):  # empty: a script that lost it repeated page 1
        wrong = fleet.plangate("goals", "list", "--after", cursor)
        assert wrong.returncode == 2, cursor
        assert "the cursor is not one this list gave" in wrong.stderr


def test_a_cancelled_goal_is_listed_as_decided_by_who_cancelled_it(
    client: Client,  # noqa: F811
    goals: dict[str, str],
) -> None:
    """Alice cancelled a held goal: the list names her, not the rule that held its plan (it
    showed the rule, as if the policy had ended the goal)."""
    page = client.list_goals(state="cancelled", limit=200)
    listed = {goal.goal_id: goal.decided_by for goal in page.goals}
    assert listed[goals["cancelled"]] == "alice"
    held = client.list_goals(state="held", limit=200).goals
    assert all(goal.decided_by != "alice" for goal in held)


def test_the_cli_and_the_api_print_a_goal_s_times_alike(
    fleet: Fleet,  # noqa: F811
    base_url: str,  # noqa: F811
    goals: dict[str, str],
) -> None:
    """Given a goal, When `goals list --json`, `status --json` and the API show it,
    Then each prints its times as ISO 8601 in UTC (`...T...Z`), the same text; the CLI printed
    `2026-12-06 06:20:15.366167+00:00`, so one tool had to read two formats.
    """
    goal_id = goals["cancelled"]
    rows = fleet.plangate("goals", "list", "--state", "cancelled", "--json").stdout.splitlines()
    (row,) = [json.loads(line) for line in rows if goal_id in line]
    status = json.loads(fleet.plangate("status", goal_id, "--json").stdout)
    _, listed_by_api = listed(base_url, state="cancelled")
    (from_api,) = [g for g in listed_by_api["goals"] if g["goal_id"] == goal_id]

    assert row["updated_at"] == status["updated_at"] == from_api["updated_at"]
    assert row["created_at"].endswith("Z")
    assert "T" in row["created_at"]


def test_a_filter_given_twice_or_a_search_holding_nul_is_refused(base_url: str) -> None:  # noqa: F811
    """`?state=held&state=completed` listed the completed goals alone (the last one won), and
    `?search=%00` listed every goal (SQLite's LIKE ended the pattern at the NUL)."""
    twice = call(f"{base_url}/api/v1/goals?state=held&state=completed")
    nul = call(f"{base_url}/api/v1/goals?search=%00")

    assert twice == (422, {"error": "give state once: the list is filtered by one state"})
    assert nul == (422, {"error": "search text cannot hold NUL; search for words"})


def test_until_lists_only_goals_submitted_before_it_in_the_cli_and_the_api(
    fleet: Fleet,  # noqa: F811
    base_url: str,  # noqa: F811
    goals: dict[str, str],
) -> None:
    """An auditor exporting a quarter had only `--since`: everything after it came too."""
    before_them = fleet.plangate("goals", "list", "--until", "2000-01-01", "--json")
    up_to_now = fleet.plangate("goals", "list", "--until", "2999-01-01", "--json")
    status, api_before = listed(base_url, until="2000-01-01T00:00:00Z")
    wrong = fleet.plangate("goals", "list", "--until", "tomorrow")

    assert before_them.returncode == 0, before_them.stderr
    assert before_them.stdout == ""
    shown = {json.loads(line)["goal_id"] for line in up_to_now.stdout.splitlines()}
    assert set(goals.values()) <= shown
    assert status == 200
    assert api_before["goals"] == []
    assert wrong.returncode == 2
    assert "until 'tomorrow' is neither an age" in wrong.stderr


def test_the_cli_lists_goals_in_any_of_the_states_given(
    fleet: Fleet,  # noqa: F811
    goals: dict[str, str],
) -> None:
    """`--state held --state cancelled` lists goals in either: the last one given alone was
    used, and an operator hunting stuck goals was told "no goals match"."""
    both = fleet.plangate(
        "goals", "list", "--state", "cancelled", "--state", "held", "--limit", "200", "--json"
    )
    assert both.returncode == 0, both.stderr
    rows = {
        json.loads(line)["goal_id"]: json.loads(line)["status"] for line in both.stdout.splitlines()
    }
    assert rows[goals["held"]] == "held"
    assert rows[goals["cancelled"]] == "cancelled"
    assert set(rows.values()) == {"held", "cancelled"}


def test_a_goal_two_people_approved_is_listed_as_decided_by_both(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a plan held for two approvals from finance,
    When bob, then carol approve it,
    Then the list's "decided by" names both, in the order they approved: it named carol
    alone, who only completed the approval, in a column auditors read.
    """
    policy = write_yaml(tmp_path / "policy.yaml", TWO_FROM_FINANCE)
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD)
        plan_id = only_plan(pipeline.store, goal_id).plan_id
        pipeline.approve(plan_id, "bob", roles=FINANCE)
        pipeline.approve(plan_id, "carol", roles=FINANCE)
        assert pipeline.wait_for(goal_id, timeout=10).status == "completed"

        with pipeline.store.reading() as session:
            [goal] = list_goals(session, state="completed").goals

    assert goal.decided_by == "bob, carol"
