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
        _say_unsealed(url)


def _say_unsealed(url: str) -> None:
    """Say how many held plans no approval can release now (held before 0014), and what to do."""
    from plangate.store import open_store
    from plangate.unsealed_holds import WAY_OUT, unsealed_held

    store = open_store(url, upgrade=False)
    try:
        barred = unsealed_held(store)
    finally:
        store.close()
    if barred:
        typer.echo(
            f"{len(barred)} held plan(s) cannot be released now: a gate of a release before "
            f"0014 held them, and their holds carry no seal ({', '.join(barred)}); "
            f"for each, {WAY_OUT}"
        )


@app.command("current", short_help="Say which schema revision the store is at.")
@friendly_errors
def current() -> None:
    """Say the schema revision of the database at PLANGATE_DATABASE_URL, changing nothing.

    Run it before `db upgrade` (it is the read-only check): a database behind this plangate
    is named with its revision and a note to upgrade, exit 0. Exits 2 for one a newer
    plangate migrated, or that cannot be read.
    """
    from plangate.errors import SchemaBehind
    from plangate.store.engine import require_store_schema
    from plangate.store.schema import head_revision

    url = load_settings().resolved_database_url()
    try:
        revision = require_store_schema(url)
    except SchemaBehind as behind:
        found = f"is at {behind.current}" if behind.current else "is empty (no schema yet)"
        typer.echo(f"the schema of {_where(url)} {found}; this plangate needs {head_revision()}")
        typer.echo("behind: run `plangate db upgrade`")
        return
    typer.echo(f"the schema of {_where(url)} is at {revision}, as this plangate needs")


def _where(url: str) -> str:
    """Name the database as the operator set it: its file, or its URL with no password."""
    from sqlalchemy.engine import make_url

    from plangate.store.engine import shown_url

    parsed = make_url(url)
    # Named, so that a mistyped path shows as a new, empty database (its password hidden).
    where = parsed.database if parsed.get_backend_name() == "sqlite" else None
    return where or shown_url(parsed)
