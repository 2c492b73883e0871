"""Following one goal through the embedded pipeline, shown as it happens (`plangate run`)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax

from approval_gate.decisions import decision_of
from plangate import telemetry
from plangate.bus import Observer
from plangate.catalog import load_catalog
from plangate.cli import approval_prompt, event_stream, interrupted, render
from plangate.cli.common import EXIT_COMPLETED, EXIT_FAILED, EXIT_REFUSED, EXIT_USAGE
from plangate.cli.run_signals import Ending, ending_of, raise_if_dropped, signals_as_interrupts
from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.errors import Forbidden
from plangate.printable import printable
from plangate.reviewers import terminal_reviewer
from plangate.store import DecisionRow, GoalRow, PlanRow
from planner_worker.replan import FeedbackSource, replan_expected
from schemas import (
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionPaused,
    Message,
    PlanApproved,
    PlanDecided,
    PlanFailed,
    PlanPreviewed,
    PlanProposed,
    StepFinished,
    StepPreview,
)

_REFUSED = {"plan.denied", "plan.rejected", "plan.expired"}
# How long a hold waits for its dry run before asking without it (reads may be slow).
PREVIEW_WAIT_SECONDS = 30.0


@dataclass
class RunOptions:
    """How `plangate run` behaves."""

    yes: bool = False
    as_json: bool = False
    timeout: float = 300.0
    reviewer: str = ""


class GoalRun:
    """Follows one goal's events and answers a hold at the terminal."""

    def __init__(self, pipeline: Pipeline, options: RunOptions, out: Console, err: Console):
        self.pipeline = pipeline
        self.options = options
        self.out = out
        self.err = err
        self.goal_id, self.events = "", sys.stdout  # `--json` events: stdout, kept for them
        self.trace_id: str | None = None
        self.timed_out = self.waited = False  # waited: for the steps running at Ctrl-C
        self.ending: Ending | None = None  # how an interrupt (Ctrl-C, SIGTERM, SIGHUP) ended it
        self._observer: Observer
        self.steps: dict[str, str] = {}
        # A hold whose dry run is on its way: asked about once the preview arrives (or is late).
        self._awaiting_preview: tuple[PlanDecided, float] | None = None

    def run(self, text: str) -> int:
        """Submit `text` and follow it to the end; return the exit code."""
        with self.pipeline.bus.observe() as observer:
            self._observer = observer  # kept open after Ctrl-C: steps ending in the grace
            try:
                return self._follow(text)
            except KeyboardInterrupt as interrupt:  # or SIGTERM, SIGHUP (`run_signals`)
                self.ending = ending_of(interrupt)
                return self._interrupted(self.ending)

    def _interrupted(self, ending: Ending) -> int:
        """Say where the interrupt left the goal: cancelled, so that nothing more of it starts."""
        code = ending.exit_code
        if not self.goal_id:
            self.err.print(f"\n{ending.said} before the goal was stored: nothing was submitted")
            return self._finish(code, ending.said)
        with self.pipeline.store.reading() as session:
            status = session.get_one(GoalRow, self.goal_id).status
        said = (self.pipeline, self.goal_id, self._reviewer, self.err, ending)
        if status == "held":  # at the prompt: an interrupt there is a "no"
            return self._finish(code, interrupted.decline(*said))
        status = interrupted.say_interrupted(*said)
        self.steps = interrupted.steps_after_waiting(*said[:2], self.err, self._watch)
        self.waited = True
        if not self.options.as_json:  # `outcome` in JSON stays the goal's status, for scripts
            status = interrupted.outcome(self.pipeline, self.goal_id, status)
        return self._finish(code, status)

    def _watch(self, timeout: float) -> bool:
        """Show a step of the goal that ended, waiting up to `timeout`; False if nothing came."""
        message = self._observer.next(timeout=timeout)
        if isinstance(message, StepFinished) and message.goal_id == self.goal_id:
            self._show_step(message)
        return message is not None

    def _show_step(self, message: StepFinished) -> None:
        self.steps[message.step_id] = message.status
        if self.options.as_json:
            self._json(message.type, message.model_dump(mode="json"))
        else:
            self.out.print(render.step_text(message))

    def _still_held(self) -> str:
        return approval_prompt.still_held(self.goal_id)

    def _follow(self, text: str) -> int:
        observer = self._observer
        submitted = self.pipeline.submit(text, metadata={"submitted_by": "cli"})
        self.goal_id, self.trace_id = submitted.goal_id, submitted.trace_id
        if self.options.as_json:
            ids = {"goal_id": self.goal_id, "trace_id": self.trace_id}
            self._json("goal.submitted", {**ids, "text": text})
        deadline = time.monotonic() + self.options.timeout
        while time.monotonic() < deadline:
            raise_if_dropped()
            message = observer.next(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
            if message is None or message.goal_id != self.goal_id:
                code = self._preview_late()
            else:
                code = self._on(message)
            if code is not None:
                return code
        self.timed_out = True
        timeout = self.options.timeout
        why = f"`plangate run --timeout {timeout:g}` passed"
        status = interrupted.give_up(self.pipeline, self.goal_id, self._reviewer, why)
        if status == "completed":  # in the moment between the deadline and the cancel
            return self._finish(EXIT_COMPLETED, "completed as the timeout passed")
        return self._finish(EXIT_FAILED, f"timed out after {timeout:g} s; the goal is {status}")

    def _on(self, message: Message) -> int | None:
        if isinstance(message, PlanProposed):
            self._show_plan(message)
        elif isinstance(message, PlanFailed):
            if self.options.as_json:
                return self._finish(EXIT_FAILED, "plan_failed", reasons=message.reasons)
            said = escape(printable("; ".join(message.reasons)))  # the planner's words
            ids = f"goal {self.goal_id}  ·  trace {self.trace_id}"  # to retry it, or find it
            self.err.print(f"[red]error:[/] {said}\n[dim]{ids}[/]", highlight=False)
            return EXIT_FAILED
        elif isinstance(message, PlanApproved):
            self._stop_awaiting(message.plan.plan_id)  # approved elsewhere meanwhile
            self._show_decision(message.plan.plan_id)
        elif isinstance(message, PlanDecided):
            return self._on_decided(message)
        elif isinstance(message, PlanPreviewed):
            return self._on_preview(message)
        elif isinstance(message, StepFinished):
            self._show_step(message)
        elif isinstance(message, ExecutionCompleted | ExecutionPaused | ExecutionFailed):
            return self._on_outcome(message)
        elif isinstance(message, ExecutionCancelled):  # by an operator, from elsewhere
            return self._finish(EXIT_FAILED, message.reason, steps=message.steps)
        return None

    def _on_outcome(
        self, message: ExecutionCompleted | ExecutionPaused | ExecutionFailed
    ) -> int | None:
        if isinstance(message, ExecutionCompleted):
            return self._finish(EXIT_COMPLETED, "completed", steps=message.steps)
        if isinstance(message, ExecutionPaused):
            # Settling needs a deployment's executor: this run's ends with it (no `review settle`).
            found = message.reason.split("; check, then", 1)[0]
            outcome = (
                f"needs attention: {found}; this run ends here and never calls it again: "
                "check whether it happened before you run the goal once more"
            )
            return self._finish(EXIT_FAILED, outcome, steps=message.steps)
        if self._replanning(self._revision(message.plan_id), "execution"):
            return None
        return self._finish(EXIT_FAILED, f"failed: {message.reason}", steps=message.steps)

    def _on_decided(self, message: PlanDecided) -> int | None:
        self._stop_awaiting(message.plan_id)  # decided elsewhere meanwhile: nothing to ask
        self._show_decision(message.plan_id, message)
        if message.type == "plan.rejected" and self._replanning(message.revision, "reviewer"):
            return None
        if message.type in _REFUSED:
            return self._finish(EXIT_REFUSED, message.type.removeprefix("plan."))
        if message.type != "plan.held":
            return None
        held = self.pipeline.review.get(message.plan_id)
        if held.preview is not None:
            self._show_preview(message.plan_id, held.preview)
        elif held.preview_state == "waiting" and not self.options.yes:
            if not self.options.as_json:
                self.err.print("Making a dry run of the plan for you (reads only)…", style="dim")
            self._awaiting_preview = (message, time.monotonic() + PREVIEW_WAIT_SECONDS)
            return None
        return self._ask(message)

    def _stop_awaiting(self, plan_id: str) -> PlanDecided | None:
        """Stop waiting for the dry run of `plan_id`; return its hold if it was awaited."""
        if self._awaiting_preview is None or self._awaiting_preview[0].plan_id != plan_id:
            return None
        held, _ = self._awaiting_preview
        self._awaiting_preview = None
        return held

    def _on_preview(self, message: PlanPreviewed) -> int | None:
        held = self._stop_awaiting(message.plan_id)
        if held is None:
            return None
        self._show_preview(message.plan_id, message.steps)
        return self._ask(held)

    def _preview_late(self) -> int | None:
        if self._awaiting_preview is None or time.monotonic() < self._awaiting_preview[1]:
            return None
        held, _ = self._awaiting_preview
        self._stop_awaiting(held.plan_id)
        if not self.options.as_json:
            self.err.print("The dry run is late; deciding without it.", style="yellow")
        return self._ask(held)

    def _show_preview(self, plan_id: str, steps: Sequence[StepPreview]) -> None:
        if self.options.as_json:
            previews = [step.model_dump(mode="json") for step in steps]
            self._json("plan.previewed", {"plan_id": plan_id, "steps": previews})
        else:
            self.out.print(render.preview_table(steps))

    @property
    def _reviewer(self) -> str:
        """Who decides at this terminal (and cancels at the timeout)."""
        return self.options.reviewer or terminal_reviewer()

    def _ask(self, held: PlanDecided) -> int | None:
        reviewer = self._reviewer
        if self.options.yes:
            return self._approve(held, reviewer)
        while True:
            try:
                answer = approval_prompt.ask(self.err)
            except EOFError:
                # A newline first: the prompt left the cursor at the end of its line.
                self.err.print(
                    f"\nno answer: nothing was run; {self._still_held()}. Use --yes to approve "
                    "in scripts."
                )
                return self._finish(EXIT_REFUSED, "held")
            if answer == "show":
                self.err.print(Syntax(self._plan_json(held.plan_id), "json"))
            elif answer == "approve":
                return self._approve(held, reviewer)
            else:
                comment = approval_prompt.ask_why(self.err, self._why(held.revision))
                why = comment or "rejected at the terminal"  # a blank answer is no reason
                self.pipeline.reject(held.plan_id, reviewer, why)
                return None

    def _approve(self, held: PlanDecided, reviewer: str) -> int | None:
        """Approve at the terminal; end the run if the hold needs more than this process has.

        A terminal proves no identity, so its reviewer holds no role; and it is one person, so
        a rule asking several reviewers waits for the others (through a deployment).
        """
        raise_if_dropped()  # a SIGTERM just before: nothing is approved
        try:
            released = self.pipeline.approve(held.plan_id, reviewer, expected_hash=held.plan_hash)
        except Forbidden as refused:
            self.err.print(
                f"[red]error:[/] {escape(str(refused))}. At the terminal `plangate run` approves "
                "with no role (a terminal proves no identity): a rule that requires one is "
                "decided by a reviewer with a token, through `plangate serve` and the workers "
                f"of a deployment; {self._still_held()}",
                highlight=False,
            )
            return self._finish(EXIT_USAGE, "held")
        if released:
            return None
        self.err.print(
            f"{reviewer}'s approval is counted, and the rule asks for more reviewers than this "
            "terminal: the others approve through `plangate serve` and the workers of a "
            f"deployment; {self._still_held()}",
            highlight=False,
        )
        return self._finish(EXIT_REFUSED, "held")

    def _why(self, revision: int) -> str:
        if replan_expected(self.pipeline.settings, revision, "reviewer"):
            return "Why? (the planner revises the plan from your comment)"
        return "Why? (a comment for the record)"

    def _replanning(self, revision: int, source: FeedbackSource) -> bool:
        """Say so, and keep following the goal, when the planner will revise the plan."""
        if not replan_expected(self.pipeline.settings, revision, source):
            return False
        self.steps = {}
        if self.options.as_json:
            self._json("replanning", {"goal_id": self.goal_id, "revision": revision + 1})
        else:
            self.out.print(f"The planner is making revision {revision + 1} from that feedback.")
        return True

    def _revision(self, plan_id: str) -> int:
        with self.pipeline.store.reading() as session:
            return session.get_one(PlanRow, plan_id).revision

    def _plan_json(self, plan_id: str) -> str:
        with self.pipeline.store.reading() as session:
            return json.dumps(session.get_one(PlanRow, plan_id).body, indent=2)

    def _show_plan(self, message: PlanProposed) -> None:
        if self.options.as_json:
            self._json(message.type, message.model_dump(mode="json"))
            return
        catalog = load_catalog(self.pipeline.store)
        self.out.print(f"Goal {self.goal_id}  ·  trace {self.trace_id}", style="dim")
        planner = message.planner + (f" · {message.usage.total} tokens" if message.usage else "")
        self.out.print(render.plan_table(message.plan, catalog, planner))

    def _show_decision(self, plan_id: str, message: PlanDecided | None = None) -> None:
        if message is not None:
            decision = message.decision
        else:
            with self.pipeline.store.reading() as session:
                rows = (
                    session.query(DecisionRow).filter_by(plan_id=plan_id).order_by(DecisionRow.id)
                )
                decision = decision_of(rows.all()[-1])
        if self.options.as_json:
            self._json("decision", {"plan_id": plan_id, **decision.model_dump(mode="json")})
        else:
            self.out.print(render.decision_text(decision))

    def _finish(self, code: int, outcome: str, **extra: object) -> int:
        if self.options.as_json:
            self._json(
                "result",
                {
                    "goal_id": self.goal_id,
                    "trace_id": self.trace_id,
                    "outcome": outcome,
                    "exit_code": code,
                    **extra,
                },
            )
            return code
        style = "green" if code == EXIT_COMPLETED else "red" if code == EXIT_FAILED else "yellow"
        counts = ", ".join(
            f"{sum(1 for s in self.steps.values() if s == k)} {k}"
            for k in ("succeeded", "skipped", "failed", "unknown")
            if k in self.steps.values()
        )
        # Shown, not read as markup: an outcome quotes a tool's error (an outside system's
        # words); and only its first letter is raised (`capitalize` lowered the rest).
        line = render.shown(outcome[:1].upper() + outcome[1:], style)
        if counts:
            line.append(f" · {counts}")
        self.out.print(line)
        self.out.print(f"goal {self.goal_id}  ·  trace {self.trace_id}", style="dim")
        return code

    def _json(self, event: str, data: dict[str, object]) -> None:
        self.events.write(render.json_line(event, dict(data)) + "\n")
        self.events.flush()


def run_goal(text: str, settings: Settings, options: RunOptions) -> int:
    """Run one goal in the embedded pipeline; return the process exit code."""
    out = Console(highlight=False)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        with (
            signals_as_interrupts(),
            telemetry.flushing(),
            event_stream.events_only_on_stdout(options.as_json) as events,
            Pipeline(settings, own_goals_only=True, previews=not options.yes) as pipeline,
        ):
            interrupted.say_settled(pipeline.store, pipeline.settled, err)
            if not options.as_json:
                interrupted.say_waiting_elsewhere(pipeline, err)
            goal_run = GoalRun(pipeline, options, out, err)
            goal_run.events = events
            code = goal_run.run(text)
            if goal_run.ending is not None:
                grace = 0.0 if goal_run.waited else interrupted.STOP_GRACE_SECONDS
                interrupted.stop_or_abandon(pipeline, err, code, grace, goal_run.goal_id)
            elif goal_run.timed_out:
                interrupted.end_after_timeout(pipeline, goal_run.goal_id, err, code)
            return code
    except KeyboardInterrupt as early:  # as the pipeline started or stopped: said, as ever
        return interrupted.outside_the_run(ending_of(early), err)
