"""MkDocs hooks: the reference pages, generated from the code they describe.

The command line from the typer app, the settings from `Settings`, the HTTP API from the
FastAPI app's OpenAPI document and the messages from `schemas.routing` and their models. Written
at build time (never committed), so a reference page cannot disagree with the release it
documents; `tests/test_docs.py` checks that each names everything it should.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import typer
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

# typer vendors its own click (typer>=0.29): its commands are these classes, not `click`'s.
from typer import _click as click
from typer.core import TyperGroup

_WIDTH = 88


def _cell(text: object) -> str:
    """One Markdown table cell: on one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _commands(
    command: click.Command, context: click.Context
) -> Iterator[tuple[click.Command, click.Context]]:
    yield command, context
    if isinstance(command, TyperGroup):
        for name in command.list_commands(context):
            sub = command.get_command(context, name)
            if sub is not None and not sub.hidden:
                child = click.Context(sub, info_name=name, parent=context, max_content_width=_WIDTH)
                child.terminal_width = _WIDTH
                yield from _commands(sub, child)


def cli_reference() -> str:
    """Every command's `--help`, in the order `plangate --help` lists them."""
    from plangate.cli.main import app

    root = typer.main.get_command(app)
    context = click.Context(root, info_name="plangate", max_content_width=_WIDTH)
    context.terminal_width = _WIDTH
    parts = [
        "# Command line",
        "",
        "Generated from the `plangate` command itself: each section is that command's `--help`.",
        "",
        "Exit codes, the same for every command: `0` done (the goal completed), `1` the goal "
        "failed or a check found a break, `2` something to fix and try again (a usage or "
        "configuration error, an id that names nothing, a refused role, an unreachable "
        "service), `3` the plan was rejected, denied or left unanswered.",
        "",
    ]
    for command, ctx in _commands(root, context):
        parts += [f"## `{ctx.command_path}`", "", "```text", command.get_help(ctx), "```", ""]
    return "\n".join(parts)


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation)
    for noise in ("typing.", "pathlib.", "pydantic.types.", "datetime."):
        text = text.replace(noise, "")
    return text


def settings_reference() -> str:
    """Every setting: its environment variable, type, default and description."""
    from pydantic_core import PydanticUndefined

    from plangate.config import Settings, variable_name

    rows = ["| Variable | Type | Default | What it does |", "| --- | --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = "(derived)"
        elif field.default is PydanticUndefined or field.default is None:
            default = ""
        else:
            default = f"`{field.default}`"
        rows.append(
            f"| `{variable_name(name)}` | `{_cell(_type_name(field.annotation))}` | "
            f"{_cell(default)} | {_cell(field.description or '')} |"
        )
    return "\n".join(
        [
            "# Settings",
            "",
            "Generated from `plangate.config.Settings`. plangate reads its configuration from "
            "these environment variables only; an invalid value stops a command with one line "
            "naming the variable (exit 2). Tools' own variables (`JIRA_URL`, "
            "`PAGERDUTY_ROUTING_KEY`, ...) are described with the tools; tracing follows the "
            "standard `OTEL_*` variables.",
            "",
            *rows,
            "",
        ]
    )


def _schema_name(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return f"`{schema['$ref'].rsplit('/', 1)[-1]}`"
    if schema.get("type") == "array":
        return f"array of {_schema_name(schema.get('items', {}))}"
    if "anyOf" in schema:
        return " or ".join(_schema_name(part) for part in schema["anyOf"])
    return f"`{schema.get('type', 'object')}`"


def http_reference() -> str:
    """Every route of `plangate serve`'s OpenAPI document, with its parameters and answers."""
    from pydantic import SecretStr

    from plangate.config import Settings
    from plangate.server.app import create_app

    # A fixed secret only so that building the app does not warn about a per-process one.
    settings = Settings(session_secret=SecretStr("the-docs-build-signs-no-session" * 2))
    document = create_app(settings).openapi()
    parts = [
        "# HTTP API",
        "",
        f"Generated from the OpenAPI {document['openapi']} document of `plangate serve` "
        f"(version {document['info']['version']}). A running server serves the same document "
        'at `/openapi.json` and browsable at `/docs`. Errors are JSON `{"error": ...}`.',
        "",
    ]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            parts += [f"## `{method.upper()} {path}`", "", operation.get("summary", ""), ""]
            if operation.get("description"):
                parts += [operation["description"], ""]
            parameters = operation.get("parameters", [])
            if parameters:
                parts += ["| Parameter | In | Type | Required |", "| --- | --- | --- | --- |"]
                parts += [
                    f"| `{p['name']}` | {p['in']} | {_cell(_schema_name(p.get('schema', {})))} "
                    f"| {'yes' if p.get('required') else 'no'} |"
                    for p in parameters
                ]
                parts.append("")
            body = operation.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                parts += [f"Body (`{media}`): {_schema_name(content.get('schema', {}))}", ""]
            answers = [
                f"`{code}` {_cell(answer.get('description', ''))}"
                for code, answer in operation.get("responses", {}).items()
            ]
            parts += ["Answers: " + "; ".join(answers) + ".", ""]
    parts += _unlisted_routes()
    schemas = document.get("components", {}).get("schemas", {})
    if schemas:
        parts += ["## Schemas", ""]
        for name, schema in schemas.items():
            parts += [f"### `{name}`", "", "```json", json.dumps(schema, indent=2), "```", ""]
    return "\n".join(parts)


def _unlisted_routes() -> list[str]:
    """Return the table of the pages and probes: served, but not part of the JSON API."""
    from fastapi.routing import APIRoute

    from plangate.server import goal_pages, health, pages

    def what(route: APIRoute) -> str:
        doc = (route.endpoint.__doc__ or "").strip()
        return _cell(doc.splitlines()[0]) if doc else ""

    rows = [
        f"| `{' '.join(sorted(route.methods or ()))} {route.path}` | {what(route)} |"
        for module in (pages, goal_pages, health)
        for route in module.router.routes
        if isinstance(route, APIRoute)
    ]
    return [
        "## Pages and probes",
        "",
        "Served by the same process, outside the OpenAPI document: the review and goal pages "
        "(for people, in a browser), the probes and the metrics.",
        "",
        "| Route | What |",
        "| --- | --- |",
        *rows,
        "",
    ]


def messages_reference() -> str:
    """Every message type: who sends it, who consumes it, whether it ends the goal, its fields."""
    from schemas.export import EXPORTED
    from schemas.routing import ROUTES

    parts = [
        "# Messages",
        "",
        "Generated from `schemas/routing.py` (the one routing table) and the message models in "
        "`schemas/`. Every message is JSON on the topic exchange `plangate` with its type as "
        "routing key; `plangate schema export DIR` writes each as a JSON Schema and "
        "`plangate schema asyncapi FILE` the AsyncAPI 3 document.",
        "",
        "| Type | Sent by | Consumed by | Ends the goal |",
        "| --- | --- | --- | --- |",
    ]
    parts += [
        f"| `{route.type}` | {', '.join(route.sent_by)} | "
        f"{', '.join(route.consumed_by) or 'observers only'} | {'yes' if route.terminal else ''} |"
        for route in ROUTES.values()
    ]
    parts.append("")
    for name, model in EXPORTED.items():
        schema = model.model_json_schema()
        required = set(schema.get("required", []))
        parts += [f"## `{name}`", "", " ".join((model.__doc__ or "").split()), ""]
        parts += ["| Field | Type | Required | Description |", "| --- | --- | --- | --- |"]
        for field, spec in schema.get("properties", {}).items():
            parts.append(
                f"| `{field}` | {_cell(_schema_name(spec))} | {'yes' if field in required else ''} "
                f"| {_cell(spec.get('description', ''))} |"
            )
        parts.append("")
    return "\n".join(parts)


PAGES: dict[str, Callable[[], str]] = {
    "reference/cli.md": cli_reference,
    "reference/settings.md": settings_reference,
    "reference/http-api.md": http_reference,
    "reference/messages.md": messages_reference,
}
"""Each generated page, by its path under docs/."""


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated reference pages to the site."""
    for path, render in PAGES.items():
        files.append(File.generated(config, path, content=render()))
    return files
