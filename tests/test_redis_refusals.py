"""A Redis broker that answers but refuses plangate's login or commands, on a real redis-server.

A wrong password in PLANGATE_BROKER_URL was said as "cannot reach the broker … check that the
broker is running", and `submit` promised the goal would go "once the broker is back": the
broker was up all along. A refusal now says what to fix (the user and password, the ACL).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
import redis

from tests.support import eventually, plangate_in

pytestmark = pytest.mark.redis


@pytest.fixture
def redis_user(redis_url: str) -> Iterator[str]:
    """Return the name of a Redis ACL user whose password is `right-pw`, allowed everything."""
    name = f"u{uuid4().hex[:8]}"
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(name, enabled=True, passwords=["+right-pw"], commands=["+@all"], keys=["*"])
    try:
        yield name
    finally:
        admin.acl_deluser(name)
        admin.close()


def as_user(redis_url: str, user: str, password: str) -> str:
    return redis_url.replace("redis://", f"redis://{user}:{password}@")


def test_submit_with_a_wrong_password_stores_the_goal_and_says_to_check_the_password(
    redis_url: str, redis_user: str, tmp_path: Path
) -> None:
    """Given a Redis user and a submitter whose URL has the wrong password
    When it submits a goal
    Then the goal is stored (a worker sends it on), and one warning says the broker refuses
    the login and what to check, not that the broker is down; the password is not shown."""
    env = {"PLANGATE_BROKER_URL": as_user(redis_url, redis_user, "wrong-pw")}
    assert plangate_in(tmp_path, "db", "upgrade", **env).returncode == 0

    submitted = plangate_in(tmp_path, "submit", "count tickets", **env)
    listed = plangate_in(tmp_path, "goals", "list", "--json", **env)

    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    [warning] = [line for line in submitted.stderr.splitlines() if "warning" in line]
    assert "refuses plangate" in warning
    assert "check the user and password in PLANGATE_BROKER_URL" in warning
    assert "cannot reach" not in warning
    assert "once the broker is back" not in warning
    assert "a running worker sends it on with its own broker settings" in warning
    assert "wrong-pw" not in submitted.stdout + submitted.stderr
    goals = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [goal["status"] for goal in goals] == ["submitted"]


def test_status_of_a_goal_the_broker_never_took_says_it_waits_for_the_broker(
    redis_url: str, redis_user: str, tmp_path: Path
) -> None:
    """Given a goal stored by a submitter whose password the broker refused
    When `plangate status` looks at it a few seconds later
    Then it says the goal waits for the broker, not only "submitted" as if it were planned;
    the API says since when (`unsent_since`)."""
    env = {"PLANGATE_BROKER_URL": as_user(redis_url, redis_user, "wrong-pw")}
    assert plangate_in(tmp_path, "db", "upgrade", **env).returncode == 0
    goal_id = plangate_in(tmp_path, "submit", "count tickets", **env).stdout.strip()

    def waiting() -> str | None:
        said = plangate_in(tmp_path, "status", goal_id, **env).stdout
        return said if "waiting for the broker" in said else None

    said = eventually(waiting, timeout=30, what="status saying the goal waits for the broker")
    as_json = json.loads(plangate_in(tmp_path, "status", goal_id, "--json", **env).stdout)

    assert f"goal {goal_id}: submitted" in said
    assert "a running worker sends it on" in said
    assert as_json["unsent_since"] is not None


def test_a_command_reading_redis_with_a_wrong_password_says_what_to_fix_in_one_line(
    redis_url: str, redis_user: str, tmp_path: Path
) -> None:
    listed = plangate_in(
        tmp_path, "dlq", "list", PLANGATE_BROKER_URL=as_user(redis_url, redis_user, "wrong-pw")
    )

    assert listed.returncode == 2, listed.stdout + listed.stderr
    [line] = listed.stderr.strip().splitlines()
    assert "refuses plangate" in line
    assert "check the user and password in PLANGATE_BROKER_URL" in line


def test_a_redis_user_without_the_commands_kombu_needs_is_told_of_the_acl(
    redis_url: str, tmp_path: Path
) -> None:
    """Given a Redis user who may log in but run no command (`nocommands`)
    When a command reads the dead letters with it
    Then it says the broker refuses plangate and names the ACL, in one line."""
    name = f"u{uuid4().hex[:8]}"
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(name, enabled=True, passwords=["+pw"], commands=["-@all", "+auth", "+hello"])
    try:
        listed = plangate_in(
            tmp_path, "dlq", "list", PLANGATE_BROKER_URL=as_user(redis_url, name, "pw")
        )
    finally:
        admin.acl_deluser(name)
        admin.close()

    assert listed.returncode == 2, listed.stdout + listed.stderr
    [line] = listed.stderr.strip().splitlines()
    assert "refuses plangate" in line
    assert "ACL" in line
