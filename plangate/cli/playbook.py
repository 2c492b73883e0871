"""`plangate playbook`: the offline planner's goal patterns."""

from __future__ import annotations

from importlib import resources

import typer

from plangate.cli.common import friendly_errors, group

app = group("Show the playbooks the offline planner matches goals against.")


@app.command("show", short_help="Print the built-in playbook (a starting point for your own).")
@friendly_errors
def show() -> None:
    """Print the built-in playbook YAML; save it, edit it, and set PLANGATE_PLAYBOOK_FILE."""
    typer.echo(resources.files("planner_worker").joinpath("default_playbook.yaml").read_text())
