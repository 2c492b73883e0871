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

    url = load_settings().resolved_database_url()
    before, after = migrate_store(url)
    where = _where(url)
    if before == after:
        typer.echo(f"the schema of {where} is already at {after}")
    elif before is None:
        typer.echo(f"created the schema {after} in {where}, a new database")
    else:
        typer.echo(f"migrated the schema of {where} from {before} to {after}")


@app.command("current", short_help="Say which schema revision the store is at.")
@friendly_errors
def current() -> None:
    """Say the schema revision of the database at PLANGATE_DATABASE_URL, changing nothing.

    Exits 2 naming the revision it found, and what to run, if it is not this plangate's: run
    it before `db upgrade` to know which releases' workers still run on the schema.
    """
    from plangate.store.engine import require_store_schema

    url = load_settings().resolved_database_url()
    revision = require_store_schema(url)
    typer.echo(f"the schema of {_where(url)} is at {revision}, as this plangate needs")


def _where(url: str) -> str:
    """Name the database as the operator set it: its file, or its URL with no password."""
    from sqlalchemy.engine import make_url

    from plangate.store.engine import shown_url

    parsed = make_url(url)
    # Named, so that a mistyped path shows as a new, empty database (its password hidden).
    where = parsed.database if parsed.get_backend_name() == "sqlite" else None
    return where or shown_url(parsed)
