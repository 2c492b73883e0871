"""A plangate worker's CPU per goal, split by the kind of thread that spent it (Linux).

The workers of `pipeline.py` start with `thread_names/` first on their `PYTHONPATH`, so each
thread carries its Python name in the kernel too (15 bytes at most), where
`Processes.thread_cpu_seconds` reads it with the thread's CPU time. Threads that end between
the two readings are not counted.
"""

from __future__ import annotations

# Each thread's kind, by the start of its kernel name; the first match wins. The consume loop
# runs in the process's main thread, which keeps the process's name.
THREAD_KINDS = (
    ("plangate-announ", "announcers"),
    ("plangate-step", "step pool"),
    ("plangate-sweepe", "sweeper"),
    ("plangate-outbox", "outbox marks"),
    ("plangate-", "handlers"),
    ("Thread-", "tool calls"),
    ("python", "consume loop"),
)


def cpu_by_kind(before: dict[str, float], after: dict[str, float], goals: int) -> dict[str, float]:
    """Return the CPU ms per goal each kind of thread spent between two readings, most first.

    A reading maps "<kernel name> <thread id>" to the thread's CPU seconds so far.
    """
    spent: dict[str, float] = {}
    for thread, seconds in after.items():
        name = thread.rsplit(" ", 1)[0]
        kind = next((k for prefix, k in THREAD_KINDS if name.startswith(prefix)), "other")
        used = seconds - before.get(thread, 0.0)
        spent[kind] = spent.get(kind, 0.0) + 1000 * used / goals
    return dict(sorted(spent.items(), key=lambda item: -item[1]))


def print_split(by_stage: dict[str, dict[str, float]]) -> None:
    """Print each worker's CPU per goal and its split by kind of thread."""
    print("\nplangate, CPU ms per goal of each worker, by thread (ended threads not counted):")
    for stage, kinds in by_stage.items():
        split = ", ".join(f"{kind} {ms:.2f}" for kind, ms in kinds.items() if ms >= 0.005)
        print(f"  {stage:9}{sum(kinds.values()):6.2f}  ({split})")
