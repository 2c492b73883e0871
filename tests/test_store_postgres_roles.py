"""PostgreSQL with two roles, as a DBA runs it: the owner migrates, the workers only use rows."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import uuid4

import httpx
import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from plangate.bus import Bus, Envelope
from schemas import GoalSubmitted
from tests.fleet import FAST_SWEEPS, Fleet
from tests.postgres_roles import grant_as_documented, migrate_as_owner, owned_database
from tests.servers import free_port
from tests.support import answers, eventually, migrate_to

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(120)]

APPROVE_ALL = """
rules:
  - name: approve-everything
    match: "true"
    action: approve
    reason: the roles test approves every plan
"""
PROCESSES = {"plangate-planner", "plangate-gate", "plangate-executor", "plangate-serve"}


def application_names(database_url: str, user: str) -> set[str]:
    """Return the application_name of every connection `user` has open, as a DBA sees them."""
    admin = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT application_name FROM pg_stat_activity WHERE usename = %s", (user,)
        ).fetchall()
    return {name for (name,) in rows}


def test_db_upgrade_as_a_role_without_a_privilege_names_it_and_says_to_run_it_as_the_owner(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    """Given a database owned by one role, and another role that may not create tables in it,
    When `plangate db upgrade` runs as that other role,
    Then it exits 2 naming the privilege as PostgreSQL does, and says to run it as the
    database's owner and what the workers and serve need; it said to check the URL.
    """
    with owned_database(postgres_url) as roles:
        fleet = Fleet(redis_url, roles.user_url, tmp_path)
        refused = fleet.plangate("db", "upgrade")

    assert refused.returncode == 2, refused.stderr
    said = " ".join(refused.stderr.split())
    assert "permission denied for schema public" in said
    assert "run `plangate db upgrade` as the database's owner" in said
    assert "SELECT, INSERT, UPDATE, DELETE on its tables and USAGE, SELECT on its sequences" in said
    assert "check PLANGATE_DATABASE_URL" not in said


def test_submit_as_a_role_refused_a_grant_says_what_to_grant_in_one_line(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    """Given a store migrated by its owner and the documented grants, then INSERT on goals
    revoked from the role the commands run as,
    When `plangate submit` runs as that role,
    Then it exits 2 with one line: PostgreSQL's words and what to grant; it printed
    SQLAlchemy's error whole, the statement and the goal's text in it.
    """
    with owned_database(postgres_url) as roles:
        migrate_as_owner(tmp_path, redis_url, roles)
        admin = make_url(roles.owner_url).set(drivername="postgresql", username="postgres")
        with psycopg.connect(admin.render_as_string(False), autocommit=True) as connection:
            revoke = sql.SQL("REVOKE INSERT ON goals FROM {}")
            connection.execute(revoke.format(sql.Identifier(roles.user)))
        refused = Fleet(redis_url, roles.user_url, tmp_path).plangate("submit", "a secret text")

    assert refused.returncode == 2, refused.stderr
    [line] = refused.stderr.splitlines()
    assert line.startswith("error: the store refused plangate's role: permission denied for")
    assert "run `plangate db upgrade` as the database's owner" in line
    assert "a secret text" not in line


def test_workers_and_serve_run_a_goal_as_a_role_with_only_the_documented_grants(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    """Given a database its owner migrated to an older release's schema, the grants of
    docs/how-to/deploy.md given to a second role, then the owner's upgrade to this release
    (whose tables the default privileges reach),
    When a planner, a gate, an executor and serve run as the second role,
    Then serve is ready and takes a goal, and the goal completes, with no privilege refused;
    and pg_stat_activity tells each process's connections apart by their application_name.
    """
    policy = tmp_path / "policy.yaml"
    policy.write_text(APPROVE_ALL)
    with owned_database(postgres_url) as roles:
        migrate_to(roles.owner_url, "0012").dispose()
        grant_as_documented(roles)
        owner = Fleet(redis_url, roles.owner_url, tmp_path / "owner")
        upgraded = owner.plangate("db", "upgrade")
        assert upgraded.returncode == 0, upgraded.stderr
        env = {"PLANGATE_POLICY_FILE": str(policy), **FAST_SWEEPS}
        fleet = Fleet(redis_url, roles.user_url, tmp_path, extra_env=env, namespace=owner.namespace)
        try:
            fleet.start_all()
            url = fleet.ready(fleet.serve_free())
            taken = httpx.post(f"{url}/api/v1/goals", json={"text": "count"}, timeout=10)
            named = eventually(
                lambda: (
                    (names := application_names(roles.owner_url, roles.user)) >= PROCESSES and names
                ),
                timeout=10,
                what="every process's connections named",
            )
            done = fleet.plangate("submit", "how many tickets are open", "--wait", "--json")
        finally:
            codes = fleet.stop_all()
        logs = fleet.logs()

    assert taken.status_code in (201, 202), taken.text
    assert done.returncode == 0, done.stderr + logs
    assert json.loads(done.stdout.strip().splitlines()[-1])["status"] == "completed"
    assert "permission denied" not in logs
    assert named == PROCESSES, named  # and no connection unnamed
    assert codes == [0, 0, 0, 0], logs


def test_a_worker_out_of_connection_slots_says_the_database_refuses_them_and_what_to_raise(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    """Given a gate worker running as a role with the documented grants, its /readyz polled,
    When every connection slot of the role is taken (its connection limit reached) and the
    worker's connections are ended,
    Then /readyz says the database refuses new connections (too many connections), and the
    log says so once, with what to raise or lower; it said "does not answer" for both.
    """
    with owned_database(postgres_url) as roles:
        migrate_as_owner(tmp_path, redis_url, roles)
        fleet = Fleet(redis_url, roles.user_url, tmp_path, extra_env=FAST_SWEEPS)
        port = free_port()
        fleet.start("gate", PLANGATE_METRICS_PORT=str(port))
        ready = f"http://127.0.0.1:{port}/readyz"
        admin = make_url(roles.owner_url).set(drivername="postgresql", username="postgres")
        try:
            eventually(lambda: answers(ready) == 200, timeout=30, what="the gate ready")
            with psycopg.connect(admin.render_as_string(False), autocommit=True) as connection:
                user = sql.Identifier(roles.user)
                connection.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT 0").format(user))
                connection.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                    (roles.user,),
                )
                refused = eventually(
                    lambda: (r := httpx.get(ready, timeout=5)).status_code == 503 and r.text,
                    timeout=10,
                    what="the gate not ready",
                )
                connection.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT -1").format(user))
        finally:
            codes = fleet.stop_all()
        log = (tmp_path / "gate-0.log").read_text()

    assert "the database refuses new connections (too many connections)" in refused
    said = [line for line in log.splitlines() if "refuses" in line]
    assert len(said) == 1, said
    assert "refuses work: the database refuses new connections (too many connections)" in said[0]
    assert "raise its max_connections, or run fewer plangate processes" in said[0]
    assert "does not answer" not in log
    assert codes == [0], fleet.logs()


def test_a_privilege_revoked_under_a_worker_dead_letters_its_message_saying_what_to_grant(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    """Given an executor and a planner running as a role with the documented grants,
    When INSERT on plans is revoked from that role and a goal is then submitted,
    Then the planner tries the goal its attempts and dead-letters it, its reason and each log
    line saying in one line PostgreSQL's words and what to grant, with no traceback; it
    logged SQLAlchemy's error whole (the statement in it) and a traceback, and the dead
    letter gave no advice.
    """
    with owned_database(postgres_url) as roles:
        migrate_as_owner(tmp_path, redis_url, roles)
        fleet = Fleet(redis_url, roles.user_url, tmp_path, extra_env=FAST_SWEEPS)
        ports = {stage: free_port() for stage in ("executor", "planner")}
        for stage, port in ports.items():
            fleet.start(stage, PLANGATE_METRICS_PORT=str(port))
        bus = Bus(redis_url, fleet.namespace)
        try:
            for port in ports.values():
                ready = f"http://127.0.0.1:{port}/readyz"
                eventually(lambda at=ready: answers(at) == 200, timeout=30, what="ready")
            with psycopg.connect(roles.admin_url, autocommit=True) as connection:
                revoke = sql.SQL("REVOKE INSERT ON plans FROM {}")
                connection.execute(revoke.format(sql.Identifier(roles.user)))
            submitted = fleet.plangate("submit", "how many tickets are open")
            assert submitted.returncode == 0, submitted.stderr
            [letter] = eventually(bus.take_dead_letters, timeout=60, what="a dead letter")
        finally:
            bus.close()
            codes = fleet.stop_all()
        log = (tmp_path / "planner-1.log").read_text()

    refused_role = "the store refused plangate's role: permission denied for table plans; "
    assert letter.reason.startswith(f"failed 3 times; last error: {refused_role}"), letter.reason
    assert "SELECT, INSERT, UPDATE, DELETE on its tables" in letter.reason
    assert "\n" not in letter.reason
    assert "INSERT INTO" not in letter.reason
    refused = [line for line in log.splitlines() if "permission denied" in line]
    assert len(refused) == 4, refused  # two retries, giving up, the dead letter
    assert all("run `plangate db upgrade` as the database's owner" in line for line in refused)
    assert "Traceback" not in log
    assert "INSERT INTO" not in log
    assert codes == [0, 0], fleet.logs()


SLOW_PLANS_SQL = """
CREATE FUNCTION slow_plans() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(5); RETURN NEW; END $$;
CREATE TRIGGER slow_plans BEFORE INSERT ON plans FOR EACH ROW EXECUTE FUNCTION slow_plans();
"""


@pytest.mark.parametrize(
    ("timeout", "said", "advice"),
    [
        (
            "statement_timeout",
            "the database cancelled a statement (statement_timeout, or an operator's cancel) "
            "(canceling statement due to statement timeout)",
            "if this lasts, raise statement_timeout or find what holds the database up",
        ),
        (
            "lock_timeout",
            "the database did not grant a lock in time (lock_timeout) "
            "(canceling statement due to lock timeout)",
            "another transaction held it; if this lasts, pg_locks shows which",
        ),
    ],
)
def test_a_statement_the_database_refuses_at_every_try_is_dead_lettered_after_its_attempts(
    tmp_path: Path, redis_url: str, postgres_url: str, timeout: str, said: str, advice: str
) -> None:
    """Given an executor and a planner running with a statement_timeout of 1 s and a
    lock_timeout of 300 ms (their URL's `options`),
    When every plan the planner inserts outlasts the statement_timeout (a slow trigger), or
    waits on a lock another session keeps on plans,
    Then the goal is tried its 3 attempts and dead-lettered, the reason saying what the
    database refused and what to change; it was taken for an outage and tried for ever.
    """
    with owned_database(postgres_url) as roles:
        migrate_as_owner(tmp_path, redis_url, roles)
        if timeout == "statement_timeout":
            with psycopg.connect(roles.admin_url, autocommit=True) as connection:
                connection.execute(SLOW_PLANS_SQL.encode())
        fleet = Fleet(redis_url, roles.user_url, tmp_path, extra_env=FAST_SWEEPS)
        timeouts = make_url(roles.user_url).update_query_dict(
            {"options": "-c statement_timeout=1000 -c lock_timeout=300"}
        )
        ports = {stage: free_port() for stage in ("executor", "planner")}
        for stage, port in ports.items():
            fleet.start(
                stage,
                PLANGATE_METRICS_PORT=str(port),
                PLANGATE_DATABASE_URL=timeouts.render_as_string(False),
            )
        bus = Bus(redis_url, fleet.namespace)
        try:
            for port in ports.values():
                ready = f"http://127.0.0.1:{port}/readyz"
                eventually(lambda at=ready: answers(at) == 200, timeout=30, what="ready")
            with psycopg.connect(roles.admin_url) as holder:
                if timeout == "lock_timeout":
                    holder.execute("LOCK TABLE plans IN ACCESS EXCLUSIVE MODE")
                goal = GoalSubmitted(goal_id=uuid4().hex, text="how many tickets are open")
                bus.publish([Envelope.of(goal)])
                [letter] = eventually(bus.take_dead_letters, timeout=40, what="a dead letter")
        finally:
            bus.close()
            codes = fleet.stop_all()

    refused = f"the store refused a statement: {said}; {advice}"
    assert letter.reason == f"failed 3 times; last error: {refused}", letter.reason
    assert "INSERT INTO" not in letter.reason
    assert codes == [0, 0], fleet.logs()
