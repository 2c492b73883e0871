"""How a held plan is shown in the terminal: the text `review show` and `review list` print.

Their `--json` is the API's view of a held plan (`plangate.review_views`), read from the store or
from a `serve`; the text is made from that same view (`view_of`), so both print alike.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from plangate.cli import render
from plangate.printable import printable

if TYPE_CHECKING:
    from schemas import Catalog

console = Console(highlight=False, soft_wrap=True)


def view_of(detail: dict[str, Any]) -> dict[str, Any]:
    """Return the API's view of a held plan in the shape `show_held` prints."""
    policy = detail.get("policy")
    lines = detail.get("diff") or []
    previous = detail.get("previous_revision")
    return {
        **detail,
        "status": detail["goal_status"],
        "policy_decision": None if policy is None else {**policy, "decided_by": "policy"},
        "previous": None if previous is None else {"revision": previous},
        "diff": "\n".join(lines) + "\n" if lines else "",
    }


def elided(text: str, width: int) -> str:
    """Return `text` on one line, cut to `width` characters with … where it is longer."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def steps_table(view: dict[str, Any], catalog: Catalog) -> Table:
    """Return the plan's steps as a table, each untrusted flow into an argument marked."""
    # The summary is the planner's words over untrusted text (a reviewer's edit, too): shown
    # as text, its escape sequences escaped, as every other field here.
    title = f"Plan {view['plan_id']} · revision {view['revision']} · by {view['planner']}"
    caption = render.shown_line(view["summary"]) if view["summary"] else None
    if caption is not None and view.get("summary_from_revision"):
        caption.append(f" (summary from revision {view['summary_from_revision']}", "yellow")
        caption.append(", not changed by the edit)", "yellow")
    table = Table(title=render.shown(title), caption=caption, title_justify="left")
    for column in ("step", "tool", "effect", "args", "when"):
        table.add_column(column, overflow="fold")
    from schemas.data_flow import untrusted_sources

    # The server says which data flows are untrusted (its catalog knows which reads are
    # trusted); worked out here only for a view without it: from `--server`, with no catalog
    # here, every read looked untrusted and each flow was flagged.
    said = all("untrusted_from" in step for step in view["steps"])
    flows = {} if said else untrusted_sources(view["steps"], catalog)
    for step in view["steps"]:
        spec = catalog.get(step["tool"])
        effect = step.get("effect") or (spec.effect if spec else "unknown")
        args = Text(json.dumps(step.get("args") or {}, separators=(",", ":")))
        marked = step["untrusted_from"] if said else flows.get(step["id"], {})
        for name, sources in marked.items():
            args.append(f"\n⚠ {name} carries untrusted data from {', '.join(sources)}", "red")
        table.add_row(
            render.shown(step["id"]),
            render.shown(step["tool"]),
            Text(effect, style="yellow" if effect != "read" else "cyan"),
            args if args.plain != "{}" else "",
            render.shown(step.get("when") or ""),
        )
    return table


def _show_decided(view: dict[str, Any]) -> None:
    """Print how a person decided the revision, and the revision that replaced it, if any."""
    decided = view.get("decision")
    if decided:
        # Their words: one line, as the goal's; none given, none shown (not "approved").
        words = f" — {decided['comment']}" if decided["comment"] else ""
        said = f"Decided: {decided['action']} by {decided['decided_by']}{words}"
        console.print(render.shown_line(f"{said} ({decided['decided_at']})"))
        _show_approvals(decided)
    newer = view.get("replaced_by")
    if newer:
        console.print(
            f"Replaced by revision {newer['revision']} (plan {escape(newer['plan_id'])}): "
            "review that one",
            style="yellow",
        )


def _show_approvals(decided: dict[str, Any]) -> None:
    """Print each approval of several (four eyes), or those a rejection came after."""
    approvals = decided.get("approvals") or []
    if decided["action"] == "approve" and len(approvals) < 2:
        return  # the decision line says the one approval
    for given in approvals:
        words = f" — {given['comment']}" if given["comment"] else ""
        said = f"  approved by {given['approved_by']}{words} ({given['approved_at']})"
        console.print(render.shown_line(said))


def show_held(view: dict[str, Any], catalog: Catalog) -> None:
    """Print a held plan: the goal, the steps, the policy's reason, the hold, preview and diff."""
    from schemas import StepPreview

    console.print(Text(f"Goal {view['goal_id']} ({view['status']}): ", style="bold"), end="")
    console.print(render.shown_line(view["goal_text"], style="dim"), "  [dim](untrusted text)[/]")
    console.print(steps_table(view, catalog))
    if view.get("edited_by"):
        why = view.get("edit_comment") or "(no reason given)"
        # A reviewer's words: one line, as the goal's (a line break forged a line below).
        console.print(render.shown_line(f"Edited by {view['edited_by']}: {why}"))
    decision = view["policy_decision"]
    if decision:
        by = f"rule {decision['rule']}" if decision["rule"] else decision["decided_by"]
        said = escape(printable(f"{by} — {decision['reason']}"))
        console.print(f"Policy: [bold]{escape(decision['action'])}[/] by {said}")
    _show_decided(view)
    if view["required_role"]:
        console.print(f"Requires the role: [bold]{escape(view['required_role'])}[/]")
    if view.get("approvals_required", 1) > 1:
        console.print(f"Approvals: [bold]{view['approval_progress']}[/]")
    if view.get("catalog_problem"):
        console.print(Text(f"⚠ This plan {printable(view['catalog_problem'])}", style="red"))
    if view.get("cannot_be_released"):
        console.print(Text(f"⚠ This plan {printable(view['cannot_be_released'])}", style="red"))
    if view.get("refused_by_gate"):
        console.print(Text(f"⚠ Held again: {printable(view['refused_by_gate'])}", style="red"))
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
