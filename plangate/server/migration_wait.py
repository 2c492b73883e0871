"""`serve` waiting at start for its database and its migration, answering its probes.

The app's own `/healthz` and `/readyz` come only once its store is open, and uvicorn only
then: meanwhile the port `serve` listens on answers them itself, `/healthz` 200 (the process
lives: a liveness probe must not restart it) and `/readyz` 503 with what it waits for (any
other path is 404: nothing routes to a replica that is not ready), each answer with the app's
security headers (it is the app's public port). Then uvicorn takes the same socket over.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from plangate import metrics
from plangate.client import Client
from plangate.config import Settings
from plangate.errors import ConfigError
from plangate.health import HealthServer
from plangate.schema_wait import StoreWait
from plangate.server.security_headers import security_headers


def open_client(settings: Settings, listening: socket.socket, seconds: float) -> Client | None:
    """Open serve's Client, waiting while its database does not answer (and its schema).

    Up to `seconds` while the schema is behind this plangate's. None: a SIGTERM ended the
    wait (a clean stop, exit 0, as a worker's).
    """
    waits = StoreWait(seconds)
    # Tried once first: a current schema (or no wait asked for) starts as it always did, with
    # no probe server nor signal handler of this module's in the way.
    try:
        return Client(settings)
    except ConfigError as exc:
        delay = waits.retry_after(exc)
        if delay is None:
            raise
    stop = threading.Event()
    with _answering(listening, waits, stop):
        while not stop.wait(delay):
            try:
                client = Client(settings)
            except ConfigError as exc:
                delay = waits.retry_after(exc)
                if delay is None:
                    raise
            else:
                waits.migration.ended()
                return client
    return None


@contextmanager
def _answering(listening: socket.socket, waits: StoreWait, stop: threading.Event) -> Iterator[None]:
    """Answer the probes on `listening`, and take SIGTERM as the end of the wait."""
    probes = HealthServer(
        "",
        0,
        alive=lambda: True,
        ready=lambda: waits.reason,
        metrics=metrics.exposition,
        listening=listening,
        headers_for=security_headers,
    ).start()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if in_main else None
    try:
        yield
    finally:
        if in_main:  # uvicorn's own handler comes next
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        probes.hand_over()
