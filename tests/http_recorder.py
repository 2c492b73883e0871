"""A real HTTP server on 127.0.0.1 for integration tests: records requests, answers as scripted.

Not a mock: the integrations open real sockets and speak real HTTP to it, so headers, bodies,
timeouts and retries are exercised as they would be against PagerDuty, Jira or a webhook.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

# Read by the integrations; a developer's own settings must not leak into a test.
INTEGRATION_VARIABLES = (
    "JIRA_URL",
    "JIRA_JQL",
    "JIRA_USER",
    "JIRA_API_TOKEN",
    "JIRA_TOKEN",
    "PAGERDUTY_ROUTING_KEY",
    "PAGERDUTY_EVENTS_URL",
    "PLANGATE_WEBHOOK_ALLOWED_HOSTS",
    "PLANGATE_HTTP_TIMEOUT",
    "PLANGATE_HTTP_ATTEMPTS",
)


@dataclass(frozen=True)
class Reply:
    """How to answer one request: a status, a body (JSON, or bytes sent as they are), headers,
    and how long to wait first."""

    status: int = 200
    body: Any = field(default_factory=lambda: {"ok": True})
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Recorded:
    """One request as the server received it; header names are lower-case."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpRecorder:
    """The server's state: what it was asked, and what it will answer next, path by path."""

    def __init__(self, url: str, closing: threading.Event) -> None:
        self.url = url
        self._closing = closing
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)

    def answer(self, path: str, *replies: Reply) -> None:
        """From now on, answer requests to `path` with `replies` in turn; the last one repeats."""
        with self._lock:
            self._scripts[path] = deque(replies)

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def _take(self, request: Recorded) -> Reply:
        with self._lock:
            self._requests.append(request)
            script = self._scripts[request.path]
            return script.popleft() if len(script) > 1 else (script[0] if script else Reply())


def _handler(recorder: HttpRecorder, closing: threading.Event) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            target = urlsplit(self.path)
            reply = recorder._take(
                Recorded(
                    method=self.command,
                    path=target.path,
                    query=parse_qs(target.query),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length),
                )
            )
            if reply.delay and closing.wait(reply.delay):
                return  # the server is closing: answer nothing
            body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        # http.server dispatches on these names.
        do_GET = do_POST = do_PUT = _serve  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the test reads `requests`, not a log on stderr

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is expected here, not an error


@contextmanager
def http_recorder() -> Iterator[HttpRecorder]:
    """Run a recording server on 127.0.0.1 (a free port) for the block; stop it after."""
    closing = threading.Event()
    server = _Server(("127.0.0.1", 0), BaseHTTPRequestHandler)
    recorder = HttpRecorder(f"http://127.0.0.1:{server.server_address[1]}", closing)
    server.RequestHandlerClass = _handler(recorder, closing)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield recorder
    finally:
        closing.set()
        server.shutdown()
        thread.join()
        server.server_close()


def isolate_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clear the integrations' settings; retry fast; reach 127.0.0.1 without any proxy."""
    for name in INTEGRATION_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PLANGATE_HTTP_BACKOFF", "0.01")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
