"""`plangate schema`: the message contract, for other languages."""

from __future__ import annotations

import re
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


@app.command("asyncapi", short_help="Write the AsyncAPI 3 document of every channel and message.")
@friendly_errors
def schema_asyncapi(
    file: Annotated[
        Path,
        typer.Argument(metavar="FILE", help="Where to write it: .json, else YAML.", dir_okay=False),
    ],
    namespace: Annotated[
        str, typer.Option(help="The exchange and queue prefix to describe.")
    ] = "plangate",
) -> None:
    """Write the AsyncAPI 3.0.0 document of plangate's bus (YAML, or JSON for a .json FILE)."""
    import json

    import yaml

    from plangate.config import NAMESPACE_PATTERN
    from schemas.asyncapi import asyncapi_document

    if not re.fullmatch(NAMESPACE_PATTERN, namespace):  # as PLANGATE_NAMESPACE is checked
        raise typer.BadParameter(
            f"{namespace[:40]!r} is no namespace: a lowercase letter, then up to 31 of a-z, "
            "0-9, _ and -",
            param_hint="--namespace",
        )
    document = asyncapi_document(namespace)
    if file.suffix.lower() == ".json":
        text = json.dumps(document, indent=2) + "\n"
    else:
        text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text, encoding="utf-8")
    typer.echo(file)
