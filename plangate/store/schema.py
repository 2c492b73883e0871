"""The store's schema version: upgrade with Alembic, or check that it is current.

Workers refuse to start on an old schema (they would write rows an older layout cannot hold);
the embedded mode upgrades its own SQLite file, because it owns it.
"""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from plangate.errors import ConfigError


def _config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("plangate.store").joinpath("migrations"))
    )
    return config


def head_revision(engine: Engine) -> str:
    """Return the newest migration this plangate knows."""
    head = ScriptDirectory.from_config(_config(engine)).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """Return the revision the database is at (None: never migrated)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Migrate the database to the newest revision; return (before, after)."""
    before = current_revision(engine)
    config = _config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return before, head_revision(engine)


def require_current(engine: Engine) -> None:
    """Raise ConfigError, saying to run `plangate db upgrade`, unless the schema is current."""
    current, head = current_revision(engine), head_revision(engine)
    if current != head:
        raise ConfigError(
            f"the database schema is at {current or 'nothing (empty database)'}, "
            f"this plangate needs {head}: run `plangate db upgrade` first"
        )
