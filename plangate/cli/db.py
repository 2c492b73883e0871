"""`plangate db`: the store's schema."""

from __future__ import annotations

import typer

from plangate.cli.common import friendly_errors, group, load_settings

app = group("Manage the store's schema (SQLite or PostgreSQL).")


@app.command("upgrade", short_help="Migrate the store to this plangate's schema.")
@friendly_errors
def upgrade() -> None:
    """Migrate the database at PLANGATE_DATABASE_URL to the newest schema (safe to repeat)."""
    from plangate.store import schema
    from plangate.store.engine import make_engine

    engine = make_engine(load_settings().resolved_database_url())
    try:
        before, after = schema.upgrade(engine)
    finally:
        engine.dispose()
    if before == after:
        typer.echo(f"the schema is already at {after}")
    else:
        typer.echo(f"migrated the schema from {before or 'empty'} to {after}")
