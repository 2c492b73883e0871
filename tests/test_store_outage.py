"""A database that stops answering under running workers: said in one line, and outlived."""

from __future__ import annotations

import os
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from plangate.store import open_store
from tests.fleet import FAST_SWEEPS, Fleet
from tests.servers import free_port, refusing_connections
from tests.support import eventually

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(120)]


def test_a_worker_whose_database_stops_answering_says_so_in_one_line_and_runs_on(
    tmp_path: Path, redis_url: str, postgres_database_url: str
) -> None:
    """Given a gate worker on PostgreSQL sweeping every half second,
    When its database refuses every connection for a while,
    Then each sweep is skipped saying the store does not answer and what to check, with no
    traceback (it logged the whole traceback, with the SQL, every sweep), and the worker runs
    on, ready again once the database answers.
    """
    fleet = Fleet(redis_url, postgres_database_url, tmp_path, extra_env=FAST_SWEEPS)
    assert fleet.plangate("db", "upgrade").returncode == 0
    worker = fleet.start("gate")
    log = tmp_path / "gate-0.log"
    try:
        eventually(lambda: "consuming" in log.read_text(), timeout=30, what="the gate consuming")
        with refusing_connections(postgres_database_url):
            said = "sweep skipped: the store does not answer"
            eventually(lambda: said in log.read_text(), timeout=30, what="a sweep skipped")
        assert worker.poll() is None, fleet.logs()
        assert "check PLANGATE_DATABASE_URL" in log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        codes = fleet.stop_all()
    assert codes == [0], fleet.logs()


def test_a_worker_started_while_the_database_refuses_waits_and_consumes_once_it_answers(
    tmp_path: Path, redis_url: str, postgres_database_url: str
) -> None:
    """Given a PostgreSQL database refusing every connection (restarting, or not up yet),
    When a planner worker starts, Then it waits, alive, its /readyz saying it waits for the
    store and why, and it consumes once the database answers; a goal then runs. It exited at
    once ("cannot open the store", exit 2): on Kubernetes, its restarts backed off and it came
    back minutes after the database."""
    port = free_port()
    fleet = Fleet(redis_url, postgres_database_url, tmp_path, extra_env=FAST_SWEEPS)
    assert fleet.plangate("db", "upgrade").returncode == 0
    log = tmp_path / "planner-0.log"
    with refusing_connections(postgres_database_url):
        worker = fleet.start("planner", PLANGATE_METRICS_PORT=str(port))
        try:
            eventually(
                lambda: "trying again in" in log.read_text(), timeout=30, what="the wait said"
            )
            alive, _ = probe(port, "/healthz")
            ready, why = probe(port, "/readyz")
            assert worker.poll() is None, fleet.logs()
            assert (alive, ready) == (200, 503), why
            assert "waiting for the store: cannot open the store at" in why
        except BaseException:
            fleet.stop_all()
            raise
    try:
        eventually(lambda: "planner worker consuming" in log.read_text(), timeout=60, what="it")
        fleet.start("gate")
        fleet.start("executor")
        done = fleet.plangate("submit", "how many tickets are open", "--wait", "--json", timeout=90)
        assert done.returncode == 0, done.stderr + fleet.logs()
        assert "Traceback" not in log.read_text()
    finally:
        codes = fleet.stop_all()
    assert codes == [0, 0, 0], fleet.logs()


def probe(port: int, path: str) -> tuple[int, str]:
    """GET a worker's probe endpoint: its status and what it said."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code, refused.read().decode()


def test_a_worker_started_on_a_database_that_never_answers_waits_saying_so_and_stops_on_sigterm(
    tmp_path: Path, redis_url: str
) -> None:
    """Given a PostgreSQL address that takes the connection and never answers (a stopped
    server, packets dropped), When a planner worker starts, Then within its connect timeout
    it says it waits for the store, /readyz says why, /metrics shows plangate_store_up 0,
    and SIGTERM ends it: it hung silently, its /readyz "starting", deaf to SIGTERM, and no
    store gauge at all for PlangateStoreDown."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # takes connections (the kernel does), answers nothing
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        port = free_port()
        # Passwords where libpq takes them: the user's, and the query's (`/readyz` showed it).
        url = f"postgresql+psycopg://plangate:UserPw11@{address}/plangate?password=QueryPw99"
        fleet = Fleet(redis_url, url, tmp_path)
        worker = fleet.start("planner", PLANGATE_METRICS_PORT=str(port))
        log = tmp_path / "planner-0.log"
        try:
            eventually(lambda: "trying again in" in log.read_text(), timeout=40, what="a try")
            ready, why = probe(port, "/readyz")
            _, exposed = probe(port, "/metrics")
            assert ready == 503, why
            assert "waiting for the store: cannot open the store at" in why
            assert "plangate_store_up 0.0" in exposed
            for secret in ("UserPw11", "QueryPw99"):
                assert secret not in why + exposed + log.read_text()
        finally:
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=30)
            fleet.stop_all()
    assert code == 0, fleet.logs()


@pytest.mark.postgres
def test_postgres_connections_send_tcp_keepalives_unless_the_url_says_otherwise(
    postgres_database_url: str,
) -> None:
    """Given a store on PostgreSQL over TCP, When a connection is opened, Then its socket sends
    keepalives (idle 30 s, every 10 s, 3 probes): a server gone mid-query (its host down, the
    network cut) held the worker on a read that never ended. Given the URL's own
    `keepalives_idle`, Then that one is used."""

    def socket_options(url: str) -> tuple[int, int, int, int]:
        store = open_store(url)
        try:
            with store.engine.connect() as connection:
                raw = connection.connection.dbapi_connection
                assert raw is not None
                sock = socket.socket(fileno=os.dup(raw.fileno()))
                try:
                    return (
                        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                    )
                finally:
                    sock.close()
        finally:
            store.close()

    joiner = "&" if "?" in postgres_database_url else "?"
    assert socket_options(postgres_database_url)[0] == 1
    assert socket_options(postgres_database_url)[1:] == (30, 10, 3)
    assert socket_options(f"{postgres_database_url}{joiner}keepalives_idle=45")[1] == 45
