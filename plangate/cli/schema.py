"""`plangate schema`: the message contract, for other languages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from plangate.cli.common import friendly_errors, group

app = group("Export the message contract for other languages.")


@app.command("export", short_help="Write a JSON Schema file for every message.")
@friendly_errors
def schema_export(
    directory: Annotated[
        Path,
        typer.Argument(metavar="DIR", help="Folder to write the schemas into.", file_okay=False),
    ],
) -> None:
    """Write a JSON Schema file for every message, the plan and the tool spec."""
    from schemas.export import export_json_schemas

    for path in export_json_schemas(directory):
        typer.echo(path)
