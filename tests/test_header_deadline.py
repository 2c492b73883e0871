"""`serve`'s connections: a request's headers have a bounded time to arrive (slowloris)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from plangate.server.header_deadline import HEADERS_SECONDS, HeaderDeadline
from tests.servers import free_port


class QuickDeadline(HeaderDeadline):
    headers_seconds = 0.5


async def hello(_request: object) -> PlainTextResponse:
    return PlainTextResponse("hello")


@pytest.fixture
def port() -> Iterator[int]:
    app = Starlette(routes=[Route("/", hello)])
    chosen = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=chosen, log_level="warning", http=QuickDeadline
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield chosen
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def closed_within(connection: socket.socket, seconds: float) -> bool:
    """Say whether the server closes `connection` within `seconds` (reading what it sends)."""
    connection.settimeout(seconds)
    try:
        while connection.recv(4096):
            pass
    except TimeoutError:
        return False
    return True


def test_headers_sent_a_line_at_a_time_past_the_deadline_lose_the_connection(port: int) -> None:
    """A client trickling its request's header lines (each well within any idle timeout)
    kept its connection for as long as it liked: a thousand such held a thousand descriptors.
    The connection is closed once its headers are late."""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        for _ in range(4):
            time.sleep(0.2)
            try:
                connection.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
        assert closed_within(connection, 3.0)
    assert time.monotonic() - started < 3.0


def test_a_prompt_request_and_the_next_on_its_connection_are_answered(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as connection:
        for _ in range(3):
            connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            connection.settimeout(3)
            answer = b""
            while not answer.endswith(b"hello"):
                answer += connection.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200"), answer
            time.sleep(0.3)  # the next request, on the same connection, has its own deadline


def test_serve_gives_headers_as_long_as_a_body() -> None:
    from plangate.server.body_limit import BODY_SECONDS

    assert HEADERS_SECONDS == BODY_SECONDS
