"""A broker's port that takes connections but stops answering (a stuck server, packets
dropped), or answers junk (a wrong server, a hostile one).

Stopped (SIGSTOP), its port still accepts: no error ever came. A goal's publish waited with no
end, so `serve`'s intake held the request (and its goal) until the broker woke, and readiness
took 22 s to say "the broker does not answer", past the 6 s the manifests' probes wait, so
the kubelet took every serve replica out of service, hearing no reason.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from plangate.bus import Bus
from plangate.client import Client, GoalHandle
from plangate.config import Settings
from plangate.readiness import broker_problem
from plangate.store import open_store
from tests.servers import redis_server

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


def test_readiness_of_a_broker_port_answering_junk_is_a_reason_not_a_fault(
    junk_broker: str,
) -> None:
    """Given a server on the broker's port that answers with junk (a wrong server, a hostile
    one), When readiness is asked, Then it says the answer cannot be read: the client's
    protocol error escaped the probe (serve answered 500, a worker dropped the request)."""
    said = within(probe_timeout() - 1, lambda: broker_problem(Bus(junk_broker, namespace="j")))

    assert said is not None
    assert said.startswith("the broker answers what plangate cannot read")
