"""`plangate review`: held plans from the terminal — list, show, approve, reject, edit.

Settling steps that may or may not have happened (`unsettled`, `settle`) is in `settle.py`.

It works on the store and broker named by the settings (the distributed mode): a decision is
recorded in the store and its messages are published to the workers.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from plangate.cli.common import err_console, friendly_errors, group, load_settings
from plangate.errors import ConfigError

if TYPE_CHECKING:
    from approval_gate.review import HeldPlan, Review
    from plangate.bus import Envelope
    from plangate.config import Settings
    from plangate.store import Store
    from schemas import Catalog

app = group(
    "Review held plans (list, show, approve, reject, edit) and settle steps that may or may "
    "not have happened (unsettled, settle)."
)
console = Console(highlight=False, soft_wrap=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
ReviewerOption = Annotated[
    str, typer.Option("--reviewer", metavar="NAME", help="Who decides (recorded).")
]
RoleOption = Annotated[
    list[str] | None,
    typer.Option("--role", metavar="ROLE", help="A role you hold, e.g. finance (repeatable)."),
]
HashOption = Annotated[
    str | None,
    typer.Option("--hash", metavar="HASH", help="The plan hash you reviewed; refused if changed."),
]
PlanArgument = Annotated[str, typer.Argument(metavar="PLAN_ID")]
DEFAULT_REVIEWER = "user@terminal"


@contextmanager
def opened_store() -> Iterator[tuple[Settings, Store]]:
    """Open the store the settings name; closed when the block ends."""
    from plangate.store import open_store

    settings = load_settings()
    store = open_store(settings.resolved_database_url())
    try:
        yield settings, store
    finally:
        store.close()


@contextmanager
def _review() -> Iterator[tuple[Settings, Store, Review]]:
    from plangate.stages import build_review

    with opened_store() as (settings, store):
        yield settings, store, build_review(settings, store)


def publish(settings: Settings, store: Store, envelopes: Sequence[Envelope]) -> None:
    """Publish what a decision committed to the outbox, to the broker the settings name."""
    from plangate.bus import Bus
    from plangate.relay import deliver

    bus = Bus(settings.broker_url, settings.namespace)
    try:
        if not deliver(store, bus, envelopes):
            err_console.print(
                "[yellow]warning:[/] the broker is unreachable; the "
                "decision is recorded, and a running worker sends it on once the broker is back"
            )
    finally:
        bus.close()


def held_json(held: HeldPlan) -> dict[str, Any]:
    """Return what a reviewer sees of a held plan, as JSON."""
    from approval_gate.review import plan_diff

    decision = held.policy_decision
    return {
        "plan_id": held.plan.plan_id,
        "goal_id": held.goal.id,
        "goal_text": held.goal.text,
        "status": held.goal.status,
        "revision": held.plan.revision,
        "plan_hash": held.plan.plan_hash,
        "planner": held.plan.planner,
        "summary": held.plan.body.get("summary", ""),
        "steps": held.plan.body.get("steps", []),
        "decision": None
        if decision is None
        else {
            "action": decision.action,
            "rule": decision.rule,
            "reason": decision.reason,
            "decided_by": decision.decided_by,
            "policy_version": decision.policy_version,
            "shadow_action": decision.shadow_action,
        },
        "required_role": held.required_role,
        "expires_at": held.expires_at.isoformat() if held.expires_at else None,
        "previous": None
        if held.previous is None
        else {
            "plan_id": held.previous.plan_id,
            "revision": held.previous.revision,
            "plan_hash": held.previous.plan_hash,
        },
        "diff": plan_diff(held.previous, held.plan),
        "preview_state": held.preview_state,
        "preview": None
        if held.preview is None
        else [step.model_dump(mode="json") for step in held.preview],
    }


def _steps_table(view: dict[str, Any], catalog: Catalog) -> Table:
    table = Table(
        title=f"Plan {view['plan_id']} · revision {view['revision']} · by {view['planner']}",
        caption=view["summary"] or None,
        title_justify="left",
    )
    for column in ("step", "tool", "effect", "args", "when"):
        table.add_column(column, overflow="fold")
    for step in view["steps"]:
        spec = catalog.get(step["tool"])
        effect = spec.effect if spec else "unknown"
        args = json.dumps(step.get("args") or {}, separators=(",", ":"))
        table.add_row(
            step["id"],
            step["tool"],
            Text(effect, style="yellow" if effect != "read" else "cyan"),
            args if args != "{}" else "",
            step.get("when") or "",
        )
    return table


def _show(view: dict[str, Any], catalog: Catalog) -> None:
    from plangate.cli import render
    from schemas import StepPreview

    console.print(Text(f"Goal {view['goal_id']} ({view['status']}): ", style="bold"), end="")
    console.print(Text(view["goal_text"], style="dim"), "  [dim](untrusted text)[/]")
    console.print(_steps_table(view, catalog))
    decision = view["decision"]
    if decision:
        by = f"rule {decision['rule']}" if decision["rule"] else decision["decided_by"]
        console.print(f"Policy: [bold]{decision['action']}[/] by {by} — {decision['reason']}")
    if view["required_role"]:
        console.print(f"Requires the role: [bold]{view['required_role']}[/]")
    if view["expires_at"]:
        console.print(f"Expires at {view['expires_at']}")
    if view["preview"] is not None:
        steps = [StepPreview.model_validate(step) for step in view["preview"]]
        console.print(render.preview_table(steps))
    elif view["preview_state"] == "waiting":
        console.print("Preview: asked of an executor, not ready yet", style="dim")
    console.print(f"Hash {view['plan_hash']}", style="dim")
    if view["diff"]:
        console.print(f"Changes since revision {view['previous']['revision']}:")
        console.print(Syntax(view["diff"], "diff", theme="ansi_dark", background_color="default"))


@app.command("list", short_help="List the plans waiting for a person.")
@friendly_errors
def review_list(as_json: JsonOption = False) -> None:
    """List the plans waiting for a person, oldest first."""
    with _review() as (_settings, _store, review):
        views = [held_json(held) for held in review.held()]
    if as_json:
        typer.echo(json.dumps(views))
        return
    if not views:
        typer.echo("no plans are waiting for review")
        return
    table = Table(title="Held plans", title_justify="left")
    table.add_column("plan", no_wrap=True)
    for column in ("rev", "goal", "steps", "rule", "reason", "expires"):
        table.add_column(column, overflow="fold")
    for view in views:
        decision = view["decision"] or {}
        table.add_row(
            view["plan_id"],
            str(view["revision"]),
            view["goal_text"][:60],
            ", ".join(step["tool"] for step in view["steps"]),
            decision.get("rule") or "",
            decision.get("reason") or "",
            (view["expires_at"] or "")[:19],
        )
    console.print(table)


@app.command("show", short_help="Show a plan: steps, the policy's decision, the diff.")
@friendly_errors
def review_show(plan_id: PlanArgument, as_json: JsonOption = False) -> None:
    """Show a plan: its steps, what the policy said, and the diff to the previous revision."""
    from plangate.catalog import load_catalog

    with _review() as (_settings, store, review):
        view = held_json(review.get(plan_id))
        catalog = load_catalog(store)
    if as_json:
        typer.echo(json.dumps(view))
    else:
        _show(view, catalog)


def _decide(
    action: str,
    plan_id: str,
    as_json: bool,
    call: Callable[[Review], Sequence[Envelope]],
) -> None:
    with _review() as (settings, store, review):
        envelopes = call(review)
        publish(settings, store, envelopes)
    if as_json:
        kinds = [envelope.routing_key for envelope in envelopes]
        typer.echo(json.dumps({"plan_id": plan_id, "action": action, "published": kinds}))
    else:
        typer.echo(f"plan {plan_id}: {action}")


@app.command("approve", short_help="Approve a held plan: it runs.")
@friendly_errors
def review_approve(
    plan_id: PlanArgument,
    comment: Annotated[str, typer.Option(metavar="TEXT", help="Why (recorded).")] = "",
    reviewer: ReviewerOption = DEFAULT_REVIEWER,
    role: RoleOption = None,
    expected_hash: HashOption = None,
    as_json: JsonOption = False,
) -> None:
    """Approve PLAN_ID as --reviewer: exactly this revision runs."""
    roles = frozenset(role or [])
    _decide(
        "approved",
        plan_id,
        as_json,
        lambda r: r.approve(
            plan_id, reviewer, expected_hash=expected_hash, roles=roles, comment=comment
        ),
    )


@app.command("reject", short_help="Reject a held plan with a comment.")
@friendly_errors
def review_reject(
    plan_id: PlanArgument,
    comment: Annotated[str, typer.Option(metavar="TEXT", help="Why (the planner may use it).")],
    reviewer: ReviewerOption = DEFAULT_REVIEWER,
    role: RoleOption = None,
    expected_hash: HashOption = None,
    as_json: JsonOption = False,
) -> None:
    """Reject PLAN_ID as --reviewer, saying why; it never runs."""
    roles = frozenset(role or [])
    _decide(
        "rejected",
        plan_id,
        as_json,
        lambda r: r.reject(plan_id, reviewer, comment, expected_hash=expected_hash, roles=roles),
    )


def _edit_in_editor(draft: dict[str, Any]) -> dict[str, Any] | None:
    """Open $EDITOR on the draft; return the edited JSON, or None if unchanged."""
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    text = json.dumps(draft, indent=2) + "\n"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "plan.json"
        path.write_text(text, encoding="utf-8")
        result = subprocess.run([*shlex.split(editor), str(path)], check=False)
        if result.returncode != 0:
            raise ConfigError(f"the editor ({editor}) exited with {result.returncode}; no edit")
        edited = path.read_text(encoding="utf-8")
    if edited == text:
        return None
    return _parse_edit(edited, "the edited plan")


def _parse_edit(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{what} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise ConfigError(f'{what} must be a JSON object with "steps" (a list) and "summary"')
    return data


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
    reviewer: ReviewerOption = DEFAULT_REVIEWER,
    role: RoleOption = None,
    as_json: JsonOption = False,
) -> None:
    """Edit PLAN_ID (its steps and summary as JSON) in $EDITOR, then submit the edit.

    The edit becomes the next revision; the policy decides it again, and unless it approves,
    the new revision waits for a reviewer.
    """
    with _review() as (_settings, _store, review):
        held = review.get(plan_id)
    draft = {"summary": held.plan.body.get("summary", ""), "steps": held.plan.body["steps"]}
    if file is not None:
        edited: dict[str, Any] | None = _parse_edit(file.read_text(encoding="utf-8"), str(file))
    else:
        edited = _edit_in_editor(draft)
    if edited is None or edited == draft:
        err_console.print("no change; nothing submitted")
        return
    roles = frozenset(role or [])
    _decide(
        "edited",
        plan_id,
        as_json,
        lambda r: r.edit(
            plan_id,
            reviewer,
            edited["steps"],
            summary=edited.get("summary"),
            expected_hash=held.plan.plan_hash,
            roles=roles,
        ),
    )
