"""How long the command line takes to answer, beside what any Python program on this stack costs.

Prints the median wall time of each command over several runs, interleaved so that a busy
moment of the machine hits every side alike:

- `python -c pass`: the interpreter alone;
- the floor of a command that reads the store: importing typer, pydantic-settings and
  SQLAlchemy's ORM, nothing of plangate (what `status` cannot do without on this stack);
- `plangate --help`, and `plangate status ID` on a goal that `plangate run` completed;
- `plangate run` with no collector configured and with one that is down: what exporting its
  spans at exit adds when nothing answers;
- a worker's exit at SIGTERM (a planner on a Redis of the bench's own, having traced a goal)
  with no collector, with one that is down and with one that hangs: what its last spans cost.

    python bench/cli_startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import Processes, start_redis

PLANGATE = [sys.executable, "-m", "plangate"]
FLOOR_IMPORTS = "import typer, pydantic_settings, sqlalchemy.orm"


def timed(command: list[str], env: dict[str, str]) -> float:
    """Run a command to its end; return its wall time in seconds (it must succeed)."""
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def completed_goal(env: dict[str, str]) -> str:
    """Run one goal end to end in the embedded mode; return its id."""
    done = subprocess.run(
        [*PLANGATE, "run", "how many tickets are open", "--yes"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    found = re.search(r"[Gg]oal ([0-9a-f]{8})", done.stdout)
    if found is None:
        sys.exit(f"no goal id in the output of `plangate run`:\n{done.stdout}")
    return found.group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each command (median)")
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as data:
        env = {**os.environ, "PLANGATE_DATA_DIR": data}
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        # As installed Python runs: bytecode cached after the first run (some sandboxes set
        # this, and then every run compiles plangate's own modules again).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        goal = completed_goal(env)
        sides = {
            "python -c pass": [sys.executable, "-c", "pass"],
            f"floor: {FLOOR_IMPORTS}": [sys.executable, "-c", FLOOR_IMPORTS],
            "plangate --help": [*PLANGATE, "--help"],
            f"plangate status {goal}": [*PLANGATE, "status", goal],
        }
        times: dict[str, list[float]] = {name: [] for name in sides}
        # `plangate run` with no collector configured, and with one that is down (spans are
        # exported at exit): what the collector being down adds.
        down = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
        run = [*PLANGATE, "run", "how many tickets are open", "--yes"]
        exits = {"plangate run": (run, env), "plangate run, its collector down": (run, down)}
        exit_times: dict[str, list[float]] = {name: [] for name in exits}
        for _ in range(runs):
            for name, command in sides.items():
                times[name].append(timed(command, env))
            for name, (command, run_env) in exits.items():
                exit_times[name].append(timed(command, run_env))
    bare = statistics.median(times["python -c pass"])
    print(f"median wall time of {runs} runs each (interleaved), {Path(sys.executable).name}")
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"  {name:<60} {median * 1000:7.0f} ms  {median / bare:5.1f}x bare Python")
    up, gone = (statistics.median(measured) for measured in exit_times.values())
    for name, median in zip(exit_times, (up, gone), strict=True):
        print(f"  {name:<60} {median * 1000:7.0f} ms")
    print(f"  a collector down adds {gone - up:.2f} s at exit (target <= 1 s)")
    print_worker_exits(runs)


def print_worker_exits(runs: int) -> None:
    """Print the median time a worker takes to exit at SIGTERM, by its collector's state."""
    with tempfile.TemporaryDirectory() as folder, socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)  # connections complete in the kernel; nothing ever answers them
        processes = Processes(Path(folder))
        try:
            env = {
                **os.environ,
                "PLANGATE_BROKER_URL": start_redis(processes),
                "PLANGATE_DATABASE_URL": f"sqlite:///{folder}/plangate.db",
                "PLANGATE_PLANNER": "playbook",
            }
            env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
            subprocess.run([*PLANGATE, "db", "upgrade"], env=env, check=True, capture_output=True)
            collectors = {
                "none": None,
                "down": f"http://127.0.0.1:{closed_port()}",
                "hung": f"http://127.0.0.1:{hung.getsockname()[1]}",
            }
            exits: dict[str, list[float]] = {name: [] for name in collectors}
            for run in range(runs):
                for name, endpoint in collectors.items():
                    exits[name].append(worker_exit(processes, env, endpoint, f"{name}{run}"))
        finally:
            processes.stop()
    print(f"a planner worker's exit at SIGTERM, having traced a goal (median of {runs})")
    for name, measured in exits.items():
        print(f"  its collector {name:<5} {statistics.median(measured) * 1000:7.0f} ms")


def worker_exit(
    processes: Processes, env: dict[str, str], endpoint: str | None, name: str
) -> float:
    """Start a planner, let it trace one goal, SIGTERM it; return the seconds it took to exit."""
    worker_env = {**env, "PLANGATE_DATA_DIR": str(processes.folder / name)}
    if endpoint is not None:
        worker_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    processes.start(name, [*PLANGATE, "worker", "planner"], worker_env)
    _, process, _ = processes.running[-1]
    log = processes.folder / f"{name}.log"
    # With no executor running, the planner traces the goal, then hands it back to wait.
    subprocess.run(
        [*PLANGATE, "submit", "restart the api"], env=env, check=True, capture_output=True
    )
    deadline = time.monotonic() + 30
    while "no executor has published its tools" not in log.read_text(errors="replace"):
        if time.monotonic() > deadline or process.poll() is not None:
            sys.exit(f"the planner did not take the goal:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    started = time.perf_counter()
    processes.stop(lambda entry: entry == name, timeout=60)
    return time.perf_counter() - started


def closed_port() -> int:
    """A local port nothing listens on (bound, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


if __name__ == "__main__":
    main()
