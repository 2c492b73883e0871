"""`plangate review unsettled|settle`: steps an executor died in the middle of, settled by a person.

A non-idempotent write cut off mid-call may or may not have happened; its run waits until
someone looks and says which (see `approval_gate.settle`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from plangate.cli.common import err_console, friendly_errors
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
from plangate.errors import ConfigError, NotFound
from plangate.unknown_calls import since_text, through

if TYPE_CHECKING:
    from plangate.store import Store


@friendly_errors
def review_unsettled(
    server: ServerOption = None, token_file: TokenFileOption = None, as_json: JsonOption = False
) -> None:
    """List the steps an executor died in the middle of (non-idempotent writes), oldest first.

    Each one stops its run until a person settles it with `plangate review settle`.
    """
    access = resolve(server, token_file, deciding=False)
    views = _unsettled_views(access)
    if as_json:
        typer.echo(json.dumps(views))
        return
    if not views:
        typer.echo("no step is waiting to be settled")
        return
    # One block per step, not a table: a plan id, a since to the microsecond and a write's
    # arguments in six columns wrapped to 6-character fragments at 80 columns ("amoun / t").
    console.print(f"{len(views)} step(s) may or may not have happened; check each, then settle it:")
    for view in views:
        _print_unsettled(view, access.server)


def _print_unsettled(view: dict[str, Any], server: str | None) -> None:
    """Print one unknown step: what to ask the other system, and the command that settles it."""
    since = view["since"] or "SINCE"  # whole: `review settle --since` takes it back
    # Anyone's goal text; the arguments a planner's (a model's) and outputs' words.
    console.print(
        f"\nplan {shown(view['plan_id'])} · step {shown(view['step_id'])} "
        f"({shown(view['tool'])}), unknown since {shown(since)}"
    )
    console.print(f"  goal: {shown(view['goal_text'][:200])}")
    console.print(f"  called with: {shown(_called_with(view))}")
    for line in _keys_unrecorded(view):
        console.print(f"  {shown(line)}")
    # Through the server this list came from: given as --server, the command printed
    # without it failed when run as printed.
    command = through(
        f"plangate review settle {view['plan_id'][:8]} {view['step_id']} --since {since}", server
    )
    console.print(f"  settle: {shown(command)} --happened | --not-happened", style="dim")


def _unsettled_views(access: Access) -> list[dict[str, Any]]:
    """Return the unknown steps as the API lists them, through the server or from the store."""
    from approval_gate.settle import unsettled_steps

    if access.server:
        with access.api() as api:
            listed: list[dict[str, Any]] = api.get("/unsettled")
            return listed
    with opened_store(access.settings) as (_settings, store):
        steps = unsettled_steps(store)
    return [
        {**dataclasses.asdict(s), "since": since_text(s.since) if s.since else None} for s in steps
    ]


def _keys_unrecorded(view: dict[str, Any]) -> list[str]:
    """Say each key a write claimed before 0015 may have been called with, and whose it is."""
    candidates = view.get("candidate_keys") or []
    if not candidates:
        return []
    said = ["its key was not recorded (claimed before 0015); ask the other system by each:"]
    said += [f"  key {c['key']} if called by {c['made_by']}" for c in candidates]
    return [*said, f"  called again under {candidates[-1]['key']} if it did not happen"]


def _called_with(view: dict[str, Any]) -> str:
    """Say what a write was called with: what to ask the other system whether it happened."""
    key, args = view.get("idempotency_key"), view.get("args")
    if view.get("candidate_keys"):
        key = None  # not known: `_keys_unrecorded` names each it may be
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
    since: Annotated[
        str | None,
        typer.Option(
            metavar="TIME",
            help="The call you checked: its since, as `plangate review unsettled` prints it. "
            "Refused if the step was settled and called again since. Without it, a terminal "
            "shows the call unknown now and asks.",
            show_default=False,
        ),
    ] = None,
    server: ServerOption = None,
    token_file: TokenFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Settle STEP_ID of PLAN_ID, which an executor died in the middle of.

    Look first (did the card get charged? did the page go out?), then say --happened or
    --not-happened, naming the call you checked (--since). When no step of the plan is left
    unknown, its run resumes where it stopped.
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
    if not access.server and not _deployed(access, plan_id):
        # Its run resumes once settled: only a deployment's executor carries it on.
        raise ConfigError(no_deployment("deciding"))
    checked = _call_checked(access, plan_id, step_id, since)
    found = {"happened": happened, "output": value, "comment": comment, "unknown_since": checked}
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
    resumes = "the run resumes" + ("" if happened else f", calling {step_id} once more")
    what = "happened" if happened else "did not happen"
    typer.echo(f"plan {plan_id}: step {step_id} settled as {what}; {said.get(status, resumes)}")


def _call_checked(access: Access, plan_id: str, step_id: str, since: str | None) -> datetime:
    """Return the `since` of the call the person checked: given, or shown and confirmed.

    A settle names its call: settled "did not happen", a step is called again and may be
    unknown again, and a command run twice (or from a script's history) settled the later
    call, which nobody had checked, so that the write ran once more.
    """
    if since is not None:
        return _parsed_since(since)
    now = _unknown_now(access, plan_id, step_id)
    shown_since = since_text(_parsed_since(str(now["since"])))
    if not sys.stdin.isatty():
        raise ConfigError(
            f"name the call you checked: add --since {shown_since} (the call of step "
            f"{step_id} unknown now, {_called_with(now)}) if that is the one you checked"
        )
    said = f"step {step_id} of plan {now['plan_id']}: the call unknown now is since {shown_since}"
    err_console.print(shown(f"{said}, {_called_with(now)}"))
    typer.confirm("Is it the call you checked?", abort=True, err=True)
    return _parsed_since(shown_since)


def _unknown_now(access: Access, plan_id: str, step_id: str) -> dict[str, Any]:
    """Return the listed call of `step_id` of the plan `plan_id` names (a short id too)."""
    views = _unsettled_views(access)
    matching = [v for v in views if v["step_id"] == step_id and v["plan_id"] == plan_id] or [
        v for v in views if v["step_id"] == step_id and v["plan_id"].startswith(plan_id)
    ]
    if len(matching) != 1 or matching[0]["since"] is None:
        raise NotFound(
            f"no call of step {step_id!r} of plan {plan_id} waits to be settled; "
            "`plangate review unsettled` lists those that do"
        )
    return matching[0]


def _parsed_since(text: str) -> datetime:
    """Return the time --since gives; ConfigError if it is not one with its time zone."""
    try:
        since = datetime.fromisoformat(text.strip())
    except ValueError:
        since = None
    if since is None or since.tzinfo is None:
        raise ConfigError(
            f"--since {text!r} is not a time with its zone: give it whole, as "
            "`plangate review unsettled` prints it (e.g. 2026-05-01T09:30:00.123456Z)"
        )
    return since


def _settle_there(access: Access, plan_id: str, step_id: str, found: dict[str, Any]) -> str:
    """Settle through the server; return the goal's status then."""
    body = {**found, "unknown_since": since_text(found["unknown_since"])}
    with access.api() as api:
        outcome = api.post(path_of(plan_id, "steps", step_id, "settle"), body)
    return str(outcome["status"])


def _settle_here(access: Access, plan_id: str, step_id: str, found: dict[str, Any]) -> str:
    """Settle in the store as the reviewer the token names; return the goal's status then."""
    from approval_gate.settle import settle_step

    reviewer = access.reviewer()
    with opened_store(access.settings) as (settings, store):
        envelopes = settle_step(
            store, plan_id, step_id, reviewer.name, roles=reviewer.roles, **found
        )
        publish(settings, store, envelopes)
        return _goal_status(store, plan_id) or ""


def _deployed(access: Access, plan_id: str) -> bool:
    """Say whether settling in the store reaches what carries the run on, if anything does."""
    return "broker_url" in access.settings.model_fields_set or _cancelled(access, plan_id)


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
