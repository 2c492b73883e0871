"""What a stdio MCP server writes on its stderr, and how it ended, as an operator reads them.

A server's stderr went into the executor's own, its JSON log stream: a plain line broke the
stream, and a JSON one passed for plangate's own record, unredacted. Each line is now a record of
its own, bounded. A server that exited in the middle of a call left the step "MCPError:
Connection closed" and nothing in the log: its end is now logged once, with its exit code, and
the step says the server exited; a write so cut off is of unknown outcome, for a person.

The servers are `tests.mcp_raw_server` (its stderr and crash modes) and `tests.mcp_server`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("mcp")

from plangate.errors import OutcomeUnknown, ToolError
from plangate.tools import ToolContext
from plangate.tools.mcp import close_all, open_mcp_servers
from plangate.tools.mcp.loop import CLOSE_TIMEOUT
from plangate.tools.mcp.server_stderr import BURST_LINES, MAX_LINE_CHARS
from tests.fleet import Fleet
from tests.support import eventually, outer_environment, write_yaml

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = ToolContext(goal_id="g1", plan_id="p1", step_id="s1", idempotency_key="key-1")
TOKEN = "raw-server-token-5d2c8e7b"


def server_list(folder: Path, mode: str, **env: str) -> Path:
    """A server list of `tests.mcp_raw_server MODE` as `raw`, with `env`."""
    entry = {
        "command": sys.executable,
        "args": ["-m", "tests.mcp_raw_server", mode],
        "cwd": str(ROOT),
        "env": env,
        "timeout_seconds": 10,
    }
    path = folder / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"raw": entry}}), encoding="utf-8")
    return path


def messages(caplog: pytest.LogCaptureFixture, containing: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if containing in r.getMessage()]


def stderr_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("plangate-mcp-stderr-")]


@pytest.fixture(autouse=True)
def _close_servers(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO, logger="plangate.tools.mcp")
    yield
    close_all()


@pytest.mark.redis
def test_an_executors_log_stays_its_own_json_lines_whatever_a_server_writes_on_stderr(
    tmp_path: Path, redis_url: str
) -> None:
    """Given an executor worker (JSON log lines) with a stdio server that writes on its stderr
    a line that passes for plangate's own error record, terminal escapes with a carriage
    return and a forged plain record, the token it was given, and a 100 kB line,
    When the executor starts it, then stops,
    Then every line of the executor's log is a JSON object; each of the server's lines is a
    record of its own, `MCP server 'raw' said: ...`, its escapes shown, its token redacted, the
    long one cut saying how long it was; no record is a forged one.
    """
    fleet = Fleet(
        broker_url=redis_url, database_url=f"sqlite:///{tmp_path / 'p.db'}", folder=tmp_path
    )
    assert fleet.plangate("db", "upgrade").returncode == 0
    servers = server_list(tmp_path, "stderr-forge", RAW_TOKEN=TOKEN)
    try:
        fleet.start("executor", PLANGATE_MCP_SERVERS=str(servers))
        eventually(lambda: "said: LLLL" in fleet.logs(), timeout=30, what=fleet.logs())
    finally:
        assert fleet.stop_all() == [0], fleet.logs()

    text = (tmp_path / "executor-0.log").read_text(encoding="utf-8")
    assert "\x1b" not in text
    assert "\r" not in text
    entries = [json.loads(line) for line in text.splitlines()]  # fails on a line not JSON
    said = [e for e in entries if e["message"].startswith("MCP server 'raw' said: ")]
    assert [e["logger"] for e in said] == ["plangate.tools.mcp.server_stderr"] * 4, said
    forged, escapes, token, long = (
        e["message"].removeprefix("MCP server 'raw' said: ") for e in said
    )
    assert json.loads(forged)["message"] == "FORGED"
    assert escapes == r"\x1b[2J\x1b[31mred alert\x0dERROR plangate.worker: FORGED TOO"
    assert token == "my token is [redacted]"
    assert long == "L" * MAX_LINE_CHARS + "… [cut: the line had 100001 bytes]"
    assert all("FORGED" not in e["message"] for e in entries if e not in said)
    assert TOKEN not in text


def test_a_server_flooding_its_stderr_is_logged_at_a_bounded_rate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a server that writes 3,000 lines on its stderr as it starts,
    When it is started and then closed,
    Then about a burst of its lines is logged; one warning says that not all are logged, and
    one, once its stderr closes, how many were not: with those logged, all 3,000.
    """
    open_mcp_servers(server_list(tmp_path, "stderr-flood"))
    close_all()  # its stderr is read to its end, which closes as the server exits

    [summary] = eventually(lambda: messages(caplog, "that were not logged (too many)"))
    logged = messages(caplog, "MCP server 'raw' said: chatter ")
    assert BURST_LINES <= len(logged) < BURST_LINES + 20
    assert messages(caplog, "writes more than") == [
        "MCP server 'raw' writes more than 60 lines a minute on its stderr: not all are logged "
        "until it slows down (the others are counted)"
    ]
    dropped = int(summary.split(" wrote ")[1].split()[0])
    assert dropped + len(logged) == 3000


def test_a_restarted_server_leaves_no_descriptor_or_thread_behind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given the test server over stdio, its stderr read by a thread through a pipe,
    When it is killed and started again by the next call five times, and then closed,
    Then the process holds as many descriptors as before it started, and no stderr thread.
    """
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("counts descriptors in /proc")
    before = len(os.listdir("/proc/self/fd"))
    entry = {"command": sys.executable, "args": ["-m", "tests.mcp_server"], "cwd": str(ROOT)}
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"incidents": entry}}), encoding="utf-8")
    servers = open_mcp_servers(path)
    pid = {t.name: t for t in servers.tools}["incidents.server_pid"]

    for _ in range(5):
        os.kill(pid.invoke({}, CONTEXT)["result"], signal.SIGKILL)
    eventually(lambda: len(messages(caplog, "was killed by SIGKILL")) == 5)
    servers.close()

    eventually(lambda: not stderr_threads(), what="the stderr threads' end")
    eventually(lambda: len(os.listdir("/proc/self/fd")) <= before, what="descriptors closed")


def test_close_ends_within_its_bound_though_a_servers_child_keeps_its_stderr(
    tmp_path: Path,
) -> None:
    """Given a server that leaves a process of its own session holding its stderr,
    When the servers are closed,
    Then closing ends within its bound (the stderr thread is not waited for beyond it), and
    the thread ends when that process does.
    """
    effects = tmp_path / "orphan.pid"
    servers = open_mcp_servers(server_list(tmp_path, "stderr-orphan", RAW_EFFECTS=str(effects)))
    orphan = int(eventually(lambda: effects.exists() and effects.read_text()))
    try:
        started = time.monotonic()
        servers.close()
        assert time.monotonic() - started < CLOSE_TIMEOUT
        assert stderr_threads()  # it still reads: the orphan holds the pipe open
    finally:
        os.kill(orphan, signal.SIGKILL)
    eventually(lambda: not stderr_threads(), what="the stderr thread's end")


def test_a_read_whose_server_exits_mid_call_says_so_and_each_exit_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a read whose server exits with code 3 in the middle of every call,
    When it is called (and, the first try cut off, sent once more),
    Then it fails saying the server exited with code 3 during the call (not "Connection
    closed"); each of the two exits is logged once, at warning, saying the next call starts
    the server again; the server's last words are logged as its own.
    """
    (probe,) = open_mcp_servers(server_list(tmp_path, "crash-call")).tools

    with pytest.raises(ToolError) as raised:
        probe.invoke({"q": "x"}, CONTEXT)
    close_all()

    said = str(raised.value)
    assert not isinstance(raised.value, OutcomeUnknown)
    assert said.startswith("MCP server 'raw' (from ")
    assert said.endswith(
        "exited with code 3 during the call to probe, as on the first try; check the server"
    )
    exits = [
        r
        for r in caplog.records
        if r.getMessage().endswith("exited with code 3; the next call starts it again")
    ]
    assert [r.levelno for r in exits] == [logging.WARNING] * 2
    last_words = "MCP server 'raw' said: crashing in the middle of the call"
    eventually(lambda: len(messages(caplog, last_words)) == 2)


@pytest.mark.parametrize(("mode", "sent"), [("crash-write", 1), ("crash-idempotent-write", 2)])
def test_a_write_whose_server_exits_mid_call_is_of_unknown_outcome(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str, sent: int
) -> None:
    """Given a write, not idempotent or idempotent, whose server writes, then exits with code 3
    in the middle of every call,
    When it is called,
    Then its outcome is unknown (a person settles it), saying the server exited during the
    call; a write not idempotent was sent once, an idempotent one once more.
    """
    effects = tmp_path / "effects.txt"
    (probe,) = open_mcp_servers(server_list(tmp_path, mode, RAW_EFFECTS=str(effects))).tools

    with pytest.raises(OutcomeUnknown) as raised:
        probe.invoke({"q": "x"}, CONTEXT)

    said = str(raised.value)
    assert "exited with code 3 during the call to probe" in said, said
    assert "whether it took effect is unknown" in said
    assert effects.read_text(encoding="utf-8") == "written\n" * sent


def test_a_server_that_dies_between_calls_is_logged_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given the test server over stdio, idle,
    When its process is killed,
    Then a warning says at once, before any call, that it was killed and that the next call
    starts it again; the next call works.
    """
    entry = {"command": sys.executable, "args": ["-m", "tests.mcp_server"], "cwd": str(ROOT)}
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"incidents": entry}}), encoding="utf-8")
    tools = {t.name: t for t in open_mcp_servers(path).tools}

    os.kill(tools["incidents.server_pid"].invoke({}, CONTEXT)["result"], signal.SIGKILL)

    [warning] = eventually(lambda: messages(caplog, "was killed by SIGKILL"))
    assert warning == (
        f"MCP server 'incidents' (from {path}) was killed by SIGKILL; the next call starts it again"
    )
    assert tools["incidents.open_incidents"].invoke({}, CONTEXT) == {"result": "INC-1,INC-2"}


def test_run_says_a_write_cut_off_by_its_servers_exit_needs_a_person(tmp_path: Path) -> None:
    """Given `plangate run` of a goal whose one step is a write whose server exits mid-call,
    When the held plan is approved and runs,
    Then the step's outcome is unknown, not failed, with the server's exit in its error, and
    the run's stderr warns that the server exited with code 3.
    """
    playbook = {
        "playbooks": [
            {
                "name": "p",
                "pattern": "probe",
                "steps": [{"id": "p", "tool": "raw.probe", "args": {"q": "x"}}],
            }
        ]
    }
    env = outer_environment() | {
        "PLANGATE_DATA_DIR": str(tmp_path / "data"),
        "PLANGATE_MCP_SERVERS": str(server_list(tmp_path, "crash-write")),
        "PLANGATE_PLAYBOOK_FILE": str(write_yaml(tmp_path / "playbook.yaml", playbook)),
        "PLANGATE_PLANNER": "playbook",
    }
    result = subprocess.run(
        [sys.executable, "-m", "plangate", "run", "probe it", "--yes", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=90,
        check=False,
    )

    assert "Traceback" not in result.stderr, result.stderr
    assert "exited with code 3; the next call starts it again" in result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    steps = [e for e in events if e.get("step_id") == "p" and "status" in e]
    assert steps, result.stdout
    assert steps[-1]["status"] == "unknown", steps
    assert "exited with code 3 during the call to probe" in steps[-1]["error"]
