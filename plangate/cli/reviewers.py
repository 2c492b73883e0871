"""`plangate reviewers add|list|roles|remove`: who may decide held plans, and with which roles.

The file keeps each token's SHA-256, never the token: `add` prints a new token once, on its own
line of stdout (`TOKEN=$(plangate reviewers add alice)` captures it), and it cannot be shown
again. A running `plangate serve` reads the file again when it changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from plangate.cli.common import err_console, friendly_errors, group, load_settings
from plangate.errors import ConfigError, PolicyError

app = group(
    "Manage reviewers: the people who approve, reject or edit held plans. The reviewers file "
    "(PLANGATE_REVIEWERS_FILE, or --file) keeps names, roles and token hashes, never tokens."
)
console = Console(highlight=False, soft_wrap=True)

FileOption = Annotated[
    Path | None,
    typer.Option(
        "--file",
        metavar="PATH",
        help="The reviewers file (default: PLANGATE_REVIEWERS_FILE).",
        dir_okay=False,
        show_default=False,
    ),
]
NameArgument = Annotated[str, typer.Argument(metavar="NAME", help="Who, as recorded on decisions.")]
RoleOption = Annotated[
    list[str] | None,
    typer.Option(
        "--role",
        metavar="ROLE",
        help="A role they hold, as a policy rule's requires_role names it (repeatable; "
        "`roles` with none: no roles).",
    ),
]


def _path(file: Path | None) -> Path:
    path = file or load_settings().reviewers_file
    if path is None:
        raise ConfigError(
            "which reviewers file? set PLANGATE_REVIEWERS_FILE (as `plangate serve` has it) "
            "or pass --file PATH"
        )
    return path


@app.command("add", short_help="Add a reviewer; print their token once.")
@friendly_errors
def reviewers_add(
    name: NameArgument,
    role: RoleOption = None,
    file: FileOption = None,
) -> None:
    """Add NAME to the reviewers file (made if missing, readable by you only) with a new token.

    The token is printed once, alone on stdout; only its SHA-256 is kept, so hand it to NAME
    now (they set PLANGATE_REVIEWER_TOKEN, or log in to the review page with it). A lost token
    is replaced by `remove` and `add` again.
    """
    from plangate.reviewers import add_reviewer

    path = _path(file)
    token = add_reviewer(path, name, role or [])
    typer.echo(token)
    _warn_of_roles_no_rule_asks(role or [])
    roles = ", ".join(sorted(set(role or []))) or "no roles"
    err_console.print(
        f"added {name} ({roles}) to {path}; the token above is not stored anywhere: "
        "give it to them now, it cannot be shown again"
    )


@app.command("list", short_help="List reviewers and their roles.")
@friendly_errors
def reviewers_list(
    file: FileOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """List the reviewers in the file: names and roles (tokens are not kept, so never shown)."""
    from plangate.reviewers import read_file

    path = _path(file)
    reviewers = read_file(path) if path.exists() else []
    if as_json:
        views = [{"name": r.name, "roles": sorted(r.roles)} for r in reviewers]
        typer.echo(json.dumps(views))
        return
    if not path.exists():  # a mistyped path must not read as a file with no one in it
        err_console.print(
            f"no reviewers file at {escape(str(path))} yet; `plangate reviewers add NAME` "
            "makes it (check the path if you meant an existing one)"
        )
        return
    if not reviewers:
        typer.echo(f"no reviewers in {path}; add one with `plangate reviewers add NAME`")
        return
    table = Table(title=f"Reviewers ({path})", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("roles", overflow="fold")
    for reviewer in reviewers:
        table.add_row(reviewer.name, ", ".join(sorted(reviewer.roles)))
    console.print(table)


@app.command("roles", short_help="Set a reviewer's roles; their token stays.")
@friendly_errors
def reviewers_roles(
    name: NameArgument,
    role: RoleOption = None,
    file: FileOption = None,
) -> None:
    """Give NAME exactly the roles given, keeping their token (remove and add would replace it).

    A role taken away counts no more: an approval NAME gave under it is not signed by the gate.
    """
    from plangate.reviewers import set_roles

    path = _path(file)
    before = set_roles(path, name, role or [])
    _warn_of_roles_no_rule_asks(role or [])
    shown = ", ".join(sorted(set(role or []))) or "no roles"
    had = ", ".join(sorted(before)) or "no roles"
    typer.echo(f"{name} now has {shown} (had {had}) in {path}")


@app.command("remove", short_help="Remove a reviewer: their token and sessions stop working.")
@friendly_errors
def reviewers_remove(name: NameArgument, file: FileOption = None) -> None:
    """Remove NAME from the reviewers file: their token stops working.

    Their web sessions stop too, at their next request to any replica of `plangate serve`.
    """
    from plangate.reviewers import remove_reviewer

    path = _path(file)
    remove_reviewer(path, name)
    typer.echo(f"removed {name} from {path}")


def _warn_of_roles_no_rule_asks(roles: list[str]) -> None:
    """Say so when the policy (PLANGATE_POLICY_FILE, if set here) asks none of these roles.

    Roles are told apart by case: `--role Finance` where the rules ask `finance` was taken in
    silence, and that reviewer could approve nothing the rules hold for finance.
    """
    path = load_settings().policy_file
    if not roles or path is None or not path.is_file():
        return
    from approval_gate.policy_file import read_policy_file

    try:
        policy, _ = read_policy_file(path.read_bytes(), str(path))
    except (PolicyError, OSError):  # a policy that does not read is `policy check`'s to say
        return
    asked = {rule.requires_role for rule in policy.rules if rule.requires_role}
    unasked = sorted(set(roles) - asked)
    if unasked:
        known = ", ".join(sorted(asked)) or "none"
        err_console.print(
            f"no rule of the policy ({escape(str(path))}) asks the role(s) "
            f"{escape(', '.join(unasked))}; its rules ask: {escape(known)} (roles are told "
            "apart by case)"
        )
