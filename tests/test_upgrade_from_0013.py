"""Upgrading a database release 011f34a (schema 0013) wrote, with goals in every state.

The database is made by that release's own code, run from its tree (`git archive 011f34a`)
in a subprocess (`tests/old_release/four_eyes_at_0013.py`): a plan approved by alice and bob
under a four-eyes rule and run, one alice alone approved (1 of 2), and one left held. This
release then reads it, as an operator upgrading would.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import outer_environment
from tests.support import plangate_in as plangate

REPO = Path(__file__).resolve().parents[1]
OLD_RELEASE = "011f34a"


@pytest.fixture(scope="module")
def at_0013(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The data folder 011f34a's embedded pipeline left, and its goal ids by what was done."""
    tree = tmp_path_factory.mktemp("011f34a")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", OLD_RELEASE],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        pytest.skip(f"release {OLD_RELEASE} is not in this checkout's history")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    folder = tmp_path_factory.mktemp("at_0013")
    made = subprocess.run(
        [sys.executable, str(REPO / "tests/old_release/four_eyes_at_0013.py"), str(folder)],
        capture_output=True,
        text=True,
        cwd=folder,
        env=outer_environment() | {"PYTHONPATH": str(tree), "XDG_DATA_HOME": str(folder)},
        timeout=120,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    return folder / "data", json.loads(made.stdout.splitlines()[-1])


@pytest.fixture
def old_data(at_0013: tuple[Path, dict[str, Any]], tmp_path: Path) -> Path:
    """A copy of the data folder 011f34a left, at 0013, for this test alone."""
    shutil.copytree(at_0013[0], tmp_path / "data")
    return tmp_path / "data"


def test_audit_verify_after_the_upgrade_accepts_what_the_old_release_wrote(
    old_data: Path,
) -> None:
    """Given a four-eyes approval 011f34a made (its row's reason "approved; approved by alice,
    bob", its entry's plangate's own "approved by bob; the gate checks the hold ..."),
    When the database is upgraded and `audit verify` runs,
    Then the log and the records agree, exit 0: it said the decisions table was changed
    outside plangate, and to restore from a backup.
    """
    assert plangate(old_data, "db", "upgrade").returncode == 0

    verified = plangate(old_data, "audit", "verify")

    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "audit log intact" in verified.stdout


def test_audit_verify_still_catches_the_approvers_of_an_old_approval_rewritten(
    old_data: Path,
) -> None:
    """Given that upgraded database, the four-eyes row's approvers rewritten in SQL,
    When `audit verify` runs,
    Then it says the decisions table was changed outside plangate.
    """
    assert plangate(old_data, "db", "upgrade").returncode == 0
    with sqlite3.connect(old_data / "plangate.db") as connection:
        connection.execute(
            "UPDATE decisions SET reason = 'approved; approved by alice, mallory' "
            "WHERE reason = 'approved; approved by alice, bob'"
        )

    verified = plangate(old_data, "audit", "verify")

    assert verified.returncode != 0
    said = verified.stdout + verified.stderr
    assert "'approved; approved by alice, mallory'" in said
    assert "the decisions table was changed outside plangate" in said


def test_db_upgrade_says_which_held_plans_cannot_be_released_now_and_the_way_out(
    old_data: Path, at_0013: tuple[Path, dict[str, Any]]
) -> None:
    """Given two plans 011f34a held (one with alice's approval, 1 of 2), their holds unsealed,
    When `db upgrade` migrates the database from 0013,
    Then it says, after migrating, that those two held plans cannot be released now, and to
    edit each with the same plan first: it said only "migrated the schema ... from 0013".
    """
    upgraded = plangate(old_data, "db", "upgrade")

    assert upgraded.returncode == 0, upgraded.stderr
    migrated, said = upgraded.stdout.splitlines()
    assert migrated.endswith("from 0013 to 0015")
    assert said.startswith("2 held plan(s) cannot be released now: a gate of a release before")
    assert "for each, edit it with the same plan (`plangate review edit PLAN --file" in said


def test_review_show_names_an_approval_made_before_the_upgrade_as_not_counted(
    old_data: Path, at_0013: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Given a plan 011f34a held for two finance approvals, alice's given (1 of 2), upgraded,
    When bob reads it with `review show`,
    Then it says 0 of 2, and that alice approved before the upgrade, not counted (no token
    proof), and must approve again: "0 of 2 approvals" alone read as if she never had.
    """
    from plangate.reviewers import add_reviewer

    assert plangate(old_data, "db", "upgrade").returncode == 0
    reviewers = tmp_path / "reviewers.yaml"
    tokens = {name: add_reviewer(reviewers, name, ["finance"]) for name in ("alice", "bob")}
    with sqlite3.connect(old_data / "plangate.db") as connection:
        [(plan_id,)] = connection.execute(
            "SELECT plan_id FROM plans WHERE goal_id = ?", (at_0013[1]["half"],)
        ).fetchall()

    shown = plangate(
        old_data,
        *("review", "show", plan_id),
        PLANGATE_REVIEWERS_FILE=str(reviewers),
        PLANGATE_REVIEWER_TOKEN=tokens["bob"],
    )

    assert shown.returncode == 0, shown.stderr
    said = " ".join(shown.stdout.split())
    assert (
        "0 of 2 approvals; alice approved before the upgrade: not counted (no token proof); "
        "approve again"
    ) in said
