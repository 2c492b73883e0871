"""`plangate audit`: the hash-chained audit log."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal, TextIO

import typer

from plangate.cli.common import EXIT_FAILED, err_console, friendly_errors, group, load_settings

app = group("Check and export the hash-chained audit log.")


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


@app.command("export", short_help="Write the audit log as JSON lines or CSV.")
@friendly_errors
def audit_export(
    output_format: Annotated[
        Literal["jsonl", "csv"], typer.Option("--format", help="jsonl (one entry a line) or csv.")
    ] = "jsonl",
    since: Annotated[
        datetime | None,
        typer.Option(metavar="TIME", help="Only entries at or after this ISO 8601 time (UTC)."),
    ] = None,
    goal: Annotated[str | None, typer.Option(metavar="GOAL_ID", help="Only this goal.")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", metavar="FILE", help="Write here, not stdout.")
    ] = None,
) -> None:
    """Export every audit entry in chain order, with its hash and its predecessor's.

    `plangate audit verify` checks the chain; an exported file keeps the hashes, so an auditor
    can check it again elsewhere.
    """
    from plangate.store import audit, open_store

    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    store = open_store(load_settings().resolved_database_url(), upgrade=False)
    entries = audit.export(store, since=since, goal_id=goal)
    with output.open("w", newline="", encoding="utf-8") if output else _stdout() as stream:
        if output_format == "csv":
            writer = csv.DictWriter(stream, fieldnames=audit.EXPORT_FIELDS)
            writer.writeheader()
            for entry in entries:
                writer.writerow({**entry, "data": json.dumps(entry["data"], sort_keys=True)})
        else:
            for entry in entries:
                stream.write(json.dumps(entry, sort_keys=True) + "\n")
    store.close()


@contextmanager
def _stdout() -> Iterator[TextIO]:
    yield sys.stdout
    sys.stdout.flush()
