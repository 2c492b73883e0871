"""`plangate audit`: the hash-chained audit log."""

from __future__ import annotations

import typer

from plangate.cli.common import EXIT_FAILED, err_console, friendly_errors, group, load_settings

app = group("Check the hash-chained audit log.")


@app.command("verify", short_help="Check every link of the audit log's hash chain.")
@friendly_errors
def audit_verify() -> None:
    """Check every link of the audit log's hash chain; exit 1 at the first broken one."""
    from plangate.store import audit, open_store

    store = open_store(load_settings().resolved_database_url())
    report = audit.verify(store)
    if report.ok:
        typer.echo(f"audit log intact: {report.entries} entries")
        return
    err_console.print(f"[red]audit log broken[/] at entry {report.broken_at}: {report.problem}")
    raise typer.Exit(EXIT_FAILED)
