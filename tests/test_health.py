"""Health probes: a worker's `/healthz` and `/readyz`, serve's, and the probe command."""

from __future__ import annotations

import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine

from plangate import health
from plangate.client import Client
from plangate.config import Settings
from plangate.health import HealthServer, main
from plangate.readiness import not_ready
from plangate.server import create_app
from plangate.store import Store, open_store, schema
from plangate.worker import Worker
from tests.fleet import serving_app
from tests.servers import free_port
from tests.support import answers, eventually, get, plangate_in
from tests.test_distributed import OwnRedis


@pytest.fixture
def flags() -> Iterator[tuple[threading.Event, threading.Event, str]]:
    alive, ready = threading.Event(), threading.Event()
    server = HealthServer(
        "127.0.0.1", 0, alive.is_set, lambda: None if ready.is_set() else "not consuming"
    ).start()
    try:
        yield alive, ready, f"http://127.0.0.1:{server.port}"
    finally:
        server.close()


def test_each_path_answers_its_own_check(
    flags: tuple[threading.Event, threading.Event, str],
) -> None:
    alive, ready, url = flags

    status, body = get(f"{url}/healthz")
    assert (status, body["status"]) == (503, "unavailable")
    assert get(f"{url}/readyz")[0] == 503
    alive.set()
    assert get(f"{url}/healthz") == (200, {"status": "ok"})
    assert get(f"{url}/readyz")[0] == 503
    ready.set()
    assert get(f"{url}/readyz") == (200, {"status": "ok"})
    assert get(f"{url}/metrics")[0] == 404


def test_the_probe_command_exits_0_only_on_200(
    flags: tuple[threading.Event, threading.Event, str], capsys: pytest.CaptureFixture[str]
) -> None:
    alive, _, url = flags
    alive.set()

    assert main([f"{url}/healthz"]) == 0
    assert main([f"{url}/readyz"]) == 1
    assert "HTTP 503" in capsys.readouterr().err
    assert main([f"http://127.0.0.1:{free_port()}/readyz"]) == 1
    assert main([]) == 2


def test_a_worker_is_ready_once_consuming_and_gone_after_it_stops(tmp_path: Path) -> None:
    """Given a gate worker with PLANGATE_HEALTH_PORT set, in a thread on the memory broker,
    When it starts consuming, Then /readyz and /healthz answer 200;
    When it is stopped, Then the port no longer answers.
    """
    port = free_port()
    settings = Settings(
        data_dir=tmp_path,
        broker_url="memory://",
        namespace="health",
        health_port=port,
    )
    open_store(settings.resolved_database_url()).close()
    worker = Worker("gate", settings, concurrency=1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: answers(f"{url}/readyz") == 200, timeout=20, what="ready")
        assert get(f"{url}/healthz") == (200, {"status": "ok"})
    finally:
        worker.stop.set()
        thread.join(timeout=20)
    assert not thread.is_alive()
    assert answers(f"{url}/healthz") is None


def test_a_worker_without_a_health_port_opens_none() -> None:
    assert Settings(data_dir=Path("/nonexistent")).health_port is None


def test_serve_answers_healthz_and_readyz_from_its_store(tmp_path: Path) -> None:
    """Given serve on a SQLite store, Then /healthz and /readyz answer 200;
    When its store stops answering, Then /readyz answers 503 with a one-line reason that names
    no host, and /healthz still answers 200.
    """
    settings = Settings(data_dir=tmp_path, broker_url="memory://", namespace="health")
    open_store(settings.resolved_database_url()).close()
    with Client(settings) as client:
        app = create_app(settings, client=client)
        with serving_app(app) as url:
            assert get(f"{url}/healthz") == (200, {"status": "ok"})
            assert get(f"{url}/readyz") == (200, {"status": "ok"})

            nowhere = f"postgresql+psycopg://user:secret@127.0.0.1:{free_port()}/none"
            working = app.state.desk.store
            app.state.desk.store = Store(create_engine(nowhere))
            try:
                status, body = get(f"{url}/readyz")
                assert get(f"{url}/healthz")[0] == 200
            finally:
                app.state.desk.store.close()
                app.state.desk.store = working

    assert status == 503
    assert body == {"status": "unavailable", "reason": "the store does not answer"}


@pytest.mark.redis
def test_readyz_of_a_worker_and_of_serve_follows_the_broker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a worker and serve on a Redis of their own,
    When Redis stops, Then the worker's /readyz answers 503 "the broker does not answer" (it
    said only "not consuming"), and logs nothing at each probe (the outage is said by the
    consume loop, once: a line a probe was noise), and serve's stays 200 saying goals are
    stored meanwhile: it answered 503, and a readiness probe took every replica out of its
    Service, refusing goals its outbox would have sent; When Redis is back, Then both are
    ready, and say nothing more.
    """
    redis = OwnRedis(tmp_path)
    port = free_port()
    settings = Settings(
        data_dir=tmp_path / "data", broker_url=redis.url, namespace="ready", health_port=port
    )
    open_store(settings.resolved_database_url()).close()
    worker = Worker("gate", settings, concurrency=1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    worker_url = f"http://127.0.0.1:{port}/readyz"
    try:
        with Client(settings) as client, serving_app(create_app(settings, client=client)) as url:
            eventually(lambda: answers(worker_url) == 200, timeout=20, what="worker ready")
            assert get(f"{url}/readyz") == (200, {"status": "ok"})

            redis.stop()
            down = {"status": "unavailable", "reason": "the broker does not answer"}
            stored = "the broker does not answer: goals are stored, and sent once it takes them"
            assert get(f"{url}/readyz") == (200, {"status": "ok", "broker": stored})
            assert get(f"{url}/healthz")[0] == 200
            eventually(lambda: answers(worker_url) == 503, timeout=20, what="worker unready")
            assert get(worker_url) == (503, down)  # the broker named, not "not consuming"
            for _ in range(3):
                get(worker_url)
            assert [r for r in caplog.records if r.name == "plangate.readiness"] == []

            redis.restart()
            eventually(lambda: answers(worker_url) == 200, timeout=30, what="worker ready")
            eventually(
                lambda: get(f"{url}/readyz") == (200, {"status": "ok"}), timeout=20, what="serve"
            )
    finally:
        worker.stop.set()
        thread.join(timeout=30)
        redis.stop()


def test_readyz_says_when_the_schema_is_not_the_one_this_plangate_needs(tmp_path: Path) -> None:
    """Given a store one migration behind this plangate, Then it is not ready, and says why."""
    settings = Settings(data_dir=tmp_path, broker_url="memory://", namespace="schema")
    store = open_store(settings.resolved_database_url())
    try:
        assert not_ready(store) is None
        config = schema._config()
        with store.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "-1")
        reason = not_ready(store)
    finally:
        store.close()
    assert reason is not None
    assert "run `plangate db upgrade` first" in reason


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ({"PLANGATE_METRICS_PORT": "in use"}, "Address already in use"),
        ({"PLANGATE_HEALTH_PORT": "0", "PLANGATE_HEALTH_HOST": "no.such.host.invalid"}, "host"),
    ],
)
def test_a_worker_whose_probes_cannot_listen_says_what_to_set_in_one_line(
    setting: dict[str, str], said: str, tmp_path: Path
) -> None:
    """Given a probe port another process listens on, or a probe host that does not resolve,
    When a worker starts, Then it exits 2 with one line naming the address and what to set
    (it printed a traceback and exited 1).
    """
    assert plangate_in(tmp_path, "db", "upgrade").returncode == 0
    with socket.create_server(("127.0.0.1", 0)) as taken:
        env = {k: str(taken.getsockname()[1]) if v == "in use" else v for k, v in setting.items()}
        # The planner: a gate would first warn that it has no reviewers file.
        started = plangate_in(tmp_path, "worker", "planner", **env)
    assert started.returncode == 2, started.stderr
    assert started.stderr.startswith("error: cannot serve probes on "), started.stderr
    assert said in started.stderr
    assert "Traceback" not in started.stderr
    assert len(started.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [("worker", "gate"), ("serve",)])
def test_a_log_level_that_is_no_level_is_refused_in_one_line(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    """Given PLANGATE_LOG_LEVEL=LOUD, When a worker or serve starts, Then it exits 2 naming
    the variable and the levels there are (it was a traceback there, and silently accepted by
    every other command)."""
    started = plangate_in(tmp_path, *command, PLANGATE_LOG_LEVEL="LOUD")
    assert started.returncode == 2, started.stderr
    assert "PLANGATE_LOG_LEVEL" in started.stderr
    assert "'WARNING'" in started.stderr
    assert "Traceback" not in started.stderr


def test_a_log_level_is_read_in_any_case() -> None:
    assert Settings(data_dir=Path("/nonexistent"), log_level="debug").log_level == "DEBUG"


@pytest.mark.parametrize(("given", "level"), [("warn", "WARNING"), ("FATAL", "CRITICAL")])
def test_the_aliases_python_logging_takes_are_taken(given: str, level: str) -> None:
    """WARN and FATAL worked before the level was checked: a deployment setting them starts."""
    assert Settings(data_dir=Path("/nonexistent"), log_level=given).log_level == level


def test_readiness_reads_the_store_while_another_process_holds_its_write_lock(
    tmp_path: Path,
) -> None:
    """Given a SQLite store whose write lock another process holds (a long write, a backup),
    Then readiness still reads the schema's revision and says ready; it asked for the write
    lock, so `/readyz` hung for the busy timeout (30 s) and then said the store did not answer.
    """
    settings = Settings(data_dir=tmp_path, broker_url="memory://", namespace="locked")
    store = open_store(settings.resolved_database_url())
    holder = sqlite3.connect(tmp_path / "plangate.db", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        assert not_ready(store) is None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        store.close()


def test_readiness_says_when_the_database_file_left_its_path(tmp_path: Path) -> None:
    """Given a SQLite store whose file is moved away while the process runs,
    Then it is not ready, saying so; its open connections still wrote to the moved file while
    every other process found no database at the path, and `/readyz` said ok.
    """
    settings = Settings(data_dir=tmp_path, broker_url="memory://", namespace="moved")
    store = open_store(settings.resolved_database_url())
    try:
        assert not_ready(store) is None
        (tmp_path / "plangate.db").rename(tmp_path / "elsewhere.db")
        assert not_ready(store) == "the database file is no longer at its path"
    finally:
        store.close()


def test_a_prober_that_hangs_up_early_leaves_no_traceback(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Given a readiness check that takes a moment, and a prober that hangs up before it ends,
    Then the server goes on answering and writes nothing to stderr; the standard server
    printed a BrokenPipeError traceback in the middle of the JSON log.
    """
    entered, release = threading.Event(), threading.Event()

    def slow() -> None:
        entered.set()
        release.wait(5)

    server = HealthServer("127.0.0.1", 0, lambda: True, slow).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as prober:
            prober.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            prober.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert entered.wait(5)
        release.set()  # the answer now meets a connection reset
        assert get(f"http://127.0.0.1:{server.port}/healthz")[0] == 200
    finally:
        server.close()
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.redis
def test_a_health_port_beside_another_metrics_port_is_refused(
    tmp_path: Path, redis_url: str
) -> None:
    """Given PLANGATE_METRICS_PORT and PLANGATE_HEALTH_PORT set to two ports,
    When a worker starts, Then it exits 2 saying they are one port: the health port was
    ignored, and probes aimed at it restarted a worker that was fine.
    """
    assert plangate_in(tmp_path, "db", "upgrade").returncode == 0
    ports = {"PLANGATE_METRICS_PORT": str(free_port()), "PLANGATE_HEALTH_PORT": str(free_port())}

    started = plangate_in(tmp_path, "worker", "planner", PLANGATE_BROKER_URL=redis_url, **ports)

    assert started.returncode == 2
    assert "are one port, the probes' and the metrics'; keep PLANGATE_METRICS_PORT alone" in (
        started.stderr
    )


def test_a_client_that_sends_nothing_is_let_go(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a probe port (a worker's, or serve's public port while it waits for a migration),
    When a client connects and sends nothing,
    Then the server closes the connection after its request deadline, and answers others
    meanwhile: each such client held a thread of it for good.
    """
    monkeypatch.setattr(health, "REQUEST_SECONDS", 0.5)
    server = HealthServer("127.0.0.1", 0, lambda: True, lambda: None).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as silent:
            assert get(f"http://127.0.0.1:{server.port}/healthz")[0] == 200
            silent.settimeout(10)
            assert silent.recv(1) == b""  # closed by the server, not by this test's timeout
    finally:
        server.close()
