"""SQLite's write lock during plangate's pipelined batch in `pipeline.py`, process by process.

Every writing transaction of every process on one SQLite file holds the same lock (see
`plangate/store/sqlite_lock.py`), so the lock's time held per goal, summed over the processes,
bounds the goals per second of them all. Each process counts it in its Prometheus histograms
(`plangate_sqlite_write_lock_held_seconds`, `..._waited_seconds`): the workers' are read from
their `/metrics` (each started with a `PLANGATE_METRICS_PORT`), the submitting client's from
this process's own registry. On PostgreSQL there is no such lock and nothing is printed.
"""

from __future__ import annotations

import httpx
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

SUMS = {
    "held": "plangate_sqlite_write_lock_held_seconds_sum",
    "waited": "plangate_sqlite_write_lock_waited_seconds_sum",
}
Reading = dict[str, dict[str, float]]  # by process: seconds held and waited so far


def reading(metrics_ports: dict[str, int]) -> Reading:
    """Return the lock's seconds held and waited so far, by process ("client": this one)."""
    own = {kind: REGISTRY.get_sample_value(name) or 0.0 for kind, name in SUMS.items()}
    found = {"client": own}
    for process, port in metrics_ports.items():
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).raise_for_status().text
        samples = {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        found[process] = {kind: samples.get(name, 0.0) for kind, name in SUMS.items()}
    return found


def per_goal(before: Reading, after: Reading, goals: int) -> Reading:
    """Return each process's ms held and waited per goal between two readings."""
    return {
        process: {kind: 1000 * (now[kind] - before[process][kind]) / goals for kind in SUMS}
        for process, now in after.items()
    }


def print_lock(split: Reading, rate: float) -> None:
    """Print the lock's ms per goal by process, and the goals/s its total allows."""
    held = sum(process["held"] for process in split.values())
    if held <= 0:
        return  # not on SQLite
    print("\nplangate, SQLite's write lock during its pipelined batch, ms per goal:")
    for process, ms in split.items():
        print(f"  {process:9} held {ms['held']:6.2f}   waited {ms['waited']:7.2f}")
    bound = 1000 / held
    print(f"  all       held {held:6.2f}   -> at most {bound:.0f} goals/s (the batch: {rate:.1f})")
