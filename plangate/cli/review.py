"""`plangate review`: held plans from the terminal — list, show, approve, reject, edit.

Settling steps that may or may not have happened (`unsettled`, `settle`) is in `settle.py`;
how a held plan is shown is in `held_plan_view.py`; how a command reaches the deployment and as
whom (`--server`, the reviewer token) is in `review_access.py`.

Without `--server` a command works on the store and broker named by the settings: a decision is
recorded in the store under the reviewer the token names in the reviewers file, and its messages
are published to the workers. With `--server URL` it calls that `plangate serve`'s review API.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.table import Table

from plangate.cli.common import err_console, friendly_errors, group
from plangate.cli.held_plan_view import console, elided, show_held, view_of
from plangate.cli.render import shown
from plangate.cli.review_access import (
    Access,
    ServerOption,
    TokenFileOption,
    decide_here,
    decide_there,
    opened_review,
    path_of,
    resolve,
)
from plangate.errors import ConfigError, Conflict
from plangate.small_files import read_text

if TYPE_CHECKING:
    from schemas import Catalog

app = group(
    "Review held plans (list, show, approve, reject, edit) and settle steps that may or may "
    "not have happened (unsettled, settle). Deciding needs your reviewer token "
    "(PLANGATE_REVIEWER_TOKEN or --token-file) and a deployment: --server URL (a plangate "
    "serve) or the store and broker in your settings."
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
HashOption = Annotated[
    str | None,
    typer.Option("--hash", metavar="HASH", help="The plan hash you reviewed; refused if changed."),
]
PlanArgument = Annotated[str, typer.Argument(metavar="PLAN_ID")]


@app.command("list", short_help="List the plans waiting for a person.")
@friendly_errors
def review_list(
    server: ServerOption = None,
    token_file: TokenFileOption = None,
    as_json: JsonOption = False,
    limit: Annotated[
        int, typer.Option(min=1, max=1000, help="At most this many, the oldest.")
    ] = 100,
) -> None:
    """List the plans waiting for a person, oldest first.

    --json prints what the API answers (GET /api/v1/reviews), with or without --server. When
    more are held than --limit, stderr says so.
    """
    access = resolve(server, token_file, deciding=False)
    if access.server:
        with access.api() as api:
            views: list[dict[str, Any]] = api.get(f"?limit={limit + 1}")
    else:
        from plangate.catalog import load_catalog
        from plangate.review_views import summary_of

        with opened_review(access.settings) as (_settings, store, review):
            catalog = load_catalog(store)
            held = review.held(limit + 1)
            views = [summary_of(plan, catalog).model_dump(mode="json") for plan in held]
    if len(views) > limit:
        views = views[:limit]
        err_console.print(
            f"more plans are held than these {limit}, the oldest: --limit for more (up to "
            "1000), or `plangate goals list --state held` pages through every one"
        )
    if as_json:
        typer.echo(json.dumps(views))
        return
    if not views:
        typer.echo("no plans are waiting for review")
        return
    # Fits the terminal (80 columns too): ids cut to the 8 characters every command takes,
    # the goal and the rule elided with … to share what the fixed columns leave.
    free = max(20, console.width - 52)
    rules = [str((v.get("policy") or {}).get("rule") or "") for v in views]
    rule_width = min(max(len(rule) for rule in rules), free - 10)
    goal_width = free - rule_width
    table = Table(title="Held plans", title_justify="left", box=box.SIMPLE_HEAD)
    # Times in UTC, as everywhere: the header says so (an auditor read "12-08 09:03" as local).
    for column in ("plan", "rev", "goal", "rule", "approved", "expires UTC"):
        table.add_column(column, no_wrap=True)
    for view in views:
        decision = view.get("policy") or {}
        needed = int(view.get("approvals_required") or 1)
        table.add_row(
            view["plan_id"][:8],
            str(view["revision"]),
            shown(elided(view["goal_text"], goal_width)),  # anyone's text
            shown(elided(decision.get("rule") or "", rule_width)),
            f"{len(view.get('approvers') or [])} of {needed}" + (" ⚠" if _warned(view) else ""),
            (view["expires_at"] or "")[5:16].replace("T", " "),
        )
    console.print(table, soft_wrap=False)
    for view in views:  # said in full: it waits for nobody who can come, or would fail
        for warning in _warned(view):
            console.print(shown(f"⚠ {view['plan_id'][:8]} {warning}"))


def _warned(view: dict[str, Any]) -> list[str]:
    """Return what stands in the way of a held plan's release, as the view says it."""
    keys = ("cannot_be_released", "catalog_problem", "refused_by_gate")
    return [str(view[key]) for key in keys if view.get(key)]


@app.command("show", short_help="Show a plan: steps, the policy's decision, the diff.")
@friendly_errors
def review_show(
    plan_id: PlanArgument,
    server: ServerOption = None,
    token_file: TokenFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a plan: its steps, what the policy said, and the diff to the previous revision.

    --json prints what the API answers (GET /api/v1/reviews/PLAN_ID), with or without --server.
    """
    from plangate.catalog import load_catalog

    access = resolve(server, token_file, deciding=False)
    if access.server:
        with access.api() as api:
            view = api.get(path_of(plan_id))
        catalog: Catalog = {}
    else:
        from plangate.review_views import detail_of

        with opened_review(access.settings) as (_settings, store, review):
            catalog = load_catalog(store)
            view = detail_of(review.get(plan_id), catalog).model_dump(mode="json")
    if as_json:
        typer.echo(json.dumps(view))
    else:
        show_held(view_of(view), catalog)


def _print_outcome(outcome: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(outcome))
        return
    typer.echo(f"plan {outcome['plan_id']}: {outcome['message']}")
    now = f"goal {outcome['goal_id']} is {outcome['status']}"
    newest = outcome["newest_plan_id"]
    if newest is not None and not newest.startswith(outcome["plan_id"]):  # a short id typed
        now += f"; its revision {outcome['revision']} is plan {outcome['newest_plan_id']}"
    typer.echo(now)


@app.command("approve", short_help="Approve a held plan: the gate signs it and it runs.")
@friendly_errors
def review_approve(
    plan_id: PlanArgument,
    comment: Annotated[str, typer.Option(metavar="TEXT", help="Why (recorded).")] = "",
    expected_hash: HashOption = None,
    server: ServerOption = None,
    token_file: TokenFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Approve PLAN_ID as the reviewer your token names: exactly this revision runs.

    The approval is recorded; the gate checks it against the hold, signs it and releases the
    plan. `plangate status GOAL_ID` shows what came of it.
    """
    access = resolve(server, token_file, deciding=True)
    if access.server:
        body = {"plan_hash": expected_hash, "comment": comment}
        outcome = decide_there(access, plan_id, "approve", body)
    else:
        outcome = decide_here(
            access,
            plan_id,
            lambda r, who: r.approve(
                plan_id,
                who.name,
                expected_hash=expected_hash,
                roles=who.roles,
                comment=comment,
                key=who.token_sha256,
            ),
            lambda review, name: review.approval_said(plan_id, name),
        )
    _print_outcome(outcome, as_json)


@app.command("reject", short_help="Reject a held plan with a comment.")
@friendly_errors
def review_reject(
    plan_id: PlanArgument,
    comment: Annotated[str, typer.Option(metavar="TEXT", help="Why (the planner may use it).")],
    expected_hash: HashOption = None,
    server: ServerOption = None,
    token_file: TokenFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Reject PLAN_ID as the reviewer your token names, saying why; it never runs."""
    access = resolve(server, token_file, deciding=True)
    if access.server:
        body = {"plan_hash": expected_hash, "comment": comment}
        outcome = decide_there(access, plan_id, "reject", body)
    else:
        outcome = decide_here(
            access,
            plan_id,
            lambda r, who: r.reject(
                plan_id, who.name, comment, expected_hash=expected_hash, roles=who.roles
            ),
            lambda _, name: f"rejection by {name} recorded; the plan never runs",
        )
    _print_outcome(outcome, as_json)


def _edit_in_editor(draft: dict[str, Any]) -> dict[str, Any] | None:
    """Open $EDITOR on the draft; return the edited JSON, or None if unchanged."""
    # Not Settings: VISUAL and EDITOR are the user's editor by Unix convention, not plangate's.
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR")
    if editor is None:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):  # vi on a pipe waits for ever
            raise ConfigError(
                "no terminal to edit in and no editor set: pass --file PATH with the edited "
                "plan JSON (`plangate review show PLAN_ID --json` gives the plan), or set EDITOR"
            )
        editor = "vi"
    text = json.dumps(draft, indent=2) + "\n"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "plan.json"
        path.write_text(text, encoding="utf-8")
        result = subprocess.run([*shlex.split(editor), str(path)], check=False)
        if result.returncode != 0:
            raise ConfigError(f"the editor ({editor}) exited with {result.returncode}; no edit")
        try:
            edited = read_text(path)
        except OSError as exc:
            raise ConfigError(f"cannot read the edited plan: {exc.strerror}") from None
    if edited == text:
        return None
    return _parse_edit(edited, "the edited plan")


def _parse_edit(text: str, what: str) -> dict[str, Any]:
    from schemas import MessageRejected, strict_json_loads

    try:
        data = strict_json_loads(text)
    except MessageRejected as exc:
        raise ConfigError(f"{what} is not JSON plangate reads: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise ConfigError(f'{what} must be a JSON object with "steps" (a list) and "summary"')
    extra = sorted(set(data) - {"steps", "summary"})
    if extra:  # silently dropped, a reviewer's change there was lost without a word
        said = ", ".join(f'"{key[:40]}"' for key in extra[:5])
        raise ConfigError(f'{what} holds {said}: an edit has only "summary" and "steps"')
    if all(isinstance(step, dict) for step in data["steps"]):
        from approval_gate.revisions import editable_steps

        # As `review show --json` printed them: what it shows beside a step's fields (its
        # effect, its untrusted inputs) is the catalog's word, not the plan's, and goes.
        data["steps"] = editable_steps(data["steps"])
    return data


def _draft(access: Access, plan_id: str) -> tuple[dict[str, Any], str]:
    """Return the plan's summary and steps as a reviewer edits them, and its hash."""
    if access.server:
        with access.api() as api:
            detail = api.get(path_of(plan_id))
        _still_to_decide(plan_id, detail["goal_status"], None)
        from approval_gate.revisions import editable_steps

        steps = editable_steps(detail["steps"])
        return {"summary": detail["summary"], "steps": steps}, detail["plan_hash"]
    from plangate.store.goals import latest_plan

    with opened_review(access.settings) as (_settings, store, review):
        held = review.get(plan_id)
        with store.reading() as session:
            newest = latest_plan(session, held.goal.id)
    _still_to_decide(
        held.plan.plan_id, held.goal.status, newest.plan_id if newest is not None else None
    )
    draft = {"summary": held.plan.body.get("summary", ""), "steps": held.plan.body["steps"]}
    return draft, held.plan.plan_hash


def _still_to_decide(plan_id: str, goal_status: str, newest_plan_id: str | None) -> None:
    """Refuse, before an editor opens, to edit a plan no longer waiting for review."""
    if newest_plan_id not in (None, plan_id):
        raise Conflict(f"plan {plan_id} was replaced by plan {newest_plan_id}; edit that one")
    if goal_status != "held":
        raise Conflict(f"plan {plan_id} is not waiting for review (the goal is {goal_status})")


@app.command("edit", short_help="Edit a held plan in $EDITOR: a new revision, decided again.")
@friendly_errors
def review_edit(
    plan_id: PlanArgument,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", metavar="PATH", help="Take the edited plan JSON from PATH, not $EDITOR."
        ),
    ] = None,
    comment: Annotated[
        str, typer.Option(help="Why you edit it: recorded with the edit, in the audit log.")
    ] = "",
    server: ServerOption = None,
    token_file: TokenFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Edit PLAN_ID (its steps and summary as JSON) in $EDITOR, then submit the edit.

    The edit becomes the next revision; the policy decides it again, and unless it approves,
    the new revision waits for a reviewer.
    """
    access = resolve(server, token_file, deciding=True)
    if not access.server:
        access.reviewer()  # a wrong token fails before the editor opens
    draft, digest = _draft(access, plan_id)
    if file is not None:
        try:
            given = read_text(file)
        except OSError as exc:
            raise ConfigError(f"cannot read --file {file}: {exc.strerror}") from None
        edited: dict[str, Any] | None = _parse_edit(given, str(file))
    else:
        edited = _edit_in_editor(draft)
    if edited is None or edited == draft:
        err_console.print("no change; nothing submitted")
        return
    steps, summary = edited["steps"], edited.get("summary")
    if access.server:
        body = {"plan_hash": digest, "steps": steps, "summary": summary, "comment": comment}
        outcome = decide_there(access, plan_id, "edit", body)
    else:
        outcome = decide_here(
            access,
            plan_id,
            lambda r, who: r.edit(
                plan_id,
                who.name,
                steps,
                summary=summary,
                expected_hash=digest,
                roles=who.roles,
                comment=comment.strip(),
            ),
            lambda _, name: (
                f"edit by {name} recorded as a new revision; the policy decides it again"
            ),
        )
    _print_outcome(outcome, as_json)
