"""Shared fixtures: isolated settings, a running embedded pipeline, a real redis-server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from plangate.config import Settings
from plangate.embedded import Pipeline

SEED_GOAL = "Check Jira ticket count, compare with SLA, and notify on-call engineer if breached"
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose data folder, namespace and demo records belong to this test alone."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PLANGATE_DEMO_NOTIFICATIONS", str(tmp_path / "notifications.jsonl"))
    for name in ("PLANGATE_DEMO_TICKET_COUNT", "PLANGATE_DEMO_SLA", "PLANGATE_DEMO_DATA"):
        monkeypatch.delenv(name, raising=False)
    return Settings(data_dir=tmp_path / "data", namespace=f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture
def pipeline(settings: Settings) -> Iterator[Pipeline]:
    """The three stages running in threads on the memory transport and a SQLite file."""
    with Pipeline(settings) as running:
        yield running


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _missing(server: str) -> None:
    message = f"{server} is not installed (apt-get install {server})"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on 127.0.0.1, started for this test session and stopped after."""
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("redis-server")
    assert binary is not None
    port = _free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("redis-server did not start within 10 s")
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def broker_url(request: pytest.FixtureRequest) -> str:
    """Each bus-level test runs on the memory transport and on a real Redis."""
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue("redis_url"))
