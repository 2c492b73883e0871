"""How the CLI shows plans, decisions and steps: rich for people, JSON lines for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from plangate.printable import printable, printable_line
from schemas import Catalog, Decision, Plan, StepFinished, StepPreview

_ACTION_STYLE = {
    "approve": "bold green",
    "deny": "bold red",
    "hold": "bold yellow",
    "reject": "bold red",
    "expire": "bold magenta",
}
_STEP_MARK = {
    "succeeded": ("✓", "green"),
    "skipped": ("○", "dim"),
    "failed": ("✗", "red"),
    "unknown": ("?", "magenta"),
}


def short(value: Any, limit: int = 80) -> str:
    """Return compact JSON of a value, cut to `limit` characters, safe to print."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return printable(text if len(text) <= limit else text[: limit - 1] + "…")


def shown(text: str, style: str = "") -> Text:
    """Return text from elsewhere (a goal, a plan, a tool) as printed: no markup, no controls."""
    return Text(printable(text), style=style)


def shown_line(text: str, style: str = "") -> Text:
    r"""Return text from elsewhere as `shown` does, on one line (its line breaks escaped).

    For a plan's summary: a model's `x\r\nDecision: approve by admin` printed a line that
    read as the decision, just above the real one.
    """
    return Text(printable_line(text), style=style)


def plan_table(plan: Plan, catalog: Catalog, planner: str) -> Table:
    """Return the plan as a table: step, tool, effect, args, when."""
    # Every text of a plan is the planner's (an LLM's, from anyone's goal): shown, never read
    # as markup (a `[/x]` in it broke the table) nor as the terminal's controls.
    table = Table(
        title=shown(f"Plan {plan.plan_id[:8]} · revision {plan.revision} · by {planner}"),
        caption=shown_line(plan.summary) if plan.summary else None,
        title_justify="left",
    )
    for column in ("step", "tool", "effect", "args", "when"):
        table.add_column(column, overflow="fold")
    for step in plan.steps:
        spec = catalog.get(step.tool)
        effect = spec.effect if spec else "?"
        table.add_row(
            shown(step.id),
            shown(step.tool),
            Text(effect, style="yellow" if effect == "write" else "cyan"),
            shown(short(dict(step.args)) if step.args else ""),
            shown(step.when or ""),
        )
    return table


def decision_text(decision: Decision) -> Text:
    """Return one line stating what was decided, by what, and why."""
    text = Text("Decision: ")
    text.append(decision.action, style=_ACTION_STYLE.get(decision.action, "bold"))
    who = f"rule {decision.rule}" if decision.rule else decision.decided_by
    said = f" — {decision.reason}" if decision.reason else ""  # a reviewer may give none
    text.append(printable(f" by {who}{said}"))
    text.append(f"  (policy {decision.policy_version})", style="dim")
    if decision.shadow_action:
        text.append(f"  shadow: would {decision.shadow_action}", style="dim")
    return text


def step_text(event: StepFinished) -> Text:
    """Return one line for a finished step: mark, id, tool, duration, output or reason."""
    mark, style = _STEP_MARK.get(event.status, ("·", ""))
    text = Text(f"  {mark} ", style=style)
    text.append(printable(f"{event.step_id:<12} "), style="bold")
    text.append(printable(f"{event.tool:<20} "))
    text.append(f"{event.status:<9} ", style=style)
    text.append(f"{event.duration_ms:>8.1f} ms  ", style="dim")
    if event.status == "succeeded" and not output_note(event.status, event.output, event.error):
        text.append("→ " + short(event.output))
    elif event.error:
        text.append(printable(event.error), style=style)
    return text


def output_note(status: str, output: object, error: str | None) -> str | None:
    """Return what a succeeded step with no output says instead, if anything.

    A write whose output was too large to keep took effect: its record says so, and its
    output (`null`) read as if the tool had answered nothing.
    """
    return error if status == "succeeded" and output is None and error else None


_PREVIEW_STYLE = {"ran": "cyan", "previewed": "yellow", "failed": "red"}


def preview_table(steps: Sequence[StepPreview]) -> Table:
    """Return a plan's dry run: what each read returned, what each write would do."""
    table = Table(
        title="Preview (a dry run: reads ran for real, nothing was written)", title_justify="left"
    )
    for column in ("step", "tool", "status", "returned, or would do"):
        table.add_column(column, overflow="fold")
    for step in steps:
        said = short(step.output, 200) if step.status == "ran" else step.preview or ""
        if step.note:
            said = f"{said} ({step.note})" if said else step.note
        status = Text(step.status, style=_PREVIEW_STYLE.get(step.status, "dim"))
        table.add_row(shown(step.step_id), shown(step.tool), status, shown(said))  # tools' words
    return table


def json_line(event: str, data: dict[str, Any]) -> str:
    """Return one event as a single JSON line (for `--json`)."""
    return json.dumps({"event": event, **data}, default=json_default, separators=(",", ":"))


def json_default(value: object) -> object:
    """Return a value JSON has no type for as `--json` prints it.

    A time as ISO 8601 in UTC (`2026-12-06T06:20:15.366167Z`, as the API, `dlq list` and the
    audit export print it); anything else as its text.
    """
    if isinstance(value, datetime):
        text = value.isoformat()
        return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text
    return str(value)
