"""Real servers for the tests: Redis, PostgreSQL and RabbitMQ, each started once per session.

Every server listens on 127.0.0.1 on a free port and keeps its files in its own temporary
folder; the fixture waits until it answers (with a timeout), yields its URL, then stops it and
removes the folder. A failed start says why, with the end of the server's log. A server that is
not installed skips its tests locally and fails them in CI (`CI=true`), where `.ci/run` installs
it. A server on a broker's port that answers junk is started for each test that asks.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

IN_CI = os.environ.get("CI", "").lower() == "true"
STARTUP_TIMEOUT = 60.0  # seconds; RabbitMQ takes about 5 s here, slow CI machines more
STOP_TIMEOUT = 30.0

# How long each server took to start in this session, shown after the test summary.
STARTUP_SECONDS: dict[str, float] = {}
# Each RabbitMQ node's environment by its URL: `rabbitmqctl` reaches the node only with it.
RABBITMQ_ENVIRONMENTS: dict[str, dict[str, str]] = {}


def missing(server: str, package: str | None = None) -> NoReturn:
    """Skip the test (locally) or fail it (in CI) because a server is not installed."""
    message = f"{server} is not installed (apt-get install {package or server})"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(*logs: Path, lines: int = 30) -> str:
    """Return the last lines of each log file that exists, for a failure message."""
    parts = []
    for log in logs:
        with contextlib.suppress(OSError):
            text = log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log} ---\n" + "\n".join(text))
    return "\n".join(parts) or "(no log was written)"


def wait_until_ready(
    server: str,
    ready: Callable[[], bool],
    process: subprocess.Popen[bytes] | None,
    logs: Sequence[Path],
    timeout: float = STARTUP_TIMEOUT,
) -> None:
    """Poll `ready` until it holds; fail with the log tail on timeout or if the server exits."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process is not None and process.poll() is not None:
            pytest.fail(
                f"{server} exited with status {process.returncode} while starting:\n"
                + log_tail(*logs)
            )
        if time.monotonic() > deadline:
            pytest.fail(f"{server} did not answer within {timeout:g} s:\n" + log_tail(*logs))
        time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """Stop a server started in its own session: SIGTERM, then SIGKILL its whole group."""
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    # Whatever the server left behind in its session (helpers, a hung server) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=timeout)


def accepts_connections(port: int) -> bool:
    """Return True once something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


# --- A broker's port that answers junk ---------------------------------------------------------


@pytest.fixture
def junk_broker() -> Iterator[str]:
    """A server on a broker's port that answers every request with bytes no protocol has."""
    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    stop = threading.Event()

    def answer(connection: socket.socket) -> None:
        with connection:
            while not stop.is_set() and connection.recv(4096):
                connection.sendall(b"\x00\xffnot a broker\r\n")

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                connection, _ = listening.accept()
                threading.Thread(target=answer, args=(connection,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop.set()
        listening.close()


# --- Redis ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server on 127.0.0.1, started for this test session and stopped after."""
    started = time.monotonic()
    with redis_server() as (url, _process):
        STARTUP_SECONDS["redis"] = time.monotonic() - started
        yield url


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start a redis-server of its own on 127.0.0.1; yield its URL and process, then stop it."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server")
    folder = Path(tempfile.mkdtemp(prefix="plangate-redis-"))
    log = folder / "redis.log"
    port = free_port()
    process = subprocess.Popen(
        [
            *(binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)),
            *("--save", "", "--appendonly", "no", "--logfile", str(log)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until_ready("redis-server", lambda: accepts_connections(port), process, [log], 10)
        yield f"redis://127.0.0.1:{port}/0", process
    finally:
        stop_process(process)
        shutil.rmtree(folder, ignore_errors=True)


# --- PostgreSQL -------------------------------------------------------------------------------


def _postgres_bin_dir() -> Path | None:
    """Return the folder of initdb and pg_ctl (Debian keeps them off PATH, per version)."""
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        return Path(on_path).parent
    installed = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")]
    versions = {int(d.parent.name): d for d in installed if d.parent.name.isdigit()}
    return versions[max(versions)] if versions else None


def _as_postgres_user(folder: Path) -> list[str]:
    """Return the command prefix that runs PostgreSQL as a user it accepts.

    PostgreSQL refuses to run as root: as root, run it as `postgres` (owning the folder).
    """
    if os.geteuid() != 0:
        return []
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root, but there is no `postgres` user to run PostgreSQL as")
    os.chown(folder, user.pw_uid, user.pw_gid)
    return ["runuser", "-u", "postgres", "--"]


def _run_or_fail(command: list[str], what: str, logs: Sequence[Path]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        pytest.fail(
            f"{what} failed with status {result.returncode}:\n{result.stdout}{result.stderr}\n"
            + log_tail(*logs)
        )


def _postgres_answers(conninfo: str) -> bool:
    try:
        with psycopg.connect(conninfo, connect_timeout=2) as connection:
            connection.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL on 127.0.0.1 (initdb + pg_ctl, trust auth) for this test session.

    Yields `postgresql+psycopg://postgres@127.0.0.1:PORT/postgres`; tests that write should use
    `postgres_database_url`, which gives each test a database of its own.
    """
    bin_dir = _postgres_bin_dir()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        missing("PostgreSQL", "postgresql")
    # Not under pytest's tmp folder: that is private to us, and the server may run as postgres.
    folder = Path(tempfile.mkdtemp(prefix="plangate-postgres-"))
    data, log = folder / "data", folder / "postgres.log"
    port = free_port()
    run_as = _as_postgres_user(folder)
    pg_ctl = [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data)]
    started = time.monotonic()
    try:
        _run_or_fail(
            [
                *(*run_as, str(bin_dir / "initdb"), "-D", str(data)),
                *("-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"),
            ],
            "initdb",
            [],
        )
        # Durability settings off: a test database is thrown away, and this makes it fast.
        options = (
            f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        seconds = f"{STARTUP_TIMEOUT:.0f}"
        try:
            _run_or_fail(
                [*pg_ctl, "-l", str(log), "-o", options, "-w", "-t", seconds, "start"],
                "pg_ctl start",
                [log],
            )
            conninfo = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
            wait_until_ready("PostgreSQL", lambda: _postgres_answers(conninfo), None, [log])
            STARTUP_SECONDS["postgres"] = time.monotonic() - started
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        finally:
            # Also after a start that timed out: the server may be up all the same.
            if (data / "postmaster.pid").exists():
                subprocess.run(
                    [*pg_ctl, "-m", "fast", "-w", "-t", f"{STOP_TIMEOUT:.0f}", "stop"],
                    capture_output=True,
                    timeout=STOP_TIMEOUT + 10,
                    check=False,
                )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_database_url(postgres_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped after it."""
    with fresh_database(postgres_url) as url:
        yield url


@contextlib.contextmanager
def fresh_database(postgres_url: str) -> Iterator[str]:
    """Create an empty database on the server at `postgres_url`; yield its URL; drop it after."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(False)
    finally:
        # FORCE: a connection the test left open must not keep its database alive.
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextlib.contextmanager
def refusing_connections(database_url: str) -> Iterator[None]:
    """Have a test's PostgreSQL database refuse every connection, its sessions ended, as in a
    restart; it answers again when the block ends."""
    url = make_url(database_url)
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(False)
    name = sql.Identifier(str(url.database))

    def allow(allowed: bool) -> None:
        with psycopg.connect(admin, autocommit=True) as connection:
            statement = sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}")
            connection.execute(statement.format(name, sql.SQL(str(allowed).lower())))
            if not allowed:
                connection.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (url.database,),
                )

    allow(False)
    try:
        yield
    finally:
        allow(True)


# --- RabbitMQ ---------------------------------------------------------------------------------

# The AMQP 0-9-1 protocol header; a ready broker answers it with a Connection.Start method frame.
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def _rabbitmq_server() -> str | None:
    """Return the real start script (Debian's /usr/sbin one switches user and folder first)."""
    debian = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    return str(debian) if debian.exists() else shutil.which("rabbitmq-server")


def _amqp_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(_AMQP_HEADER)
            return sock.recv(1)[:1] == b"\x01"
    except OSError:
        return False


def _rabbitmq_environment(folder: Path, port: int, epmd_port: int) -> dict[str, str]:
    """Point every file, port and name of a RabbitMQ node at this session alone."""
    plugins = folder / "enabled_plugins"
    plugins.write_text("[].\n", encoding="utf-8")
    return {
        **os.environ,
        "HOME": str(folder),  # the Erlang cookie goes here
        "RABBITMQ_NODENAME": f"plangate-{uuid.uuid4().hex[:8]}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "ERL_EPMD_PORT": str(epmd_port),
        "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
        "RABBITMQ_LOG_BASE": str(folder / "log"),
        "RABBITMQ_LOGS": str(folder / "log" / "rabbit.log"),
        "RABBITMQ_PID_FILE": str(folder / "rabbit.pid"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
        # Base names of files that do not exist: no /etc/rabbitmq configuration is read.
        "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
        "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
    }


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """A real RabbitMQ on 127.0.0.1 for this test session (guest/guest, vhost `/`).

    It gets its own epmd on a free port, so it neither needs nor leaves a system-wide one.
    A port taken by another process in the seconds the node takes to start (eaddrinuse: CI
    lost two tests to it) means a start on other ports.
    """
    server, epmd = _rabbitmq_server(), shutil.which("epmd")
    if server is None or epmd is None:
        missing("rabbitmq-server")
    started = time.monotonic()
    for attempt in range(3):
        folder = Path(tempfile.mkdtemp(prefix="plangate-rabbitmq-"))
        processes: list[subprocess.Popen[bytes]] = []
        try:
            url = _start_rabbitmq(server, epmd, folder, processes)
        except pytest.fail.Exception as exc:
            for process in reversed(processes):
                stop_process(process)
            shutil.rmtree(folder, ignore_errors=True)
            if "eaddrinuse" not in str(exc) or attempt == 2:
                raise
            continue
        break
    STARTUP_SECONDS["rabbitmq"] = time.monotonic() - started
    try:
        yield url
    finally:
        # The node shuts down cleanly on SIGTERM; then its epmd goes.
        for process in reversed(processes):
            stop_process(process)
        shutil.rmtree(folder, ignore_errors=True)


def _start_rabbitmq(
    server: str, epmd: str, folder: Path, processes: list[subprocess.Popen[bytes]]
) -> str:
    """Start an epmd and a node in `folder` (each appended to `processes`); return its URL."""
    output, log = folder / "server.out", folder / "log" / "rabbit.log"
    port, epmd_port = free_port(), free_port()
    env = _rabbitmq_environment(folder, port, epmd_port)
    with (folder / "epmd.out").open("wb") as epmd_output:
        processes.append(
            subprocess.Popen(
                [epmd, "-port", str(epmd_port), "-address", "127.0.0.1"],
                stdout=epmd_output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    wait_until_ready(
        "epmd", lambda: accepts_connections(epmd_port), processes[0], [folder / "epmd.out"], 10
    )
    with output.open("wb") as server_output:
        processes.append(
            subprocess.Popen(
                [server],
                stdout=server_output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=folder,
                start_new_session=True,
            )
        )
    wait_until_ready("rabbitmq-server", lambda: _amqp_answers(port), processes[1], [output, log])
    url = f"amqp://guest:guest@127.0.0.1:{port}//"
    RABBITMQ_ENVIRONMENTS[url] = env
    return url


def rabbitmqctl(url: str, *args: str) -> str:
    """Run `rabbitmqctl` against the node the `rabbitmq_url` fixture started at `url`.

    Return what it printed.
    """
    control = Path(_rabbitmq_server() or "rabbitmq-server").with_name("rabbitmqctl")
    done = subprocess.run(
        [str(control), *args],
        env=RABBITMQ_ENVIRONMENTS[url],
        capture_output=True,
        check=True,
        timeout=60,
        text=True,
    )
    return done.stdout


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how long each real server took to start, so a slow start is seen, not guessed."""
    if STARTUP_SECONDS:
        started = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in STARTUP_SECONDS.items())
        terminalreporter.write_line(f"servers started: {started}")
