"""What an operator is told when the store cannot be migrated or is not this plangate's schema.

`plangate db upgrade` is a deployment's first command (the compose file's and the k8s job's);
a database it cannot reach, or one a newer plangate migrated, is one line that says what to
check, exit 2, never a traceback. A store at a revision this plangate does not know is refused
by every command and by readiness alike, without telling the operator to run an upgrade that
cannot help.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from plangate.client import Client
from plangate.config import Settings
from plangate.errors import ConfigError
from plangate.readiness import not_ready
from plangate.server import create_app, schema_guard
from plangate.store import open_store
from plangate.store.schema import head_revision
from tests.fleet import FAST_SWEEPS, Fleet, serving_app
from tests.support import eventually, migrate_to, outer_environment
from tests.support import plangate_in as plangate

EXIT_USAGE = 2
NEWER = "9999"  # a revision only a newer plangate's migrations would write


def closed_port() -> int:
    """A local port nothing listens on (bound, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def newer_store(tmp_path: Path) -> Path:
    """A data folder whose store a newer plangate has migrated past this one's newest revision."""
    settings = Settings(data_dir=tmp_path, broker_url="memory://")
    open_store(settings.resolved_database_url()).close()
    with sqlite3.connect(tmp_path / "plangate.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (NEWER,))
    return tmp_path


def test_db_upgrade_of_an_unreachable_database_is_one_line_and_exit_2(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://plangate@127.0.0.1:{closed_port()}/plangate"

    result = plangate(tmp_path, "db", "upgrade", PLANGATE_DATABASE_URL=url)

    assert result.returncode == EXIT_USAGE, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("error: cannot open the store at postgresql+psycopg://plangate@")
    assert line.endswith(
        "check PLANGATE_DATABASE_URL, and that the database is reachable and was made by plangate"
    )
    assert "Traceback" not in result.stdout


def test_db_upgrade_of_a_newer_schema_refuses_and_leaves_it_as_it_is(newer_store: Path) -> None:
    result = plangate(newer_store, "db", "upgrade")

    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr.splitlines() == [
        f"error: the database schema is at {NEWER}, newer than this plangate knows "
        f"({head_revision()}): run a plangate that knows it (plangate never migrates a "
        "schema back); if no plangate made it, the database is another application's"
    ]
    with sqlite3.connect(newer_store / "plangate.db") as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (NEWER,)
        ]


def test_db_current_names_the_revision_the_store_is_at_and_migrates_nothing(
    tmp_path: Path,
) -> None:
    """Given a store that a release at 0013 migrated (its workers, which do not stop when a
    newer release migrates, may still run on it),
    When the operator runs `plangate db current` of the new release before `db upgrade`,
    Then it names 0013, notes that it is behind and what to run, exit 0 (it is the read-only
    check before an upgrade: it exited 2 with nothing on stdout), and leaves the store at 0013;
    When `db upgrade` has run, Then it says the store is at this plangate's revision, exit 0.
    """
    migrate_to(f"sqlite:///{tmp_path / 'plangate.db'}", "0013").dispose()

    before = plangate(tmp_path, "db", "current")
    with sqlite3.connect(tmp_path / "plangate.db") as connection:
        kept = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    upgraded = plangate(tmp_path, "db", "upgrade")
    after = plangate(tmp_path, "db", "current")

    assert before.returncode == 0, before.stdout + before.stderr
    assert before.stdout.splitlines() == [
        f"the schema of {tmp_path / 'plangate.db'} is at 0013; this plangate needs "
        f"{head_revision()}",
        "behind: run `plangate db upgrade`",
    ]
    assert kept == [("0013",)]
    assert upgraded.stdout.startswith(f"migrated the schema of {tmp_path / 'plangate.db'} from")
    assert f"from 0013 to {head_revision()}" in upgraded.stdout, upgraded.stderr
    assert after.returncode == 0, after.stderr
    assert after.stdout == (
        f"the schema of {tmp_path / 'plangate.db'} is at {head_revision()}, as this plangate "
        "needs\n"
    )


def test_db_current_of_an_empty_database_says_it_is_empty(tmp_path: Path) -> None:
    """Given a database file with no schema in it (made, not yet upgraded),
    When `plangate db current` runs,
    Then it says the database is empty and to upgrade, exit 0, and creates nothing.
    """
    sqlite3.connect(tmp_path / "plangate.db").close()

    shown = plangate(tmp_path, "db", "current")

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        f"the schema of {tmp_path / 'plangate.db'} is empty (no schema yet); this plangate "
        f"needs {head_revision()}",
        "behind: run `plangate db upgrade`",
    ]
    with sqlite3.connect(tmp_path / "plangate.db") as connection:
        tables = connection.execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == []


@pytest.mark.parametrize(
    "args",
    [("goals", "list"), ("run", "how many tickets are open", "--yes")],
    ids=["a reading command", "the embedded mode, which migrates its own store"],
)
def test_every_command_refuses_a_newer_schema_without_asking_for_an_upgrade(
    newer_store: Path, args: tuple[str, ...]
) -> None:
    result = plangate(newer_store, *args)

    assert result.returncode == EXIT_USAGE, result.stderr
    [line] = result.stderr.splitlines()
    assert f"schema is at {NEWER}, newer than this plangate knows" in line
    assert "db upgrade" not in line


def test_a_worker_refuses_to_start_on_a_newer_schema(newer_store: Path) -> None:
    url = f"sqlite:///{newer_store / 'plangate.db'}"

    with pytest.raises(ConfigError, match=f"schema is at {NEWER}, newer than this plangate"):
        open_store(url, upgrade=False)


def test_readiness_of_a_process_whose_store_a_newer_plangate_migrated(tmp_path: Path) -> None:
    """A rolling upgrade: the new release migrates while this process runs on."""
    store = open_store(f"sqlite:///{tmp_path / 'plangate.db'}")
    try:
        with store.engine.begin() as connection:
            connection.exec_driver_sql("UPDATE alembic_version SET version_num = ?", (NEWER,))
        reason = not_ready(store)
    finally:
        store.close()
    assert reason is not None
    assert reason.startswith(f"the database schema is at {NEWER}, newer than this plangate")
    assert "db upgrade" not in reason


@pytest.mark.parametrize(
    "command",
    [
        ("status", "abc123"),
        ("goals", "list"),
        ("audit", "verify"),
        ("review", "list"),
        ("db", "current"),
    ],
)
def test_a_command_that_reads_leaves_no_database_at_a_mistyped_path(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    """Given PLANGATE_DATABASE_URL naming a SQLite file that does not exist (a typo),
    When a command that only reads or checks runs,
    Then it says there is no database there and what to check, exit 2, and makes none: it
    created an empty file and folder there (and `audit verify` then checked that and passed).
    """
    typo = tmp_path / "typo" / "plangte.db"

    result = plangate(tmp_path, *command, PLANGATE_DATABASE_URL=f"sqlite:///{typo}")

    assert result.returncode == EXIT_USAGE, result.stdout + result.stderr
    assert result.stderr.startswith(f"error: no database at {typo}: check PLANGATE_DATABASE_URL")
    assert not typo.parent.exists()


def test_the_database_plangate_creates_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """Goals, plans and tool outputs are in it: 0600, like the keys beside it (it was 0644)."""
    assert plangate(tmp_path, "db", "upgrade").returncode == 0
    assert (tmp_path / "plangate.db").stat().st_mode & 0o777 == 0o600


def test_db_upgrade_of_tables_whose_revision_record_is_gone_says_to_restore_it(
    tmp_path: Path,
) -> None:
    """Given a migrated store whose alembic_version table was dropped,
    When `plangate db upgrade` runs, Then it exits 2 saying the record of the revision is gone
    and to restore it: workers called it an empty database, and the upgrade they asked for
    failed on "table goals already exists".
    """
    assert plangate(tmp_path, "db", "upgrade").returncode == 0
    with sqlite3.connect(tmp_path / "plangate.db") as connection:
        connection.execute("DROP TABLE alembic_version")

    result = plangate(tmp_path, "db", "upgrade")

    assert result.returncode == EXIT_USAGE, result.stderr
    [line] = result.stderr.splitlines()
    assert "holds plangate's tables but no record of their schema revision" in line


@pytest.mark.postgres
@pytest.mark.parametrize("command", [("review", "list"), ("review", "show", "abc")])
def test_a_review_command_creates_no_schema_in_an_empty_deployment_database(
    tmp_path: Path, postgres_database_url: str, command: tuple[str, ...]
) -> None:
    """`review list` against a deployment's empty database said "no plans are waiting" and
    made every table: `db upgrade` then found the schema there. It says to run it instead."""
    import sqlalchemy

    ran = plangate(tmp_path, *command, PLANGATE_DATABASE_URL=postgres_database_url)

    assert ran.returncode == EXIT_USAGE, ran.stdout + ran.stderr
    assert "plangate db upgrade" in ran.stderr
    engine = sqlalchemy.create_engine(postgres_database_url)
    try:
        assert sqlalchemy.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


@pytest.mark.redis
@pytest.mark.timeout(90)
def test_a_running_worker_whose_schema_a_newer_plangate_migrated_stops_saying_so(
    tmp_path: Path, redis_url: str
) -> None:
    """A rolling upgrade gone wrong: `db upgrade` by a newer release moved the schema on while
    a worker of this one ran. Its /readyz said so, but it went on consuming, writing with its
    code to a schema it does not know.

    Given a planner worker consuming,
    When a newer plangate's migration moves the schema past what it knows,
    Then within a few sweeps it stops, logging why and that it stops, and exits 2, as it
    would at start on that schema (to be started again with the new version).
    """
    fleet = Fleet(redis_url, f"sqlite:///{tmp_path / 'plangate.db'}", tmp_path)
    fleet.extra_env.update(FAST_SWEEPS)
    assert fleet.plangate("db", "upgrade").returncode == 0
    try:
        planner = fleet.start("planner")
        eventually(lambda: "worker started" in fleet.logs(), 30, "the planner to consume")
        with sqlite3.connect(tmp_path / "plangate.db") as connection:
            connection.execute("UPDATE alembic_version SET version_num = ?", (NEWER,))

        code = planner.wait(timeout=30)
    finally:
        fleet.stop_all()

    assert code == EXIT_USAGE, fleet.logs()
    said = fleet.logs()
    assert f"the database schema is at {NEWER}, newer than this plangate knows" in said
    assert "this planner worker stops (messages wait for one that knows it)" in said


def test_serve_refuses_writes_while_the_schema_is_not_its_own_and_takes_them_again_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers stop when a newer release moves the schema on; `serve` went on taking goals
    and writing them, saying so only in `/readyz`, which compose does not route on.

    Given `serve` on a store a newer plangate then migrates,
    When a goal is submitted, and again once the schema is its own again,
    Then the first is refused (503) saying why and that nothing was stored, while reads are
    still answered; the second is taken.
    """
    monkeypatch.setattr(schema_guard, "EVERY", 0.0)  # the schema read at each write
    settings = Settings(data_dir=tmp_path, broker_url="memory://")
    database = tmp_path / "plangate.db"
    open_store(settings.resolved_database_url()).close()

    def version(revision: str) -> None:
        with sqlite3.connect(database) as connection:
            connection.execute("UPDATE alembic_version SET version_num = ?", (revision,))

    def post(url: str) -> tuple[int, str]:
        request = urllib.request.Request(
            f"{url}/api/v1/goals",
            data=b'{"text": "how many tickets are open"}',
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as refused:
            with refused:
                return refused.code, refused.read().decode()

    with Client(settings) as client, serving_app(create_app(settings, client=client)) as url:
        version(NEWER)
        refused = post(url)
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as answer:
            read = answer.status
        version(head_revision())
        taken = post(url)

    assert refused[0] == 503, refused
    assert f"the database schema is at {NEWER}, newer than this plangate knows" in refused[1]
    assert "nothing was stored" in refused[1]
    assert read == 200
    assert taken[0] == 201, taken


def test_a_data_folder_mounted_read_only_is_refused_saying_to_copy_it_somewhere_writable(
    tmp_path: Path,
) -> None:
    """Given a data folder holding a store, bind-mounted read-only (a backup, a snapshot)
    When `plangate goals list` reads it
    Then one line says its folder cannot be written, which SQLite needs even to read, and to
    copy it; it pointed at PLANGATE_DATABASE_URL, which the user had never set.
    """
    data, view = tmp_path / "data", tmp_path / "view"
    view.mkdir()
    assert plangate(data, "db", "upgrade").returncode == 0
    # A mount namespace of its own (as an unprivileged user may): nothing outside sees it.
    mounted = subprocess.run(
        [
            *("unshare", "-rm", "sh", "-c"),
            f'mount --bind -o ro "{data}" "{view}" && exec "$0" -m plangate goals list',
            sys.executable,
        ],
        capture_output=True,
        text=True,
        env=outer_environment() | {"PLANGATE_DATA_DIR": str(view)},
        timeout=60,
        check=False,
    )

    assert mounted.returncode == EXIT_USAGE, mounted.stdout + mounted.stderr
    [line] = mounted.stderr.strip().splitlines()
    assert f"its folder {view} cannot be written" in line
    assert "copy the folder somewhere writable" in line
    assert "check PLANGATE_DATABASE_URL" not in line


def test_a_migration_installed_under_a_running_process_does_not_make_it_refuse_its_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a process whose store is at the schema of the code it runs,
    When a newer plangate's migration file lands on disk beside its code (`pip install -U` on
    the host, before `plangate db upgrade`),
    Then the process still finds its database current: it compares it with the code it runs.
    (Every worker of a host stopped within a second, saying to run an upgrade.)
    """
    from importlib import resources

    from plangate.store import schema

    installed = tmp_path / "migrations"
    versions = installed / "versions"
    versions.mkdir(parents=True)
    shipped = resources.files("plangate.store").joinpath("migrations", "versions")
    for entry in shipped.iterdir():
        if entry.name.endswith(".py"):
            (versions / entry.name).write_text(entry.read_text())
    forget = getattr(schema._known_revisions, "cache_clear", lambda: None)
    forget()  # what an earlier test's store check listed
    monkeypatch.setattr(schema, "_migrations", lambda: installed)
    try:
        running = schema.head_revision()
        assert schema.mismatch(running) is None

        (versions / f"{int(running) + 1:04d}_newer_release.py").write_text('"""Newer."""\n')

        assert schema.mismatch(running) is None
        assert schema.head_revision() == running
    finally:
        forget()
