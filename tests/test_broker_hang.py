"""A broker's port that takes connections but stops answering (a stuck server, packets
dropped), or answers junk (a wrong server, a hostile one).

Stopped (SIGSTOP), its port still accepts: no error ever came. A goal's publish waited with no
end, so `serve`'s intake held the request (and its goal) until the broker woke, and readiness
took 22 s to say "the broker does not answer", past the 6 s the manifests' probes wait, so
the kubelet took every serve replica out of service, hearing no reason.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from plangate import relay
from plangate.bus import Bus
from plangate.client import Client, GoalHandle
from plangate.config import Settings
from plangate.errors import BrokerUnavailable
from plangate.lasting import Lasting
from plangate.readiness import broker_problem
from plangate.server import create_app
from plangate.store import open_store
from plangate.worker import Worker
from tests.fleet import serving_app
from tests.servers import free_port, redis_server
from tests.support import answers, eventually, get, plangate_in

pytestmark = pytest.mark.redis
MANIFESTS = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"


@pytest.fixture
def hung_redis() -> Iterator[str]:
    """A redis-server of its own, which the broker's clients reached once, then stopped."""
    with redis_server() as (url, process):
        Bus(url, namespace="hang").declare()  # the queues exist, as in a running deployment
        os.kill(process.pid, signal.SIGSTOP)
        try:
            yield url
        finally:
            os.kill(process.pid, signal.SIGCONT)


# Long enough that "after N s" counted from the sweep's first line (some 20 s in, before)
# falls well short of it.
STOPPED_SECONDS = 12.0


@pytest.mark.timeout(120)
def test_a_worker_says_a_broker_that_stopped_answering_within_seconds_and_counts_from_then(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a planner worker on a Redis of its own, When Redis stops answering (SIGSTOP) for
    12 s, Then the worker's log says so within 10 s (it took 33 s: each read of its sweep
    waited 10 s, and as long again on a new connection), and once Redis answers, says the
    outage lasted at least as long as it did (it said 32 s of a 63 s one, counted from its own
    first line)."""
    with redis_server() as (url, process), caplog.at_level(logging.INFO, "plangate.worker"):
        port = free_port()
        settings = Settings(
            data_dir=tmp_path,
            broker_url=url,
            namespace="hang",
            sweep_interval_seconds=0.2,
            health_port=port,
        )
        open_store(settings.resolved_database_url()).close()
        worker = Worker("planner", settings, concurrency=1)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            ready = f"http://127.0.0.1:{port}/readyz"
            eventually(lambda: answers(ready) == 200, 20, "the worker consuming")
            os.kill(process.pid, signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                eventually(lambda: said("sweep skipped", caplog), 20, "the outage said")
                noticed_after = time.monotonic() - stopped
                time.sleep(max(0.0, STOPPED_SECONDS - noticed_after))  # the outage itself
            finally:
                os.kill(process.pid, signal.SIGCONT)
            lasted = time.monotonic() - stopped
            back = eventually(lambda: said("answers the planner's reads again", caplog), 20)
        finally:
            worker.stop.set()
            thread.join(timeout=30)

    assert noticed_after < 10
    assert "does not answer" in said("sweep skipped", caplog)
    said_to_last = float(re.search(r"after (\d+) s", back).group(1))  # type: ignore[union-attr]
    assert said_to_last >= lasted - 1.5, back


def said(words: str, caplog: pytest.LogCaptureFixture) -> str:
    """Return the first line the worker logged with `words` in it ("": none yet)."""
    return next((r.getMessage() for r in caplog.records if words in r.getMessage()), "")


def probe_timeout() -> float:
    """Return the readiness probes' timeout, as the Kubernetes manifests set it."""
    timeouts = {
        float(container["readinessProbe"]["timeoutSeconds"])
        for path in MANIFESTS.glob("*.yaml")
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if document and document.get("kind") == "Deployment"
        for container in document["spec"]["template"]["spec"]["containers"]
        if "readinessProbe" in container
    }
    return min(timeouts)


def within(seconds: float, call: Any) -> Any:
    """Return what `call()` returns, failing if it has not returned within `seconds`."""
    answers: list[Any] = []
    thread = threading.Thread(target=lambda: answers.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert answers, f"no answer within {seconds:g} s"
    return answers[0]


def test_readiness_says_a_broker_that_stopped_answering_inside_the_probes_timeout(
    hung_redis: str,
) -> None:
    said = within(probe_timeout() - 1, lambda: broker_problem(Bus(hung_redis, namespace="hang")))

    assert said == "the broker does not answer"


def test_a_broker_that_stopped_answering_is_said_not_to_answer_not_to_be_stopped(
    hung_redis: str,
) -> None:
    """Given a Redis that takes connections but stopped answering, When plangate reads from
    it, Then the error says the broker does not answer (stuck, overloaded, or its packets
    dropped): it said to "check that the broker is running", and it was running."""
    with pytest.raises(BrokerUnavailable) as raised:
        Bus(hung_redis, namespace="hang").queue_depth("planner", read_timeout=0.5)

    said = str(raised.value)
    assert "does not answer" in said
    assert "stuck or overloaded, or the network drops its packets" in said
    assert "that the broker is running" not in said


def test_a_goal_submitted_while_the_broker_stopped_answering_is_stored_and_queued(
    hung_redis: str, tmp_path: Path
) -> None:
    """Given a Redis that stopped answering, When a client submits a goal,
    Then the submit returns (within the publish's retries, about 16 s), the goal stored and
    queued for a worker's relay, as when the broker refuses connections."""
    settings = Settings(data_dir=tmp_path, broker_url=hung_redis, namespace="hang")
    open_store(settings.resolved_database_url()).close()  # migrated, as `plangate db upgrade`
    with Client(settings) as client:
        handle: GoalHandle = within(40, lambda: client.submit("count the open tickets"))
        state = client.status(handle.goal_id)

    assert handle.queued
    assert state.status == "submitted"
    assert re.fullmatch(r"[0-9a-f]{32}", handle.goal_id)


def test_readiness_of_a_broker_port_answering_junk_is_a_reason_not_a_fault(
    junk_broker: str,
) -> None:
    """Given a server on the broker's port that answers with junk (a wrong server, a hostile
    one), When readiness is asked, Then it says the answer cannot be read: the client's
    protocol error escaped the probe (serve answered 500, a worker dropped the request)."""
    said = within(probe_timeout() - 1, lambda: broker_problem(Bus(junk_broker, namespace="j")))

    assert said is not None
    assert said.startswith("the broker answers what plangate cannot read")


def test_serve_readyz_says_a_broker_port_answering_junk_as_the_workers_readyz_does(
    junk_broker: str, tmp_path: Path
) -> None:
    """Given serve whose PLANGATE_BROKER_URL names a server answering junk,
    When /readyz is asked, Then it stays 200 (goals are stored meanwhile) and its `broker`
    field gives the reason the workers' /readyz give: it said "does not answer", while the
    server answers, with what no broker says."""
    settings = Settings(data_dir=tmp_path, broker_url=junk_broker, namespace="junk")
    open_store(settings.resolved_database_url()).close()
    with Client(settings) as client, serving_app(create_app(settings, client=client)) as url:
        status, body = get(f"{url}/readyz")
    workers_say = broker_problem(Bus(junk_broker, namespace="junk"))

    assert status == 200
    assert body["status"] == "ok"
    assert workers_say is not None
    assert body["broker"].startswith(workers_say)
    assert "goals are stored" in body["broker"]


def test_a_goal_published_to_a_broker_port_answering_junk_is_said_in_one_line_with_the_url(
    junk_broker: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a client (as serve's intake) whose PLANGATE_BROKER_URL names a server answering
    junk, When it submits two goals, Then both are stored and queued, and the log says once,
    in one line with no traceback, that the broker answers what plangate cannot read and to
    check PLANGATE_BROKER_URL: it said "publishing failed" with a traceback at each goal."""
    monkeypatch.setattr(relay, "_away", Lasting(every=60.0))  # no outage of an earlier test's
    settings = Settings(data_dir=tmp_path, broker_url=junk_broker, namespace="junk")
    open_store(settings.resolved_database_url()).close()
    with caplog.at_level(logging.WARNING, logger="plangate.relay"), Client(settings) as client:
        handles = [client.submit("count the open tickets") for _ in range(2)]

    said = [r for r in caplog.records if r.name == "plangate.relay"]
    assert all(handle.queued for handle in handles)
    assert [r.exc_info for r in said] == [None]
    assert said[0].levelno == logging.WARNING
    assert "answers what plangate cannot read" in said[0].getMessage()
    assert "PLANGATE_BROKER_URL" in said[0].getMessage()


def test_submit_to_a_broker_port_answering_junk_says_to_check_the_url_not_that_it_is_down(
    junk_broker: str, tmp_path: Path
) -> None:
    """Given `plangate submit` with PLANGATE_BROKER_URL naming a server answering junk,
    When it submits a goal, Then the goal is stored and one warning says the broker answers
    what plangate cannot read, to check PLANGATE_BROKER_URL, and that a worker with its own
    settings sends it on: it said "cannot reach the broker", as if the server were down."""
    env = {"PLANGATE_BROKER_URL": junk_broker}
    assert plangate_in(tmp_path, "db", "upgrade", **env).returncode == 0

    submitted = plangate_in(tmp_path, "submit", "count tickets", **env)

    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    [warning] = [line for line in submitted.stderr.splitlines() if "warning" in line]
    assert "answers what plangate cannot read" in warning
    assert "PLANGATE_BROKER_URL" in warning
    assert "cannot reach" not in warning
    assert "with its own broker settings" in warning
    assert "Traceback" not in submitted.stderr


def test_a_worker_on_a_broker_port_answering_junk_says_it_cannot_read_the_broker(
    junk_broker: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a planner worker whose PLANGATE_BROKER_URL names a server answering junk,
    When its sweep reads the broker, Then it says in one line, no traceback, that it cannot
    read the broker and to set PLANGATE_BROKER_URL: it said "sweep failed" with a traceback
    at every sweep, and then that it "cannot reach" a server that answers."""
    settings = Settings(
        data_dir=tmp_path, broker_url=junk_broker, namespace="junk", sweep_interval_seconds=0.1
    )
    open_store(settings.resolved_database_url()).close()
    worker = Worker("planner", settings, concurrency=1)
    thread = threading.Thread(target=worker.run, daemon=True)

    def sweep_said() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "sweep" in r.getMessage()]

    with caplog.at_level(logging.INFO, logger="plangate.worker"):
        thread.start()
        try:
            said = eventually(sweep_said, timeout=20, what="the sweep's line")
        finally:
            worker.stop.set()
            thread.join(timeout=20)

    assert said[0].getMessage().startswith("sweep skipped: the planner cannot read the broker")
    assert "set PLANGATE_BROKER_URL" in said[0].getMessage()
    assert said[0].exc_info is None
