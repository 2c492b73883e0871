"""`plangate db`: the store's schema."""

from __future__ import annotations

import typer

from plangate.cli.common import friendly_errors, group, load_settings

app = group("Manage the store's schema (SQLite or PostgreSQL).")


@app.command("upgrade", short_help="Migrate the store to this plangate's schema.")
@friendly_errors
def upgrade() -> None:
    """Migrate the database at PLANGATE_DATABASE_URL to the newest schema (safe to repeat)."""
    from sqlalchemy.engine import make_url

    from plangate.store.engine import migrate_store, shown_url

    url = load_settings().resolved_database_url()
    before, after = migrate_store(url)
    parsed = make_url(url)
    # Named, so that a mistyped path shows as a new, empty database (its password hidden).
    where = parsed.database if parsed.get_backend_name() == "sqlite" else None
    where = where or shown_url(parsed)
    if before == after:
        typer.echo(f"the schema of {where} is already at {after}")
    elif before is None:
        typer.echo(f"created the schema {after} in {where}, a new database")
    else:
        typer.echo(f"migrated the schema of {where} from {before} to {after}")
