"""What bench/pipeline.py is built from: processes it owns, a Redis, and the arrival clock."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from kombu import Connection, Consumer, Exchange, Queue, binding

_STARTED = time.monotonic()


def say(text: str) -> None:
    """Print one progress line with the time since the start."""
    print(f"[{time.monotonic() - _STARTED:6.1f} s] {text}", flush=True)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def per_call(call: Callable[[], object], count: int) -> tuple[float, float]:
    """Call `call` `count` times; return this process's CPU and the wall seconds per call."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        call()
    return (time.process_time() - cpu) / count, (time.perf_counter() - wall) / count


# --- processes --------------------------------------------------------------------------------


@dataclass
class Processes:
    """Every process this benchmark starts, so that each one is stopped whatever happens."""

    folder: Path
    running: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = field(default_factory=list)

    def start(self, name: str, command: list[str], env: dict[str, str]) -> None:
        """Start `command` in its own session (Ctrl-C reaches us, not it); log to a file."""
        log = (self.folder / f"{name}.log").open("wb")
        process = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.running.append((name, process, log))

    def stop(
        self, names: Callable[[str], bool] = lambda _: True, timeout: float = 20
    ) -> dict[str, int | None]:
        """SIGTERM the matching processes, SIGKILL what is left after `timeout`; return codes."""
        chosen = [entry for entry in self.running if names(entry[0])]
        for _, process, _ in chosen:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + timeout
        for name, process, log in chosen:
            try:
                codes[name] = process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                codes[name] = None
            log.close()
            self.running.remove((name, process, log))
        return codes

    def cpu_seconds(self, names: tuple[str, ...]) -> float:
        """Return the CPU time (user + system) the named processes have used so far (Linux)."""
        total = 0.0
        for name, process, _ in self.running:
            if name in names:
                try:
                    stat = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1]
                except OSError:
                    return float("nan")
                utime, stime = stat.split()[11:13]
                total += (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")
        return total

    def thread_cpu_seconds(self, name: str) -> dict[str, float]:
        """Return the CPU time (user + system) of each thread of the named process, by its
        kernel name (Linux; threads that ended are left out)."""
        found: dict[str, float] = {}
        for entry, process, _ in self.running:
            if entry != name:
                continue
            for task in Path(f"/proc/{process.pid}/task").iterdir():
                try:
                    comm = (task / "comm").read_text().strip()
                    stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:  # the thread ended meanwhile
                    continue
                ticks = int(stat[11]) + int(stat[12])
                found[f"{comm} {task.name}"] = ticks / os.sysconf("SC_CLK_TCK")
        return found

    def check_alive(self) -> None:
        """Raise with the log tail of any process that exited early."""
        for name, process, _ in self.running:
            if process.poll() is not None:
                tail = (self.folder / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")


def start_redis(processes: Processes) -> str:
    """Start a throwaway redis-server on a free port; return its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            "no --redis-url and no redis-server on PATH (apt-get install redis-server)"
        )
    port = free_port()
    folder = processes.folder / "redis"
    folder.mkdir()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    command += ["--save", "", "--appendonly", "no"]
    processes.start("redis", command, dict(os.environ))
    deadline = time.monotonic() + 10
    while True:
        with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return f"redis://127.0.0.1:{port}/0"
        processes.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not answer within 10 s")
        time.sleep(0.05)


# --- measuring --------------------------------------------------------------------------------


def observer_queue(exchange: Exchange, name: str, keys: tuple[str, ...]) -> Queue:
    """Return an auto-deleted queue bound to `keys` on `exchange`."""
    return Queue(
        name,
        exchange=exchange,
        bindings=[binding(exchange, routing_key=key) for key in keys],
        durable=False,
        auto_delete=True,
    )


class Arrivals:
    """Terminal messages of one side: when each goal's outcome arrived, and which it was.

    Every side's queue is consumed on one connection, so draining it serves them all.
    """

    def __init__(self, connection: Connection, queue: Queue) -> None:
        self.connection = connection
        self.seen: dict[str, tuple[float, str]] = {}
        self.consumer = Consumer(
            connection.channel(),
            queues=[queue],
            on_message=self._on_message,
            accept=["application/json"],
        )
        self.consumer.consume()

    def _on_message(self, raw: Any) -> None:
        now = time.perf_counter()
        raw.ack()
        body = raw.body if isinstance(raw.body, bytes) else str(raw.body).encode("utf-8")
        key = str(raw.delivery_info.get("routing_key", ""))
        self.seen.setdefault(str(json.loads(body)["goal_id"]), (now, key))

    def wait(self, goal_ids: set[str], timeout: float, check: Callable[[], None]) -> None:
        """Drain until every goal in `goal_ids` has arrived; TimeoutError if not in time."""
        deadline = time.monotonic() + timeout
        while not goal_ids <= self.seen.keys():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = len(goal_ids - self.seen.keys())
                raise TimeoutError(f"{missing} of {len(goal_ids)} goals not done in {timeout:g} s")
            with suppress(TimeoutError):
                self.connection.drain_events(timeout=min(remaining, 1.0))
            if remaining < timeout - 5:  # slow: make sure nobody died
                check()

    def close(self) -> None:
        """Stop consuming (the queue is auto-deleted)."""
        with suppress(Exception):
            self.consumer.cancel()


@dataclass
class Side:
    """One system under test: how to submit a goal, and where its outcomes arrive."""

    name: str
    submit: Callable[[], str]
    arrivals: Arrivals
    check: Callable[[], None]
    latencies: list[float] = field(default_factory=list)  # seconds, sequential goals
    ids: list[str] = field(default_factory=list)  # the sequential goals
    walls: list[tuple[float, float]] = field(default_factory=list)  # their wall-clock ends
    rates: list[float] = field(default_factory=list)  # goals/s, one per pipelined batch
    cpu_ms: float = float("nan")  # CPU per measured goal, of the side's worker/hop processes
    # plangate only: per stage, the CPU per measured goal of each kind of thread (ms).
    cpu_by_thread: dict[str, dict[str, float]] = field(default_factory=dict)
    # plangate only: its workers' metrics ports, and per process SQLite's write lock held and
    # waited in its batch (ms per goal).
    metrics_ports: dict[str, int] = field(default_factory=dict)
    lock_ms: dict[str, dict[str, float]] = field(default_factory=dict)

    def one(self, record: bool = True) -> None:
        """Submit one goal and wait for its outcome; record its latency."""
        wall, started = time.time(), time.perf_counter()
        goal_id = self.submit()
        self.arrivals.wait({goal_id}, 60, self.check)
        latency = self.arrivals.seen[goal_id][0] - started
        if record:
            self.latencies.append(latency)
            self.ids.append(goal_id)
            self.walls.append((wall, wall + latency))

    def batch(self, goals: int) -> None:
        """Submit `goals` goals at once and time until every one has its outcome."""
        started = time.perf_counter()
        batch = {self.submit() for _ in range(goals)}
        submitted = time.perf_counter() - started
        self.arrivals.wait(batch, max(120.0, goals / 2), self.check)
        elapsed = max(self.arrivals.seen[g][0] for g in batch) - started
        self.rates.append(goals / elapsed)
        say(f"{self.name}: {goals} submitted in {submitted:.2f} s, all done in {elapsed:.2f} s")

    def p(self, q: float) -> float:
        """Return the q-quantile (nearest rank) of the sequential latencies, in ms."""
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    @property
    def rate(self) -> float:
        """Return the mean pipelined throughput, in goals per second."""
        return statistics.fmean(self.rates)

    def outcomes(self) -> set[str]:
        """Return the message types the goals ended with."""
        return {key for _, key in self.arrivals.seen.values()}


# --- plangate ---------------------------------------------------------------------------------


def interrupt_on_signals() -> None:
    """Make SIGINT (even if inherited as ignored) and SIGTERM raise KeyboardInterrupt."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)


def forget_namespace(broker_url: str, namespace: str) -> None:
    """Remove this run's keys (queues, bindings) from a Redis we did not start."""
    import redis

    client = redis.Redis.from_url(broker_url)
    try:
        for key in client.scan_iter(match=f"*{namespace}*", count=500):
            client.delete(key)
    finally:
        client.close()
