"""Which goals a live `plangate run` carries out, as later runs on its data folder see it.

A `plangate run` killed outright (SIGKILL, a crash, the machine off) leaves its goal as it
was: `running`, a write claimed. In the embedded mode no worker's sweep or reconciler ever
comes back to it, so `status` said "running" for good, and no one was asked whether the
write happened. Each run holds a lock (`flock`) on one file per goal it submitted, in the data
folder's `runs/`; the kernel lets go of it when the process ends, however it ends. A later
run that can take the lock knows that run is over, not slow: it cancels the goal if it had
not ended and marks its writes left in flight `unknown` (`mark_abandoned`, as an executor's
sweep does), for a person to settle. A lease could not tell a dead run from a long call.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from executor_worker.abandoned_steps import mark_abandoned
from plangate.cancellation import cancel_goal
from plangate.errors import Conflict, Forbidden, NotFound
from plangate.store import GoalRow, Store

log = logging.getLogger(__name__)

# Who cancels a goal whose run is over: no person decided it, the run's end did.
SETTLER = "plangate run"
ENDED = "its `plangate run` ended before the goal did (killed, or its machine stopped)"
KILLED_MID_CALL = (
    "the `plangate run` calling it ended mid-call (killed, or its machine stopped): it may or "
    "may not have happened; check, then record which with `plangate review settle`"
)
RunState = Literal["live", "ended"]


@dataclass(frozen=True)
class Settled:
    """A goal of a run that is over, as a later run left it."""

    goal_id: str
    cancelled: bool  # it had not ended: cancelled now, so that nothing more of it runs
    # Its writes left in flight, as `plan_id/step_id` (`plangate review settle` takes both).
    unknown: list[str] = field(default_factory=list)


def runs_folder(data_dir: Path) -> Path:
    """Return the folder of the live runs' lock files."""
    return data_dir / "runs"


class RunMarks:
    """The lock files of the goals this process carries out; held until `release`."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._held: dict[Path, int] = {}

    def hold(self, goal_id: str) -> None:
        """Say that this process carries out `goal_id`, for as long as it lives."""
        self._folder.mkdir(parents=True, exist_ok=True)
        path = self._folder / f"{goal_id}.lock"
        # Locked under another name, then renamed: a run scanning the folder never finds the
        # file before its lock is taken (it would read the run as over).
        draft = self._folder / f".{goal_id}.{os.getpid()}"
        fd = os.open(draft, os.O_CREAT | os.O_WRONLY, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(draft, path)
        self._held[path] = fd

    def release(self) -> None:
        """Say that the goals ended as this process left them (it recorded where)."""
        for path, fd in self._held.items():
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)
        self._held.clear()


def run_state(data_dir: Path, goal_id: str) -> RunState | None:
    """Return whether `goal_id`'s `plangate run` is live or over; None if no run marks it."""
    path = runs_folder(data_dir) / f"{goal_id}.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return "live"
    finally:
        os.close(fd)
    return "ended"


def settle_ended_runs(store: Store, data_dir: Path) -> list[Settled]:
    """Settle the goals of every run on this data folder that is over; return what it did.

    A goal that had ended, and whose run left no write in flight, is settled silently.
    """
    folder = runs_folder(data_dir)
    if not folder.is_dir():
        return []
    settled = []
    for path in sorted(folder.glob("*.lock")):
        try:
            done = _settle(store, path)
        except Exception:  # the store busy: the next run settles it
            log.warning("could not settle the goal of the ended run %s", path.stem, exc_info=True)
            continue
        if done is not None and (done.cancelled or done.unknown):
            settled.append(done)
    return settled


def _settle(store: Store, path: Path) -> Settled | None:
    """Settle the goal of the run marked by `path` if that run is over (its lock is free)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # live
        if os.fstat(fd).st_nlink == 0:
            return None  # another run settled it just now
        goal_id = path.stem
        cancelled = _cancel(store, goal_id)
        marked = mark_abandoned(store, goal_id=goal_id, why=KILLED_MID_CALL)
        path.unlink()
        return Settled(goal_id, cancelled, marked)
    finally:
        os.close(fd)


def _cancel(store: Store, goal_id: str) -> bool:
    """Cancel the goal if it had not ended; return whether it was cancelled now."""
    with store.reading() as session:
        goal = session.get(GoalRow, goal_id)
    if goal is None:
        return False  # a goal of another store (a run given PLANGATE_DATABASE_URL)
    try:
        cancel_goal(store, goal_id, SETTLER, ENDED)
    except (Conflict, Forbidden, NotFound):  # ended; or held for a role: a reviewer decides
        return False
    return True
