"""Worker processes for the distributed tests: start, kill, restart, stop — all for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import uvicorn

from plangate.config import Settings
from tests.servers import free_port
from tests.support import answers, eventually

STAGES = ("planner", "gate", "executor")

FAST_SWEEPS = {
    "PLANGATE_SWEEP_INTERVAL_SECONDS": "0.5",
    "PLANGATE_RECONCILE_AFTER_SECONDS": "2",
    "PLANGATE_RELAY_AFTER_SECONDS": "2",
    "PLANGATE_STEP_LEASE_SECONDS": "2",
    "PLANGATE_REDELIVERY_AFTER_SECONDS": "2",
}


@dataclass
class Fleet:
    """Worker processes of every stage sharing one broker and database, as deploy/ runs them.

    Each worker has a data folder of its own (its slot's: a worker started again in the place
    of one that ended gets the same folder, as a restarted container keeps its volume), and
    they share only the gate's public keys folder. The operator's commands and the test's
    own `Client` use a folder of their own too.
    """

    broker_url: str
    database_url: str
    folder: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    log_files: list[IO[bytes]] = field(default_factory=list)
    namespace: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")

    def env(self, **overrides: str) -> dict[str, str]:
        """Return the environment every plangate process of this fleet runs with."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANGATE_", "OTEL_"))}
        env.update(
            PLANGATE_BROKER_URL=self.broker_url,
            PLANGATE_DATABASE_URL=self.database_url,
            PLANGATE_DATA_DIR=str(self.folder / "operator-data"),
            PLANGATE_TRUSTED_KEYS_DIR=str(self.trusted_keys),
            PLANGATE_NAMESPACE=self.namespace,
            PLANGATE_DEMO_NOTIFICATIONS=str(self.folder / "notifications.jsonl"),
            PLANGATE_PLANNER="playbook",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def plangate(
        self, *args: str, timeout: float = 60, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """Run one plangate command to completion and return what it printed."""
        return subprocess.run(
            [sys.executable, "-m", "plangate", *args],
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    @property
    def trusted_keys(self) -> Path:
        """The one folder the workers share: the gate's public keys, which executors trust."""
        return self.folder / "keys" / "trusted"

    def start(self, stage: str, *options: str, **env: str) -> subprocess.Popen[bytes]:
        """Start one worker of `stage` in a data folder of its own; its log goes to a file."""
        return self._spawn(stage, ["worker", stage, *options], env)

    def serve(self, port: int, *options: str, **env: str) -> subprocess.Popen[bytes]:
        """Start `plangate serve` on 127.0.0.1:`port`, as a worker is started."""
        return self._spawn("serve", ["serve", "--port", str(port), *options], env)

    def serve_free(self, *options: str, **env: str) -> str:
        """Start `plangate serve` on a free port and return its base URL (`ready` waits)."""
        port = free_port()
        self.serve(port, *options, **env)
        return f"http://127.0.0.1:{port}"

    def ready(self, url: str) -> str:
        """Wait until the serve at `url` answers `/readyz` (fail if a serve ended); return `url`."""

        def answering() -> bool:
            ended = [
                p.returncode for s, p in self.processes if s == "serve" and p.poll() is not None
            ]
            assert not ended, f"serve exited {ended}:\n{self.logs()}"
            return answers(f"{url}/readyz") == 200

        eventually(answering, timeout=30, what=f"serve answering at {url}")
        return url

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"{name}-{len(self.processes)}.log", "wb")  # noqa: SIM115
        self.log_files.append(log)
        self.trusted_keys.parent.mkdir(parents=True, exist_ok=True)  # the shared volume
        live = sum(1 for s, p in self.processes if s == name and p.poll() is None)
        own = {"PLANGATE_DATA_DIR": str(self.folder / f"{name}-{live}-data")}
        process = subprocess.Popen(
            [sys.executable, "-m", "plangate", *args],
            env=self.env(**(own | env)),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append((name, process))
        return process

    def start_all(self, **env: str) -> None:
        """Start one worker of every stage."""
        for stage in STAGES:
            self.start(stage, **env)

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL a worker: no cleanup, no goodbye, as when a machine dies."""
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop_all(self, timeout: float = 20) -> list[int | None]:
        """SIGTERM every live worker and return their exit codes."""
        live = [p for _, p in self.processes if p.poll() is None]
        for process in live:
            process.send_signal(signal.SIGTERM)
        codes = []
        deadline = time.monotonic() + timeout
        for process in live:
            try:
                codes.append(process.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                process.kill()
                # Reaped here: a process left unwaited warns when garbage-collected, which
                # pytest pins on whichever later test happens to be running then.
                with suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
                codes.append(None)
        for log in self.log_files:
            log.close()
        return codes

    def settings(self) -> Settings:
        """Settings that reach the fleet's store, broker, namespace and signing key in-process."""
        return Settings(
            data_dir=self.folder / "operator-data",
            trusted_keys_dir=self.trusted_keys,
            database_url=self.database_url,
            broker_url=self.broker_url,
            namespace=self.namespace,
        )

    def logs(self) -> str:
        """Return every worker's log, for a failure message."""
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.folder.glob("*.log"))
        )


@contextmanager
def serving_app(app: Any) -> Iterator[str]:
    """Run an ASGI app under uvicorn in a thread on a free port; yield its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn exited while starting"
        assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
