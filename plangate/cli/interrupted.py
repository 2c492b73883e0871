"""Ending `plangate run` early (Ctrl-C, `--timeout`): its stages stop, or it ends without them."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from rich.console import Console
from sqlalchemy import select

from plangate import pipeline_ending, telemetry
from plangate.cancellation import cancel_goal
from plangate.catalog import load_catalog
from plangate.cli.approval_prompt import still_held
from plangate.cli.common import EXIT_INTERRUPTED
from plangate.cli.run_signals import Ending
from plangate.embedded import Pipeline
from plangate.errors import Conflict, Forbidden
from plangate.run_marks import Settled
from plangate.store import GoalRow, StepRunRow, Store
from plangate.store.goals import latest_plan
from plangate.unknown_calls import SINCE_LISTED, settle_command

log = logging.getLogger(__name__)

# After Ctrl-C, how long in-flight steps get to finish before the process ends anyway: the
# grace a library's `Pipeline` gives them too.
STOP_GRACE_SECONDS = pipeline_ending.STOP_GRACE_SECONDS

# After `--timeout` with no write in flight: what runs (planning, reads) is abandoned, so only
# a moment is given, for stages between two steps to stop cleanly.
TIMEOUT_GRACE_SECONDS = 1.0


def give_up(pipeline: Pipeline, goal_id: str, who: str, why: str) -> str:
    """At `--timeout` or Ctrl-C: cancel the goal, so no further step starts; return its status.

    The stages run on until they are stopped, and a run goes on to its next step meanwhile:
    an approval already on its way started the plan after the run said it gave up (a script
    retrying on exit 1 ran it twice), and a write began after Ctrl-C. A goal that ended
    meanwhile is left as it ended; a plan held for a role stays held (nothing runs without a
    decision, and a terminal holds no role).
    """
    with contextlib.suppress(Conflict, Forbidden):
        cancel_goal(pipeline.store, goal_id, who, why)
    with pipeline.store.reading() as session:
        return session.get_one(GoalRow, goal_id).status


def say_interrupted(
    pipeline: Pipeline, goal_id: str, who: str, err: Console, ending: Ending
) -> str:
    """After an interrupt on a goal not held for a person: cancel it; say where it is left."""
    status = give_up(pipeline, goal_id, who, ending.reason)
    if status == "cancelled":
        err.print(
            f"\n{ending.said}: the goal is cancelled, so no further step of it starts; a step "
            f"already running is given {STOP_GRACE_SECONDS:g} s to end"
        )
    else:
        err.print(f"\n{ending.said}: the goal is {status}")
    return status


def decline(pipeline: Pipeline, goal_id: str, who: str, err: Console, ending: Ending) -> str:
    """Cancel a goal held for the terminal's answer, as `who`: an interrupt there is a "no".

    Left held, it pointed at `plangate goals cancel`, which the embedded setup refuses without
    a reviewer's token, and each Ctrl-C left one more goal held for a day.
    """
    status = give_up(pipeline, goal_id, who, f"{ending.said} at the approval prompt")
    if status != "cancelled":  # held for a role this terminal lacks
        err.print(f"\n{ending.said}: nothing was run; {still_held(goal_id)}")
        return status
    err.print(
        f"\n{ending.said} at the approval prompt: nothing was run, and the goal is cancelled "
        f"(by {who}); run `plangate run` again to decide anew"
    )
    return status


def steps_after_waiting(
    pipeline: Pipeline, goal_id: str, err: Console, watch: Callable[[float], bool]
) -> dict[str, str]:
    """After an interrupt: give the steps already running a grace to end; return each's status.

    Waited for before the run's summary: it said "1 succeeded" of a run whose write then
    ended within the grace, and the user, told no more, could run the goal again. `watch`
    shows the step that ends next, waiting up to the seconds given (False: none came): each
    is printed as it ends, as the run prints them (they were only counted).
    """
    try:
        ended = _wait_watching(pipeline, watch)
    except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
        ended = False
    steps = steps_as_left(pipeline, goal_id, abandoned=not ended)
    unknown = sorted(step for step, status in steps.items() if status == "unknown")
    if unknown:
        err.print(
            f"write step {', '.join(unknown)} was still being called: it may or may not have "
            f"happened; {how_to_settle(pipeline.store, _unknown_writes(pipeline, goal_id))}"
        )
    written = went_out(pipeline, goal_id)
    if written:
        err.print(f"write step {', '.join(written)} went out: it succeeded before the run ended")
    elif not unknown:  # beside a write of unknown outcome, "none went out" contradicted it
        err.print("no write step went out")
    return steps


def how_to_settle(store: Store, writes: Sequence[str]) -> str:
    """Say how to record whether each write of unknown outcome (`plan_id/step_id`) happened.

    It said "`plangate review settle`" alone: the user had to find the plan's and the step's
    ids, which that command takes, and the call's since (`--since`), which names the call.
    """
    commands, listed = [], ""
    for write in writes:
        plan_id, step_id = write.split("/", 1)
        since = _unknown_since(store, plan_id, step_id)
        commands.append(f"`{settle_command(plan_id, step_id, since)}`")
        listed = listed if since else f"; {SINCE_LISTED}"
    return f"check, then record which: {', '.join(commands)} (or --not-happened{listed})"


def _unknown_since(store: Store, plan_id: str, step_id: str) -> datetime | None:
    """Return since when the write `step_id` of `plan_id` is unknown (None: not known here)."""
    try:
        with store.reading() as session:
            return session.scalar(
                select(StepRunRow.finished_at).where(
                    StepRunRow.plan_id == plan_id,
                    StepRunRow.step_id == step_id,
                    StepRunRow.status == "unknown",
                )
            )
    except Exception:  # the store busy or gone: the process ends all the same, saying where
        log.warning("could not read since when %s is unknown", step_id, exc_info=True)
        return None


def _unknown_writes(pipeline: Pipeline, goal_id: str) -> list[str]:
    """Return the goal's steps of unknown outcome, as `plan_id/step_id`."""
    with pipeline.store.reading() as session:
        rows = session.execute(
            select(StepRunRow.plan_id, StepRunRow.step_id)
            .where(StepRunRow.goal_id == goal_id, StepRunRow.status == "unknown")
            .order_by(StepRunRow.step_id)
        ).all()
    return [f"{plan_id}/{step_id}" for plan_id, step_id in rows]


def _wait_watching(pipeline: Pipeline, watch: Callable[[float], bool]) -> bool:
    """Stop the stages, showing the steps that end meanwhile; False if some outlast the grace."""
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while not pipeline.halt(timeout=0):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        watch(min(0.1, left))
    while watch(0.05):  # the last steps' messages, published as their handlers ended
        pass
    return True


def went_out(pipeline: Pipeline, goal_id: str) -> list[str]:
    """Return the goal's write steps that succeeded (their effect happened)."""
    with pipeline.store.reading() as session:
        rows = session.execute(
            select(StepRunRow.step_id, StepRunRow.tool).where(
                StepRunRow.goal_id == goal_id, StepRunRow.status == "succeeded"
            )
        ).all()
    catalog = load_catalog(pipeline.store)
    return sorted(
        step for step, tool in rows if tool in catalog and catalog[tool].effect == "write"
    )


def outcome(pipeline: Pipeline, goal_id: str, status: str) -> str:
    """Return the run's outcome after an interrupt: the goal's status, and if it ran in full."""
    from executor_worker.engine import CANCELLED

    with pipeline.store.reading() as session:
        plan = latest_plan(session, goal_id)
        # Skipped by its condition or a step it needs, a step had its turn; skipped because
        # the goal was cancelled first, it did not ("after every step ran" of a write never run).
        ended = session.scalars(
            select(StepRunRow.step_id).where(
                StepRunRow.goal_id == goal_id,
                StepRunRow.status.in_(("succeeded", "skipped")),
                StepRunRow.error.is_distinct_from(CANCELLED),
            )
        ).all()
        steps = {str(step.get("id")) for step in plan.body.get("steps", [])} if plan else set()
    if status == "cancelled" and steps and steps <= set(ended):
        return "cancelled after every step ran"  # the interrupt came as the last steps ran
    return status


def say_settled(store: Store, settled: list[Settled], err: Console) -> None:
    """Say, in one line each, the goals of earlier runs found over and settled at this start."""
    for goal in settled:
        done = "is cancelled" if goal.cancelled else "had ended"
        steps = ", ".join(write.split("/", 1)[1] for write in goal.unknown)
        unknown = (
            f"; write step {steps} was being called: it may or may not have happened; "
            f"{how_to_settle(store, goal.unknown)}"
            if goal.unknown
            else ""
        )
        err.print(
            f"an earlier `plangate run` on this data folder ended without finishing (killed?): "
            f"its goal {goal.goal_id} {done}{unknown}"
        )


def steps_as_left(pipeline: Pipeline, goal_id: str, *, abandoned: bool) -> dict[str, str]:
    """Return each of the goal's steps' status as recorded; writes abandoned marked `unknown`.

    `abandoned`: the process ends without waiting for what still runs, so a write being called
    may or may not happen; `plangate review settle` records which once someone has checked.
    """
    from executor_worker.abandoned_steps import mark_abandoned

    try:
        if abandoned:
            mark_abandoned(pipeline.store, goal_id=goal_id)
        with pipeline.store.reading() as session:
            rows = session.execute(
                select(StepRunRow.step_id, StepRunRow.status).where(StepRunRow.goal_id == goal_id)
            ).all()
    except Exception:  # the store busy or gone: the run still ends, saying where it stands
        log.warning("could not read or mark the goal's steps as the run ended", exc_info=True)
        return {}
    return {step_id: status for step_id, status in rows}


def end_after_timeout(pipeline: Pipeline, goal_id: str, err: Console, code: int) -> None:
    """After `--timeout`: end soon, but let a write already called end, so its outcome is known.

    Abandoned, a write would keep its claim and be settled as of unknown outcome, for a person
    to look into; its own deadline bounds the wait instead. Planning and reads are abandoned.
    """
    with pipeline.store.reading() as session:
        writing = session.scalars(
            select(StepRunRow.step_id).where(
                StepRunRow.goal_id == goal_id, StepRunRow.status == "running"
            )
        ).all()
    if writing:
        err.print(
            f"waiting for write step {', '.join(writing)} to end, so that its outcome is "
            "recorded (at most its tool's deadline; Ctrl-C ends without waiting)"
        )
    grace = None if writing else TIMEOUT_GRACE_SECONDS
    stop_or_abandon(pipeline, err, code, grace=grace, goal_id=goal_id)


def stop_or_abandon(
    pipeline: Pipeline,
    err: Console,
    code: int = EXIT_INTERRUPTED,
    grace: float | None = STOP_GRACE_SECONDS,
    goal_id: str = "",
) -> None:
    """After Ctrl-C or `--timeout`: stop the stages, or end the process if their work will not.

    Python cannot stop a thread, and a handler waiting on a stuck call (a tool, a model server
    asking to be retried in two minutes) would keep the process alive long after the user asked
    it to end. Ending here is what a kill does, which every stage survives; a goal being
    planned stays submitted. The goal (`goal_id`) is cancelled by then, so no run comes back
    to a write in flight: it is marked `unknown`, for a person to settle.
    """
    waited = f" after {grace:g} s" if grace else ""  # (none: waited for before the summary)
    try:
        stopped = pipeline.stop(timeout=grace)
    except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
        stopped, waited = False, ""
    if stopped:
        return
    with contextlib.suppress(KeyboardInterrupt):  # a further Ctrl-C: it ends all the same
        from executor_worker.abandoned_steps import mark_abandoned

        # Marked already when the summary waited for them: said there.
        try:
            marked = mark_abandoned(pipeline.store, goal_id=goal_id) if goal_id else []
        except Exception:  # the store busy or gone: the process ends all the same
            log.warning("could not mark the writes in flight as unknown", exc_info=True)
            marked = []
        steps = ", ".join(step.split("/", 1)[1] for step in marked)
        what = (
            f"write step {steps} may or may not happen: {how_to_settle(pipeline.store, marked)}"
            if marked
            else "what it had done is recorded"
        )
        err.print(
            f"the goal's work (a step, or a plan being drafted) is still running{waited}; "
            f"ending without waiting for it ({what})"
        )
        pipeline.seal()  # what was recorded, the unknown write included
    with contextlib.suppress(KeyboardInterrupt):  # a further Ctrl-C: it ends all the same
        telemetry.close()  # os._exit runs no exit hook
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def say_waiting_elsewhere(pipeline: Pipeline, err: Console) -> None:
    """Say that messages of other goals wait in this store for a deployment's workers."""
    waiting = pipeline.waiting_elsewhere()
    if waiting:
        err.print(
            f"note: {waiting} message(s) of other goals wait in this store for a deployment's "
            "workers (decisions taken with `plangate review`, goals sent with `plangate "
            "submit`); this run carries out only its own goal. `plangate worker planner|"
            "gate|executor` on this store carries them out.",
            style="dim",
        )


def outside_the_run(ending: Ending, err: Console) -> int:
    """Say that a signal came as the run started or stopped; return the exit code it asks.

    It ended in "Aborted!" and exit 130, whichever signal it was, saying nothing.
    """
    err.print(
        f"\n{ending.said} as the run was starting or ending: `plangate status` says where its "
        "goal stands, and the next `plangate run` on this data folder settles what it left"
    )
    return ending.exit_code
