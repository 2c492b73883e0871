"""`plangate db`: the store's schema."""

from __future__ import annotations

import typer

from plangate.cli.common import friendly_errors, group, load_settings

app = group("Manage the store's schema (SQLite or PostgreSQL).")


@app.command("upgrade", short_help="Migrate the store to this plangate's schema.")
@friendly_errors
def upgrade() -> None:
    """Migrate the database at PLANGATE_DATABASE_URL to the newest schema (safe to repeat)."""
    from plangate.store.engine import migrate_store

    before, after = migrate_store(load_settings().resolved_database_url())
    if before == after:
        typer.echo(f"the schema is already at {after}")
    else:
        typer.echo(f"migrated the schema from {before or 'empty'} to {after}")
