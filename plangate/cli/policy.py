"""`plangate policy`: check a policy file, and see what it decides of a plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from plangate.cli.common import EXIT_FAILED, err_console, friendly_errors, group, load_settings
from plangate.cli.policy_show import policy_show
from plangate.cli.progress import Progress
from plangate.errors import ConfigError
from plangate.printable import printable_line
from plangate.small_files import read_text

app = group("Check a policy file and try it on a plan.")

app.command("show", short_help="Print the text the audit log recorded of a policy version.")(
    friendly_errors(policy_show)
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
FileArgument = Annotated[Path, typer.Argument(metavar="FILE", help="The policy YAML file.")]
ToolsOption = Annotated[
    str | None,
    typer.Option(metavar="MODULES", help="Tool modules for the catalog (default: the store)."),
]


@app.command("check", short_help="Compile every rule of a policy file.")
@friendly_errors
def policy_check(
    file: FileArgument,
    tools: ToolsOption = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when there is a warning (for CI).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Load FILE and compile every rule; an error names the rule and its line (exit 2).

    Then warn of what a rule names that the deployment does not have, where it is known: a
    tool or tag the catalog lacks (a typo never matches: a deny rule then denies nothing),
    a role no reviewer has or more approvals than reviewers (PLANGATE_REVIEWERS_FILE). The
    catalog is the store's, or with --tools those modules' tools.
    """
    from approval_gate.policy import Policy
    from plangate.errors import PolicyError

    try:
        policy = Policy.load(file)
    except PolicyError as exc:
        if as_json:  # a CI step parsing the answer gets one, saying what is wrong
            typer.echo(json.dumps({"ok": False, "error": str(exc)}))
        raise
    warnings = _warnings(policy, tools)
    if as_json:
        rules = [
            {
                "name": rule.name,
                "action": rule.action,
                "line": rule.line,
                "requires_role": rule.requires_role,
                "hold_ttl_seconds": rule.hold_ttl_seconds,
                "work_bounded": rule.cost.bounded,
            }
            for rule in policy.rules
        ]
        body = {"ok": True, "version": policy.version, "mode": policy.mode, "rules": rules}
        typer.echo(json.dumps({**body, "warnings": warnings}))
        if strict and warnings:
            raise typer.Exit(EXIT_FAILED)
        return
    typer.echo(
        f"{file}: {len(policy.rules)} rules compile; mode {policy.mode}, version {policy.version}"
    )
    for rule in policy.rules:
        if rule.cost.bounded:
            typer.echo(
                printable_line(
                    f"note: rule {rule.name!r} (line {rule.line}) may cost more than a step "
                    "per value of a plan (nested comprehensions, a scan, a map or filter, or a "
                    "regex); a plan too large for it is held for a person, not evaluated"
                )
            )
    if policy.mode == "shadow" and any(rule.action == "deny" for rule in policy.rules):
        typer.echo(
            "note: mode shadow holds every plan for a person, and a plan a deny rule catches "
            "may be approved by any reviewer (a deny rule asks no role)"
        )
    for warning in warnings:
        typer.echo(printable_line(f"warning: {warning}"))
    if strict and warnings:
        raise typer.Exit(EXIT_FAILED)


def _warnings(policy: Any, tools: str | None) -> list[str]:
    """Return what the policy names that the catalog and reviewers lack, where known.

    What cannot be checked here (no store and no --tools, a reviewers file that cannot be
    read) is said as a note: the check of the policy itself does not depend on it.
    """
    from approval_gate.policy_lint import policy_warnings
    from plangate.reviewers import Reviewers

    catalog = _catalog(tools) if tools is not None else _store_catalog()
    if catalog is None:
        err_console.print(
            "note: tool and tag names not checked: no store to read the catalog from; pass "
            "--tools MODULES",
            markup=False,
            highlight=False,
        )
    path = load_settings().reviewers_file
    reviewers = None
    if path is not None:
        try:
            reviewers = Reviewers.from_file(path)
        except ConfigError as exc:
            said = printable_line(f"note: holds not checked against the reviewers: {exc}")
            err_console.print(said, markup=False, highlight=False)
    warnings: list[str] = policy_warnings(policy, catalog, reviewers)
    return warnings


def _read_plan(path: Path) -> Any:
    from schemas import MessageRejected, strict_json_loads

    try:
        # Read as a message's plan is: a file from a planner's output is as untrusted.
        data = strict_json_loads(read_text(path))
    except OSError as exc:
        raise ConfigError(f"cannot read the plan {path}: {exc.strerror}") from exc
    except MessageRejected as exc:
        raise ConfigError(f"{path} is not JSON plangate reads: {exc}") from exc
    return _plan_of(data, str(path))


def _plan_of(data: Any, where: str) -> Any:
    from pydantic import ValidationError

    from schemas import Plan

    if isinstance(data, list):  # the steps alone, as the help says a plan may be given
        data = {"steps": data}
    if isinstance(data, dict):  # a draft of steps is enough: name it for the test
        data = {"plan_id": "policy-test", "goal_id": "policy-test", "revision": 1} | data
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        problem = exc.errors()[0]
        at = ".".join(str(part) for part in problem["loc"]) or "plan"
        raise ConfigError(f"{where} is not a plan: {at}: {problem['msg']}") from exc


Expectation = Annotated[
    str | None,
    typer.Option(
        "--expect",
        metavar="ACTION",
        help="approve, deny or hold: exit 1 if the policy decides otherwise (for CI).",
    ),
]


@app.command("test", short_help="Show what a policy decides of a plan, or run its tests.")
@friendly_errors
def policy_test(
    file: FileArgument,
    plan_file: Annotated[
        Path | None,
        typer.Argument(metavar="PLAN.json", help="A plan (or its steps); omit to run tests:."),
    ] = None,
    expect: Expectation = None,
    tools: ToolsOption = None,
    goal: Annotated[str, typer.Option(metavar="TEXT", help="The goal text rules see.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Decide PLAN.json with the policy in FILE: the decision, the matching rule, the reason.

    With --expect, exit 1 when the decision differs. Without PLAN.json, run the `tests:` the
    policy file carries (each a plan, a goal and the decision expected) and exit 1 if any
    fails. The tool catalog is the store's (what executors published) or, with --tools, the
    tools of those modules. A plan invalid for the catalog is denied, as the gate would.
    `history.count` and `history.sum` see no earlier approvals here (0), so that tests decide
    alike anywhere; `policy backtest` replays a policy over the store's real record.
    """
    from approval_gate.history import no_history
    from approval_gate.policy import Policy

    if expect is not None and expect not in ("approve", "deny", "hold"):
        raise typer.BadParameter(f"--expect {expect}: say approve, deny or hold")
    policy = Policy.load(file)
    for warning in _warnings(policy, tools):
        err_console.print(printable_line(f"warning: {warning}"), markup=False, highlight=False)
    if plan_file is None:
        _run_policy_tests(policy, _catalog(tools), as_json)
        return
    plan = _read_plan(plan_file)
    decision = policy.decide_as_gate(plan, _catalog(tools), goal, history=no_history(plan))
    if as_json:
        typer.echo(decision.model_dump_json())
    else:
        _print_decision(policy, decision)
    if expect is not None and decision.action != expect:
        err_console.print(f"[red]expected {expect}[/], but the policy decides {decision.action}")
        raise typer.Exit(EXIT_FAILED)


def _print_decision(policy: Any, decision: Any) -> None:
    typer.echo(f"decision: {decision.action}")
    typer.echo(f"rule: {decision.rule or '(none)'}")
    typer.echo(f"reason: {decision.reason}")
    if decision.shadow_action:
        typer.echo(f"shadow: would {decision.shadow_action}")
    if decision.action == "hold" and (asks := policy.hold_terms(decision).said()):
        typer.echo(f"a reviewer needs:{asks}")  # the strictest of each rule it was held for


def _run_policy_tests(policy: Any, catalog: Any, as_json: bool) -> None:
    from approval_gate.history import no_history

    if not policy.tests:
        raise ConfigError(f"{policy.source} has no tests: section; pass a PLAN.json to decide")
    results = []
    for case in policy.tests:
        plan = _plan_of(case.plan, f"test {case.name!r}")
        history = no_history(plan, case.metadata)
        decision = policy.decide_as_gate(plan, catalog, case.goal, case.metadata, history)
        results.append((case, decision, decision.action == case.expect))
    failed = [case.name for case, _, passed in results if not passed]
    if as_json:
        rows = [
            {"name": c.name, "expect": c.expect, "decision": d.action, "rule": d.rule, "ok": ok}
            for c, d, ok in results
        ]
        typer.echo(json.dumps({"ok": not failed, "tests": rows}))
    else:
        for case, decision, passed in results:
            said = f"{decision.action} (rule {decision.rule or '(none)'})"
            # A test's name and a decision's reason are the file's text: shown, not obeyed.
            if passed:
                typer.echo(printable_line(f"ok    {case.name}: {said}"))
            else:
                typer.echo(
                    printable_line(
                        f"FAIL  {case.name}: expected {case.expect}, got {said}: {decision.reason}"
                    )
                )
        typer.echo(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if failed:
        raise typer.Exit(EXIT_FAILED)


@app.command("backtest", short_help="Replay a candidate policy over the recorded plans.")
@friendly_errors
def policy_backtest(
    file: FileArgument,
    since: Annotated[
        str | None,
        typer.Option(metavar="WHEN", help="Only plans from then: an ISO time, or 7d, 12h, 30m."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, metavar="N", help="At most N plans (oldest first).")
    ] = None,
    tools: Annotated[
        str | None,
        typer.Option(metavar="MODULES", help="Tool modules for the catalog (default: the store)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Decide every plan the store recorded with the policy in FILE; show what would change.

    Prints how many decisions were replayed, how many would change and how (approve -> hold,
    hold -> deny ...), and each changed plan. Read-only: nothing is recorded or sent.
    """
    from approval_gate.backtest import backtest
    from approval_gate.policy import Policy
    from plangate.store import open_store
    from plangate.store.goal_list import parse_since

    candidate = Policy.load(file)
    start = parse_since(since) if since is not None else None
    # The store first: a backtest needs one whatever the catalog, and a missing one was told
    # "or pass --tools", which did not help.
    store = open_store(load_settings().resolved_database_url(), upgrade=False)
    try:
        catalog = _catalog(tools)
        with Progress(err_console, "replaying", "plans", enabled=not as_json) as told:
            report = backtest(store, candidate, catalog, since=start, limit=limit, progress=told)
    finally:
        store.close()
    if as_json:
        changes = [vars(change) for change in report.changes]
        body = {"replayed": report.replayed, "changed": len(changes), "changes": changes}
        typer.echo(json.dumps(body))
        return
    typer.echo(
        f"{report.replayed} decisions replayed with {file}; {len(report.changes)} would change"
    )
    for shift, count in report.shifts.most_common():
        typer.echo(f"  {shift}: {count}")
    for change in report.changes:
        typer.echo(
            f"  goal {change.goal_id} plan {change.plan_id}: {change.was} -> {change.now}"
            f" (rule {change.rule_now or '(none)'}: {change.reason_now})"
        )


def _catalog(tools: str | None) -> Any:
    if tools is not None:
        from plangate.tools import load_tools

        return load_tools([name.strip() for name in tools.split(",") if name.strip()]).catalog()
    try:
        catalog = _store_catalog(required=True)
    except ConfigError as exc:  # no store to take the catalog from
        raise ConfigError(f"{exc}; or pass --tools to test with those modules' tools") from exc
    if not catalog:
        raise ConfigError("the store has no tool catalog yet (no executor ran); pass --tools")
    return catalog


def _store_catalog(*, required: bool = False) -> Any:
    """Return the store's catalog; without `required`, None where there is no store."""
    from plangate.catalog import load_catalog
    from plangate.store import open_store

    try:
        store = open_store(load_settings().resolved_database_url(), upgrade=False, create=False)
    except ConfigError:
        if required:
            raise
        return None
    try:
        return load_catalog(store)
    finally:
        store.close()
