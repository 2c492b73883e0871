"""`plangate review unsettled|settle`: steps an executor died in the middle of, settled by a person.

A non-idempotent write cut off mid-call may or may not have happened; its run waits until
someone looks and says which (see `approval_gate.settle`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from plangate.cli.common import friendly_errors
from plangate.cli.held_plan_view import console
from plangate.cli.render import shown
from plangate.cli.review import JsonOption, PlanArgument
from plangate.cli.review_access import (
    NO_TOKEN,
    Access,
    ServerOption,
    TokenFileOption,
    no_deployment,
    opened_store,
    path_of,
    publish,
    resolve,
)
from plangate.errors import ConfigError

if TYPE_CHECKING:
    from plangate.store import Store


@friendly_errors
def review_unsettled(
    server: ServerOption = None, token_file: TokenFileOption = None, as_json: JsonOption = False
) -> None:
    """List the steps an executor died in the middle of (non-idempotent writes), oldest first.

    Each one stops its run until a person settles it with `plangate review settle`.
    """
    from approval_gate.settle import unsettled_steps

    access = resolve(server, token_file, deciding=False)
    if access.server:
        with access.api() as api:
            views: list[dict[str, Any]] = api.get("/unsettled")
    else:
        with opened_store(access.settings) as (_settings, store):
            steps = unsettled_steps(store)
        views = [
            {**dataclasses.asdict(s), "since": s.since.isoformat() if s.since else None}
            for s in steps
        ]
    if as_json:
        typer.echo(json.dumps(views))
        return
    if not views:
        typer.echo("no step is waiting to be settled")
        return
    table = Table(title="Steps that may or may not have happened", title_justify="left")
    table.add_column("plan", no_wrap=True)
    for column in ("step", "tool", "goal", "since", "called with"):
        table.add_column(column, overflow="fold")
    for view in views:
        since = (view["since"] or "")[:19]
        cells = (view["plan_id"], view["step_id"], view["tool"], view["goal_text"][:60], since)
        # Anyone's goal text; the arguments a planner's (a model's) and outputs' words.
        table.add_row(*(shown(cell) for cell in (*cells, _called_with(view))))
    console.print(table)
    console.print(
        "Check whether each happened, then: plangate review settle PLAN STEP "
        "--happened | --not-happened",
        style="dim",
    )


def _called_with(view: dict[str, Any]) -> str:
    """Say what a write was called with: what to ask the other system whether it happened."""
    key, args = view.get("idempotency_key"), view.get("args")
    if key is None and args is None:
        return "not known"
    said = f"key {key}" if key is not None else ""
    if args is None:
        return said
    text = json.dumps(args, sort_keys=True)
    if len(text) > ARGS_SHOWN:  # a plan's arguments may fill 256 KiB: 2,000 lines of a table
        text = f"{text[:ARGS_SHOWN]}… ({len(text)} characters; --json shows all)"
    return f"{said} args {text}"


ARGS_SHOWN = 300  # characters of a write's arguments a table row shows


@friendly_errors
def review_settle(
    plan_id: PlanArgument,
    step_id: Annotated[str, typer.Argument(metavar="STEP_ID")],
    happened: Annotated[
        bool | None,
        typer.Option(
            "--happened/--not-happened",
            help="It happened (recorded as succeeded, not run again), or it did not "
            "(it runs once more when the run resumes).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            metavar="JSON", help="With --happened: the step's output, if later steps use it."
        ),
    ] = None,
    comment: Annotated[str, typer.Option(metavar="TEXT", help="What you found (recorded).")] = "",
    server: ServerOption = None,
    token_file: TokenFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Settle STEP_ID of PLAN_ID, which an executor died in the middle of.

    Look first (did the card get charged? did the page go out?), then say --happened or
    --not-happened. When no step of the plan is left unknown, its run resumes where it stopped.
    """
    from approval_gate.settle import SETTLED_IN
    from schemas import MessageRejected, strict_json_loads

    if happened is None:
        raise ConfigError("say what you found: --happened or --not-happened")
    if output is not None and not happened:
        raise ConfigError("--output goes with --happened: a step that did not happen has none")
    try:
        value = None if output is None else strict_json_loads(output.encode())
    except MessageRejected as exc:
        raise ConfigError(f"--output is not valid JSON: {exc.reason}") from None
    # A cancelled goal's step is only recorded: that needs no deployment (checked below).
    access = resolve(server, token_file, deciding=False)
    if access.token is None:
        raise ConfigError(NO_TOKEN)
    found = {"happened": happened, "output": value, "comment": comment}
    settle = _settle_there if access.server else _settle_here
    status = settle(access, plan_id, step_id, found)
    if as_json:
        verdict = {"plan_id": plan_id, "step_id": step_id, "happened": happened}
        typer.echo(json.dumps({**verdict, "resumed": status not in (*SETTLED_IN, "")}))
        return
    said = {
        "needs_attention": "other steps still wait to be settled",
        "cancelled": "its goal was cancelled, so nothing resumes",
    }
    typer.echo(f"plan {plan_id}: step {step_id} settled; {said.get(status, 'the run resumes')}")


def _settle_there(access: Access, plan_id: str, step_id: str, found: dict[str, Any]) -> str:
    """Settle through the server; return the goal's status then."""
    with access.api() as api:
        outcome = api.post(path_of(plan_id, "steps", step_id, "settle"), found)
    return str(outcome["status"])


def _settle_here(access: Access, plan_id: str, step_id: str, found: dict[str, Any]) -> str:
    """Settle in the store as the reviewer the token names; return the goal's status then."""
    from approval_gate.settle import settle_step

    if "broker_url" not in access.settings.model_fields_set and not _cancelled(access, plan_id):
        # Its run resumes once settled: only a deployment's executor carries it on.
        raise ConfigError(no_deployment("deciding"))
    reviewer = access.reviewer()
    with opened_store(access.settings) as (settings, store):
        envelopes = settle_step(
            store, plan_id, step_id, reviewer.name, roles=reviewer.roles, **found
        )
        publish(settings, store, envelopes)
        return _goal_status(store, plan_id) or ""


def _cancelled(access: Access, plan_id: str) -> bool:
    """Say whether the goal of plan `plan_id` in the store is cancelled (no store: False)."""
    try:
        with opened_store(access.settings) as (_settings, store):
            return _goal_status(store, plan_id) == "cancelled"
    except ConfigError:  # no store here
        return False


def _goal_status(store: Store, plan_id: str) -> str | None:
    """Return the status of the goal of the plan `plan_id` names (a short id too), if any."""
    from plangate.store import GoalRow, PlanRow
    from plangate.store.goals import by_id

    with store.reading() as session:
        plan = by_id(session, PlanRow, PlanRow.plan_id, plan_id, typed=True)
        return None if plan is None else session.get_one(GoalRow, plan.goal_id).status


def register(review: typer.Typer) -> None:
    """Add `unsettled` and `settle` to the `plangate review` group."""
    review.command("unsettled", short_help="List steps that may or may not have happened.")(
        review_unsettled
    )
    review.command("settle", short_help="Say whether an unknown step happened; the run resumes.")(
        review_settle
    )
