"""The store's schema version: upgrade with Alembic, or check that it is current.

Workers refuse to start on an old schema (they would write rows an older layout cannot hold);
the embedded mode upgrades its own SQLite file, because it owns it.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

from plangate.errors import ConfigError, SchemaBehind

if TYPE_CHECKING:
    from alembic.config import Config

# Every command checks the schema when it opens the store; importing alembic for that (and
# parsing every migration script) was a third of `plangate status`'s start-up. Migrations are
# numbered in order (0001, 0002, …, each revising the one before), so the newest is the
# highest-numbered file, and the database's revision is one row of alembic's own table.
# tests/test_store_sqlite.py checks both answers against alembic's.
_MIGRATION_FILE = re.compile(r"^(\d{4})_\w+\.py$")
_VERSION_TABLE = "alembic_version"
log = logging.getLogger(__name__)
# The advisory lock `plangate db upgrade` holds on PostgreSQL: "plangate" in ASCII.
_UPGRADE_LOCK = int.from_bytes(b"plangate", "big")


def _migrations() -> Traversable:
    return resources.files("plangate.store").joinpath("migrations")


def _config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_migrations()))
    return config


@functools.cache
def _known_revisions() -> frozenset[str]:
    """Return the migrations this process's code knows, listed once (at its first store check).

    Not again at each check: a `pip install -U` on a host put a newer migration on disk under
    running workers, which, comparing their database with it, all stopped before anyone ran
    `plangate db upgrade`. A process compares the database with the code it runs.
    """
    return frozenset(
        {
            found.group(1)
            for entry in _migrations().joinpath("versions").iterdir()
            if (found := _MIGRATION_FILE.match(entry.name))
        }
    )


def head_revision() -> str:
    """Return the newest migration this plangate knows."""
    return max(_known_revisions())


def mismatch(current: str | None) -> str | None:
    """Say why a database at revision `current` is not what this plangate needs (None: it is)."""
    head = head_revision()
    if current == head:
        return None
    if _ahead(current):
        return (
            f"the database schema is at {current}, newer than this plangate knows ({head}): "
            "run a plangate that knows it (plangate never migrates a schema back); if no "
            "plangate made it, the database is another application's"
        )
    return (
        f"the database schema is at {current or 'nothing (empty database)'}, "
        f"this plangate needs {head}: run `plangate db upgrade` first"
    )


def _ahead(current: str | None) -> bool:
    """Say whether no migration of this plangate made `current`: a newer plangate's did.

    (A rolling upgrade, or a rollback of the code alone.) No migration of this one can move it.
    """
    return current is not None and current not in _known_revisions()


def _refuse_unknown(current: str | None) -> None:
    """Raise ConfigError for a revision no migration of this plangate made: none can move it."""
    if _ahead(current):
        raise ConfigError(str(mismatch(current)))


def current_revision(engine: Engine) -> str | None:
    """Return the revision the database is at (None: never migrated)."""
    with engine.connect() as connection:
        if not inspect(connection).has_table(_VERSION_TABLE):
            return None
        return connection.execute(text(f"SELECT version_num FROM {_VERSION_TABLE}")).scalar()


def _holds_plangate_tables(engine: Engine) -> bool:
    with engine.connect() as connection:
        return bool(inspect(connection).has_table("goals"))


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Migrate the database to the newest revision; return (before, after)."""
    with _one_upgrade_at_a_time(engine):
        return _upgrade(engine)


@contextmanager
def _one_upgrade_at_a_time(engine: Engine) -> Iterator[None]:
    """On PostgreSQL, hold an advisory lock while upgrading: a second upgrade waits for it.

    Two at once (two pods of the migration Job, the Job and a person) on an empty database:
    the second failed creating a table the first had just made ("duplicate key value violates
    unique constraint pg_type_typname_nsp_index"), said as a wrong database URL. Waiting, it
    finds the schema current. (SQLite's own file lock serialises the migration already.)
    """
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as connection:
        taken = connection.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": _UPGRADE_LOCK}
        ).scalar()
        if not taken:  # said, or a stuck Job's session left the next upgrade silent for ever
            log.warning(
                "waiting for another `plangate db upgrade` to finish: a session holds the "
                "upgrade lock (pg_locks, locktype advisory, shows which; end it if it is stuck)"
            )
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _UPGRADE_LOCK})
        connection.commit()  # the lock is the session's: it outlives this transaction
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _UPGRADE_LOCK})
            connection.commit()


def _upgrade(engine: Engine) -> tuple[str | None, str]:
    from alembic import command

    before = current_revision(engine)
    _refuse_unknown(before)
    if before is None and _holds_plangate_tables(engine):
        # Migrating from nothing would create them again: "relation ... already exists".
        raise ConfigError(
            "the database holds plangate's tables but no record of their schema revision (its "
            f"{_VERSION_TABLE} table is gone): restore that table from a backup; "
            "`plangate db upgrade` cannot tell which revision the tables are at"
        )
    config = _config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return before, head_revision()


def require_current(engine: Engine) -> None:
    """Raise ConfigError, saying to run `plangate db upgrade`, unless the schema is current.

    SchemaBehind (a ConfigError) when the schema is older: the migration may yet run, and a
    starting process may wait for it (`--wait-for-schema`); one a newer plangate made will not
    come back to this one's.
    """
    current = current_revision(engine)
    problem = mismatch(current)
    if problem is not None:
        raise ConfigError(problem) if _ahead(current) else SchemaBehind(problem, current)
