"""A worker's health endpoint: `/healthz` (the consume loop is alive), `/readyz` (consuming).

Set `PLANGATE_HEALTH_PORT` to turn it on (unset: off). It listens on `PLANGATE_HEALTH_HOST`,
127.0.0.1 by default: enough for a compose healthcheck, which runs inside the container; a
Kubernetes probe comes from the node, so the manifests set 0.0.0.0. The answers say only
`ok` or why not, never a setting or a message.

`python -m plangate.health URL` is the probe itself, for images without curl: it exits 0 when
URL answers 200 and 1 otherwise (the compose healthchecks run it).
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from plangate.errors import ConfigError

if TYPE_CHECKING:  # the probe (`python -m plangate.health`) starts fast without pydantic
    from plangate.config import Settings

log = logging.getLogger(__name__)

Check = Callable[[], bool]
Readiness = Callable[[], "str | None"]  # None: ready; else why not, in one line
Exposition = Callable[[], bytes]  # the Prometheus text of the process's metrics
# More headers for an answer, from its path and content type (serve's security headers on its
# public port while it waits for a migration; a worker's probe port sends none).
HeadersFor = Callable[[str, str], Mapping[str, str]]
# Seconds a client may take to send its request: the probe port is reachable on the network
# (and is `serve`'s own public port while it waits for a migration), and a client that sent
# nothing held a thread of its server for good.
REQUEST_SECONDS = 10.0


def _handler_for(
    alive: Check,
    ready: Readiness,
    metrics: Exposition | None = None,
    headers_for: HeadersFor | None = None,
) -> type[BaseHTTPRequestHandler]:
    def alive_or_why() -> str | None:
        return None if alive() else "the consume loop is not running"

    checks: dict[str, Readiness] = {"/healthz": alive_or_why, "/readyz": ready}

    class HealthHandler(BaseHTTPRequestHandler):
        timeout = REQUEST_SECONDS

        def do_GET(self) -> None:
            path = self.path.partition("?")[0]
            if path == "/metrics" and metrics is not None:
                self._send(200, metrics(), "text/plain; version=0.0.4; charset=utf-8")
                return
            check = checks.get(path)
            if check is None:
                self._answer(404, {"status": "not found", "paths": sorted(checks)})
                return
            problem = check()
            if problem is None:
                self._answer(200, {"status": "ok"})
            else:
                self._answer(503, {"status": "unavailable", "reason": problem})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            self._send(status, json.dumps(body).encode() + b"\n", "application/json")

        def _send(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            headers = {"Cache-Control": "no-store"}
            if headers_for is not None:
                path = self.path.partition("?")[0]
                headers = {**headers_for(path, content_type), **headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a probe every few seconds is not worth a log line

    return HealthHandler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        listening: socket.socket | None = None,
    ) -> None:
        super().__init__(address, handler, bind_and_activate=listening is None)
        if listening is not None:  # bound and listening already: answered on as it is
            self.socket.close()
            self.socket = listening
            self.server_address = listening.getsockname()[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a failure as a record (the standard one prints a traceback on stderr)."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the prober gave up before the answer (its own timeout): nothing to say
        log.exception("the health endpoint failed on a request")


class HealthServer:
    """`/healthz` and `/readyz` on a daemon thread, answered from two checks.

    The standard library's server, not a web framework: workers have none, and two fixed
    paths need none. Its thread is a daemon so a worker that exits never waits for it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        alive: Check,
        ready: Readiness,
        metrics: Exposition | None = None,
        *,
        listening: socket.socket | None = None,
        headers_for: HeadersFor | None = None,
    ) -> None:
        handler = _handler_for(alive, ready, metrics, headers_for)
        self._server = _Server((host, port), handler, listening)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="plangate-health", daemon=True
        )

    @property
    def port(self) -> int:
        """The port it listens on (the one picked by the system when 0 was asked for)."""
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        """Start answering; return self."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop answering and free the port."""
        self.hand_over()
        self._server.server_close()

    def hand_over(self) -> None:
        """Stop answering, leaving the socket listening for the server that follows.

        `serve` waiting for the migration answers its probes on its own socket (`listening`),
        then uvicorn takes it: connections made meanwhile wait in its backlog, none refused.
        """
        if self._thread.is_alive():
            self._server.shutdown()


def start_health_server(
    settings: Settings, alive: Check, ready: Readiness, metrics: Exposition | None = None
) -> HealthServer | None:
    """Start the probe endpoint (`/healthz`, `/readyz`, `/metrics`) if a port is set.

    The port is `metrics_port`, or `health_port` (its older name); None when neither is set.
    """
    port = settings.metrics_port if settings.metrics_port is not None else settings.health_port
    if settings.health_port not in (None, port):  # one was ignored: probes found nothing there
        raise ConfigError(
            f"PLANGATE_METRICS_PORT ({port}) and PLANGATE_HEALTH_PORT ({settings.health_port}) "
            "are one port, the probes' and the metrics'; keep PLANGATE_METRICS_PORT alone"
        )
    if port is None:
        return None
    try:
        server = HealthServer(settings.health_host, port, alive, ready, metrics).start()
    except OSError as exc:  # in use, or a host that does not resolve or is not this machine's
        what = (
            "PLANGATE_METRICS_PORT" if settings.metrics_port is not None else "PLANGATE_HEALTH_PORT"
        )
        raise ConfigError(
            f"cannot serve probes on {settings.health_host}:{port}: "
            f"{exc.strerror or exc}; set {what} to a free port (0: any) or "
            "PLANGATE_HEALTH_HOST to an address of this machine"
        ) from exc
    log.info("probes and metrics on http://%s:%d/", settings.health_host, server.port)
    return server


def probe(url: str, timeout: float = 5.0) -> int:
    """Return 0 if `url` answers 200 within `timeout` seconds, else 1 (saying why on stderr)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            status = int(answer.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"{url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    """Probe the one URL given; the exit code is the probe's."""
    if len(argv) != 1:
        print("usage: python -m plangate.health URL", file=sys.stderr)
        return 2
    return probe(argv[0])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
