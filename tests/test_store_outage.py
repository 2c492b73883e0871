"""A database that stops answering under running workers: said as one outage, and outlived."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from plangate.bus import Bus, Envelope
from plangate.store import open_store
from plangate.store.outbox import SentMarker
from schemas import GoalSubmitted
from tests.fleet import FAST_SWEEPS, Fleet
from tests.servers import free_port, refusing_connections
from tests.support import eventually

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(120)]


def test_a_database_outage_under_probes_and_scrapes_is_said_as_it_begins_and_as_it_ends(
    tmp_path: Path, redis_url: str, postgres_database_url: str
) -> None:
    """Given a gate worker on PostgreSQL sweeping every half second, its /readyz and /metrics
    polled as Kubernetes and Prometheus do,
    When its database refuses every connection for a few seconds, then answers again,
    Then the probes say so as before (503, `plangate_store_up 0`), and the log says the outage
    in two lines: as it begins (the store, its password hidden, the database's words, what to
    check) and as it ends (after how long). It said it at every probe, scrape and sweep. No
    traceback, and the worker runs on.
    """
    url = make_url(postgres_database_url).set(password="StorePw77").render_as_string(False)
    fleet = Fleet(redis_url, url, tmp_path, extra_env=FAST_SWEEPS)  # trust: no password asked
    assert fleet.plangate("db", "upgrade").returncode == 0
    port = free_port()
    worker = fleet.start("gate", PLANGATE_METRICS_PORT=str(port))
    log = tmp_path / "gate-0.log"
    try:
        eventually(lambda: probe(port, "/readyz")[0] == 200, timeout=30, what="the gate ready")
        probed: list[tuple[int, bool]] = []

        def probed_for_a_while(since: float) -> bool:
            probed.append((probe(port, "/readyz")[0], "store_up 0.0" in probe(port, "/metrics")[1]))
            return len(probed) >= 8 and time.monotonic() - since > 3  # sweeps every 0.5 s too

        with refusing_connections(postgres_database_url):
            eventually(lambda: probe(port, "/readyz")[0] == 503, timeout=10, what="not ready")
            since = time.monotonic()
            eventually(lambda: probed_for_a_while(since), timeout=30, what="probes made")
        eventually(lambda: probe(port, "/readyz")[0] == 200, timeout=30, what="ready again")
        noise = [line for line in log.read_text().splitlines() if "does not answer" in line]
        assert len(noise) == 1, noise  # as it began: not a line a probe, scrape or sweep
        eventually(lambda: "answers again" in log.read_text(), timeout=10, what="its end said")
        assert set(probed) == {(503, True)}, probed
        assert worker.poll() is None, fleet.logs()
    finally:
        codes = fleet.stop_all()
    assert codes == [0], fleet.logs()
    said = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    outage = [r["message"] for r in said if "store" in r["message"] and r["level"] != "info"]
    database = make_url(url)
    shown = re.escape(f"@{database.host}:{database.port}/{database.database}")
    store = rf"the store at postgresql\+psycopg://postgres:[^@ ]+{shown}"  # its password hidden
    assert len(outage) == 2, outage
    began, ended = outage
    assert re.match(rf"{store} does not answer \(", began), began
    assert "not currently accepting connections" in began
    assert "check the database and PLANGATE_DATABASE_URL" in began
    assert re.fullmatch(rf"{store} answers again, after \d+ s", ended), ended
    assert "StorePw77" not in log.read_text()
    assert "Traceback" not in log.read_text()


def test_outbox_marks_the_database_refuses_are_said_with_its_outage_and_no_traceback(
    postgres_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a consumer's outbox marks (rows it published, to be marked sent) on PostgreSQL,
    When its database refuses every connection while three batches are marked, then answers,
    Then the outage is said once as it begins and once as it ends, and each batch left
    unmarked in a line with no traceback (it logged a traceback a batch); a mark that fails
    otherwise (its table gone: a fault, not an outage) still logs its traceback.
    """
    store = open_store(postgres_database_url)
    caplog.set_level(logging.INFO)

    def mark(outbox_id: int) -> None:
        marker = SentMarker(store)
        marker([Envelope("goal.submitted", b"{}", {}, outbox_id)])
        marker.close()  # marks what it was given before it returns

    try:
        with refusing_connections(postgres_database_url):
            for outbox_id in (1, 2, 3):
                mark(outbox_id)
        mark(4)
        unmarked = [r for r in caplog.records if r.name == "plangate.store.outbox"]
        outage = [r.getMessage() for r in caplog.records if r.name == "plangate.store.outages"]
        with store.session() as session:
            session.execute(text("DROP TABLE outbox"))
        mark(5)
    finally:
        store.close()
    assert len(outage) == 2, outage
    assert "does not answer" in outage[0]
    assert "seen by the outbox's marks" in outage[0]
    assert "answers again, after" in outage[1]
    assert [r.getMessage() for r in unmarked] == [
        "could not mark 1 outbox rows sent: the relay sends them again"
    ] * 3
    assert all(r.exc_info is None for r in unmarked)
    [fault] = [r for r in caplog.records if r.name == "plangate.store.outbox"][3:]
    assert fault.getMessage() == "could not mark 1 outbox rows sent"
    assert fault.exc_info is not None


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
        eventually(lambda: "planner worker started" in log.read_text(), timeout=60, what="it")
        fleet.start("gate")
        fleet.start("executor")
        done = fleet.plangate("submit", "how many tickets are open", "--wait", "--json", timeout=90)
        assert done.returncode == 0, done.stderr + fleet.logs()
        assert "Traceback" not in log.read_text()
    finally:
        codes = fleet.stop_all()
    assert codes == [0, 0, 0], fleet.logs()


def test_an_executor_whose_connection_ends_while_it_starts_waits_and_then_runs_goals(
    tmp_path: Path, redis_url: str, postgres_database_url: str
) -> None:
    """Given an executor worker on PostgreSQL that has opened its store and is still starting
    (importing its tools, before it first writes its catalog),
    When the database ends its connections then (pg_terminate_backend, as in a restart),
    Then the executor waits for the store, saying so in a line, and starts once it answers:
    ready, it runs a goal, and exits 0 on SIGTERM. It exited 2 ("the store failed"), as
    for a store that is not plangate's; on Kubernetes a restart backed off for minutes.
    """
    marker = tmp_path / "import-marker"
    port = free_port()
    fleet = Fleet(redis_url, postgres_database_url, tmp_path, extra_env=FAST_SWEEPS)
    assert fleet.plangate("db", "upgrade").returncode == 0
    log = tmp_path / "executor-0.log"
    executor = fleet.start(
        "executor",
        PLANGATE_METRICS_PORT=str(port),
        PLANGATE_TOOLS="plangate.demo.tools,tests.held_import_tools",
        HELD_IMPORT_MARKER=str(marker),
    )
    try:
        eventually(marker.exists, timeout=30, what="the executor's store open, its tools loading")
        ended = end_connections_of(postgres_database_url, "plangate-executor")
        marker.with_name(marker.name + ".release").touch()

        def ready() -> bool:
            assert executor.poll() is None, fleet.logs()
            return probe(port, "/readyz")[0] == 200

        eventually(ready, timeout=60, what="the executor ready")
        fleet.start("planner")
        fleet.start("gate")
        done = fleet.plangate("submit", "how many tickets are open", "--wait", "--json", timeout=90)
        assert done.returncode == 0, done.stderr + fleet.logs()
    finally:
        codes = fleet.stop_all()
    assert ended >= 1
    assert codes == [0, 0, 0], fleet.logs()
    said = log.read_text()
    assert said.count("trying again in") == 1, said  # the wait, in one line
    assert "terminating connection due to administrator command" in said, said
    assert "Traceback" not in said, said


def end_connections_of(database_url: str, application_name: str) -> int:
    """End every connection of the process named `application_name`, as a DBA or a restart
    does; return how many were ended."""
    url = make_url(database_url)
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = %s",
            (url.database, application_name),
        ).fetchall()
    return len(rows)


def test_serve_started_while_the_database_refuses_waits_and_serves_once_it_answers(
    tmp_path: Path, redis_url: str, postgres_database_url: str
) -> None:
    """Given a PostgreSQL database refusing every connection (not up yet, failing over),
    When serve starts as the manifests start it (`--wait-for-schema 600`),
    Then it waits, alive, its /readyz saying it waits for the store, and serves once the
    database answers. It exited 2 within a second (the workers waited): on Kubernetes, a
    CrashLoopBackOff that kept review and intake down minutes after the database was back."""
    port = free_port()
    fleet = Fleet(redis_url, postgres_database_url, tmp_path, extra_env=FAST_SWEEPS)
    assert fleet.plangate("db", "upgrade").returncode == 0
    log = tmp_path / "serve-0.log"
    try:
        with refusing_connections(postgres_database_url):
            serve = fleet.serve(port, "--wait-for-schema", "600")
            eventually(
                lambda: "trying again in" in log.read_text(), timeout=30, what="the wait said"
            )
            alive, _ = probe(port, "/healthz")
            ready, why = probe(port, "/readyz")
            assert serve.poll() is None, fleet.logs()
            assert (alive, ready) == (200, 503), why
            assert "waiting for the store: cannot open the store at" in why
        fleet.ready(f"http://127.0.0.1:{port}")
    finally:
        codes = fleet.stop_all()
    assert codes == [0], fleet.logs()


def probe(port: int, path: str) -> tuple[int, str]:
    """GET a worker's probe endpoint: its status and what it said (0: nothing listens)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code, refused.read().decode()
    except urllib.error.URLError as unreached:  # not listening yet
        return 0, str(unreached.reason)


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


@pytest.mark.postgres
def test_postgres_connections_carry_the_process_name_unless_the_url_names_one(
    postgres_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a store on PostgreSQL, When a connection is opened by a process that is not a
    worker, serve or the CLI (a service's Client), Then pg_stat_activity shows it as `plangate`
    (every connection looked alike); Given the URL's own `application_name`, Then that one."""
    from plangate import process_name

    # As a service's process starts: a CLI command an earlier test ran in this process named it.
    monkeypatch.setattr(process_name, "_named", ["plangate"])

    def application_name(url: str) -> str:
        store = open_store(url)
        try:
            with store.reading() as session:
                return str(
                    session.execute(text("SELECT current_setting('application_name')")).one()[0]
                )
        finally:
            store.close()

    joiner = "&" if "?" in postgres_database_url else "?"
    assert application_name(postgres_database_url) == "plangate"
    assert application_name(f"{postgres_database_url}{joiner}application_name=billing") == "billing"


def test_a_message_waiting_out_a_database_outage_is_said_as_it_begins_not_at_each_retry(
    tmp_path: Path, redis_url: str, postgres_database_url: str
) -> None:
    """Given a planner worker on PostgreSQL, When its database refuses every connection while
    a goal arrives on its queue, and the goal is retried several times before it answers again,
    Then the log says the retries once as they begin (the database's words, what is retried)
    and once when messages no longer wait: it said each retry (43 lines in a minute).
    """
    port = free_port()
    fleet = Fleet(redis_url, postgres_database_url, tmp_path, extra_env=FAST_SWEEPS)
    assert fleet.plangate("db", "upgrade").returncode == 0
    executor_port = free_port()
    # Its tools published: the planner plans once the database answers.
    fleet.start("executor", PLANGATE_METRICS_PORT=str(executor_port))
    worker = fleet.start("planner", PLANGATE_METRICS_PORT=str(port))
    log = tmp_path / "planner-1.log"
    bus = Bus(redis_url, fleet.namespace)
    try:
        # Both started before the database refuses: an executor still starting then ended.
        for ready in (executor_port, port):
            eventually(lambda at=ready: probe(at, "/readyz")[0] == 200, timeout=30, what="ready")
        with refusing_connections(postgres_database_url):
            bus.publish([Envelope.of(GoalSubmitted(goal_id=uuid4().hex, text="count tickets"))])
            eventually(lambda: retries(port) >= 4, timeout=60, what="four retries of the goal")
        eventually(lambda: "no longer wait" in log.read_text(), timeout=60, what="its end said")
        assert worker.poll() is None, fleet.logs()
    finally:
        bus.close()
        codes = fleet.stop_all()
    assert codes == [0, 0], fleet.logs()
    said = [json.loads(line)["message"] for line in log.read_text().splitlines() if "{" in line]
    # (A goal planned before the executor's tools are published waits for them: not an outage.)
    retrying = [line for line in said if "retrying" in line and "tools yet" not in line]
    assert len(retrying) == 1, retrying
    assert retrying[0].startswith("the database is unavailable: ")
    assert "; retrying goal.submitted in 2 s (and so on while it lasts)" in retrying[0]
    ended = r"messages no longer wait out an outage, after \d+ s of retries"
    assert any(re.fullmatch(ended, line) for line in said), said


def retries(port: int) -> float:
    """Return how many messages the worker's /metrics says it retried."""
    found = re.findall(
        r'^plangate_messages_total\{[^}]*outcome="retried"[^}]*\} (\S+)$',
        probe(port, "/metrics")[1],
        re.MULTILINE,
    )
    return sum(float(count) for count in found)
