"""`plangate policy`: check a policy file, and see what it decides of a plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from plangate.cli.common import friendly_errors, group, load_settings
from plangate.errors import ConfigError

app = group("Check a policy file and try it on a plan.")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
FileArgument = Annotated[Path, typer.Argument(metavar="FILE", help="The policy YAML file.")]


@app.command("check", short_help="Compile every rule of a policy file.")
@friendly_errors
def policy_check(file: FileArgument, as_json: JsonOption = False) -> None:
    """Load FILE and compile every rule; an error names the rule and its line (exit 2)."""
    from approval_gate.policy import Policy

    policy = Policy.load(file)
    if as_json:
        rules = [
            {
                "name": rule.name,
                "action": rule.action,
                "line": rule.line,
                "requires_role": rule.requires_role,
                "hold_ttl_seconds": rule.hold_ttl_seconds,
            }
            for rule in policy.rules
        ]
        body = {"ok": True, "version": policy.version, "mode": policy.mode, "rules": rules}
        typer.echo(json.dumps(body))
        return
    typer.echo(
        f"{file}: {len(policy.rules)} rules compile; mode {policy.mode}, version {policy.version}"
    )


def _read_plan(path: Path) -> Any:
    from pydantic import ValidationError

    from schemas import Plan

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the plan {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path} is not JSON: {exc}") from exc
    if isinstance(data, dict):  # a draft of steps is enough: name it for the test
        data = {"plan_id": "policy-test", "goal_id": "policy-test", "revision": 1} | data
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "plan"
        raise ConfigError(f"{path} is not a plan: {where}: {problem['msg']}") from exc


@app.command("test", short_help="Show what a policy decides of a plan, and why.")
@friendly_errors
def policy_test(
    file: FileArgument,
    plan_file: Annotated[Path, typer.Argument(metavar="PLAN.json", help="A plan (or its steps).")],
    tools: Annotated[
        str | None,
        typer.Option(metavar="MODULES", help="Tool modules for the catalog (default: the store)."),
    ] = None,
    goal: Annotated[str, typer.Option(metavar="TEXT", help="The goal text rules see.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Decide PLAN.json with the policy in FILE: the decision, the matching rule, the reason.

    The tool catalog is the store's (what executors published) or, with --tools, the tools of
    those modules. A plan invalid for the catalog is denied, as the gate would.
    """
    from approval_gate.policy import Policy
    from schemas import Decision, PlanInvalid, validate_plan

    policy = Policy.load(file)
    plan = _read_plan(plan_file)
    catalog = _catalog(tools)
    try:
        validate_plan(plan, catalog)
    except PlanInvalid as invalid:
        decision = Decision(
            action="deny", decided_by="gate", reason=str(invalid), policy_version=policy.version
        )
    else:
        decision = policy.decide(plan, catalog, goal)
    if as_json:
        typer.echo(decision.model_dump_json())
        return
    typer.echo(f"decision: {decision.action}")
    typer.echo(f"rule: {decision.rule or '(none)'}")
    typer.echo(f"reason: {decision.reason}")
    if decision.shadow_action:
        typer.echo(f"shadow: would {decision.shadow_action}")
    rule = policy.rule(decision.rule)
    if rule is not None and rule.requires_role:
        typer.echo(f"a reviewer needs the role: {rule.requires_role}")


def _catalog(tools: str | None) -> Any:
    if tools is not None:
        from plangate.tools import load_tools

        return load_tools([name.strip() for name in tools.split(",") if name.strip()]).catalog()
    from plangate.catalog import load_catalog
    from plangate.store import open_store

    store = open_store(load_settings().resolved_database_url())
    try:
        catalog = load_catalog(store)
    finally:
        store.close()
    if not catalog:
        raise ConfigError("the store has no tool catalog yet (no executor ran); pass --tools")
    return catalog
