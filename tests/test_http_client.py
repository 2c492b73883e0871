"""The one HTTP client against a real server on 127.0.0.1: what it retries and how long it waits,
what it refuses, how long a call may take, that it reuses connections and quotes no secret."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from stamina.instrumentation import set_on_retry_hooks

from plangate import retry_lines
from plangate.errors import ToolError
from plangate.http_client import MAX_BODY, HttpClient, retry_after_seconds, send
from plangate.redaction import register_secret
from tests.http_recorder import Reply, isolate_environment

SECRET = "hc-canary-s3cr3t-7f1e"


@dataclass
class Server:
    """A scripted server that notes when each request arrived and how many connections it took."""

    url: str = ""
    replies: deque[Reply] = field(default_factory=deque)
    arrivals: list[float] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    connections: int = 0
    closing: threading.Event = field(default_factory=threading.Event)

    def answer(self, *replies: Reply) -> None:
        """Answer with `replies` in turn; the last one repeats."""
        self.replies = deque(replies)

    def next_reply(self, headers: dict[str, str]) -> Reply:
        self.arrivals.append(time.monotonic())
        self.headers.append(headers)
        return self.replies.popleft() if len(self.replies) > 1 else self.replies[0]

    def gaps(self) -> list[float]:
        return [
            later - earlier
            for earlier, later in zip(self.arrivals, self.arrivals[1:], strict=False)
        ]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _CountingServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        state = self.server.state
        reply = state.next_reply({k.lower(): v for k, v in self.headers.items()})
        if reply.delay and state.closing.wait(reply.delay):
            return  # the test is over: answer nothing
        body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Length", str(len(body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _CountingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: Server) -> None:
        self.state = state
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.state.connections += 1  # one accepted TCP connection
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up and hung up is what some tests do


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    isolate_environment(monkeypatch)
    monkeypatch.delenv("PLANGATE_HTTP_DEADLINE", raising=False)
    state = Server()
    state.answer(Reply(200, {"ok": True}))
    httpd = _CountingServer(state)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state
    finally:
        state.closing.set()
        httpd.shutdown()
        thread.join()
        httpd.server_close()


def post(server: Server, **kwargs: Any) -> Any:
    return send("POST", server.url, service="the receiver", json_body={"n": 1}, **kwargs)


def test_a_503_is_retried_and_the_next_answer_returned(server: Server) -> None:
    """Given a receiver that answers 503 once, then 200, when a call is made, then it is sent
    twice and returns the 200 with the number of attempts."""
    server.answer(Reply(503, {"error": "busy"}), Reply(200, {"done": True}))

    answer = post(server)

    assert (answer.status, answer.attempts) == (200, 2)
    assert answer.json("the receiver") == {"done": True}
    assert len(server.arrivals) == 2


def test_a_retry_is_said_in_one_line_of_plangates_and_none_of_staminas(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """Given plangate's logging (as a worker or serve sets it up), When a receiver answers 503
    once, then 200, Then the retry is one line of plangate's saying when and why, and stamina
    logs none of its own (a "stamina.retry_scheduled" with the exception's repr)."""
    server.answer(Reply(503, {"error": "busy"}), Reply(200, {"done": True}))
    caplog.set_level(logging.DEBUG)
    retry_lines.install()
    try:
        assert post(server).attempts == 2
    finally:
        set_on_retry_hooks(None)  # stamina's own again, as in any other test

    assert [r for r in caplog.records if r.name.startswith("stamina")] == []
    [said] = [r.getMessage() for r in caplog.records if r.name == "plangate.retry_lines"]
    assert re.fullmatch(r"trying again in \d+\.\d s \(retry 1\): .*503.*", said), said


def test_retry_after_in_seconds_is_waited_out(server: Server) -> None:
    """Given a 429 asking to retry after 1 s, then the next attempt comes no sooner than that
    (the backoff alone would be 0.01 s)."""
    server.answer(Reply(429, {"error": "slow down"}, headers={"Retry-After": "1"}), Reply(200))

    assert post(server).attempts == 2

    [gap] = server.gaps()
    assert gap >= 1.0


def test_retry_after_as_an_http_date_is_waited_out(server: Server) -> None:
    """Given a 503 asking to retry at a date 3 s ahead (HTTP dates count whole seconds),
    then the next attempt waits at least 2 s."""
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=3), usegmt=True)
    server.answer(Reply(503, headers={"Retry-After": when}), Reply(200))

    assert post(server).attempts == 2

    [gap] = server.gaps()
    assert gap >= 1.5


def test_a_retry_after_beyond_the_calls_budget_fails_at_once_saying_so(server: Server) -> None:
    server.answer(Reply(429, {"error": "quota"}, headers={"Retry-After": "120"}))

    started = time.monotonic()
    with pytest.raises(ToolError) as failure:
        post(server, deadline=5)

    message = str(failure.value)
    assert "the receiver asked to be called again in 120 s" in message
    assert "try again later, or raise PLANGATE_HTTP_DEADLINE" in message
    assert len(server.arrivals) == 1
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("status", [400, 404, 408, 422])
def test_a_4xx_other_than_429_is_not_retried(server: Server, status: int) -> None:
    server.answer(Reply(status, {"error": "channel is required"}))

    with pytest.raises(ToolError) as failure:
        post(server, hint="check the channel")

    message = str(failure.value)
    assert f"the receiver refused the request: HTTP {status}" in message
    assert "channel is required" in message
    assert message.endswith("; check the channel")
    assert len(server.arrivals) == 1


def test_a_redirect_is_refused_saying_where_it_pointed_but_not_its_path(server: Server) -> None:
    server.answer(Reply(307, {}, headers={"Location": "http://10.0.0.1/T000/XXXXSECRET"}))

    with pytest.raises(ToolError) as failure:
        post(server)

    message = str(failure.value)
    assert "answered HTTP 307 (a redirect); redirects are not followed" in message
    assert "use the final URL (it points to http://10.0.0.1)" in message
    assert "XXXXSECRET" not in message
    assert len(server.arrivals) == 1


def test_the_calls_deadline_bounds_a_hanging_server(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a server that never answers, an attempt timeout of 10 s and 5 attempts, when the
    call's deadline is 0.5 s, then it fails within about that, saying so."""
    monkeypatch.setenv("PLANGATE_HTTP_TIMEOUT", "10")
    monkeypatch.setenv("PLANGATE_HTTP_ATTEMPTS", "5")
    monkeypatch.setenv("PLANGATE_HTTP_DEADLINE", "0.5")
    server.answer(Reply(200, delay=30))

    started = time.monotonic()
    with pytest.raises(ToolError) as failure:
        post(server)
    elapsed = time.monotonic() - started

    assert elapsed < 2
    message = str(failure.value)
    assert "did not answer successfully within 0.5 s (1 attempt(s)); last: timed out" in message
    assert "PLANGATE_HTTP_DEADLINE" in message


def test_a_deadline_given_by_the_caller_shortens_the_budget(server: Server) -> None:
    server.answer(Reply(200, delay=30))

    started = time.monotonic()
    with pytest.raises(ToolError, match=r"within 0\.3 s"):
        post(server, deadline=0.3)

    assert time.monotonic() - started < 2


def test_calls_reuse_one_connection(server: Server) -> None:
    """Given two calls to one server, then the second goes over the first one's connection."""
    post(server)
    post(server)

    assert len(server.arrivals) == 2
    assert server.connections == 1


def test_threads_share_the_pool(server: Server) -> None:
    """Given eight threads calling at once, twice, then all sixteen calls succeed over at most
    eight connections: the second round reuses the first's."""
    answers: list[int] = []

    def round_of_calls() -> None:
        threads = [
            threading.Thread(target=lambda: answers.append(post(server).status)) for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)

    round_of_calls()
    round_of_calls()

    assert answers == [200] * 16
    assert 1 <= server.connections <= 8


def test_a_client_of_its_own_closes_its_connections(server: Server) -> None:
    with HttpClient() as client:
        client.send("GET", server.url, service="the receiver")
        client.send("GET", server.url, service="the receiver")
    assert server.connections == 1

    with HttpClient() as client:
        client.send("GET", server.url, service="the receiver")
    assert server.connections == 2


@pytest.mark.parametrize("status", [400, 503])
def test_a_secret_the_server_echoes_is_scrubbed_from_the_error(
    server: Server, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    monkeypatch.setenv("PLANGATE_HTTP_ATTEMPTS", "2")
    register_secret(SECRET)
    server.answer(Reply(status, {"error": f"bad token {SECRET}"}))

    with pytest.raises(ToolError) as failure:
        post(server, headers={"Authorization": f"Bearer {SECRET}"})

    message = str(failure.value)
    assert f'HTTP {status}: {{"error": "bad token [redacted]"}}' in message
    assert SECRET not in message
    assert failure.value.__cause__ is None


def test_a_cookie_set_by_one_answer_is_not_sent_with_the_next_call(server: Server) -> None:
    server.answer(Reply(200, headers={"Set-Cookie": "session=abc123; Path=/"}))

    post(server)
    post(server)

    assert "cookie" not in server.headers[1]


def test_an_answer_over_the_size_bound_is_cut_and_not_read_as_json(server: Server) -> None:
    server.answer(Reply(200, b"[" + b"1," * MAX_BODY + b"1]"))

    answer = post(server)

    assert (len(answer.body), answer.complete) == (MAX_BODY, False)
    with pytest.raises(ToolError, match="a body over 1048576 bytes, more than plangate reads"):
        answer.json("the receiver")


def test_an_unreachable_server_is_retried_then_reported(server: Server) -> None:
    with pytest.raises(ToolError) as failure:
        send("POST", "http://127.0.0.1:9/hook", service="the receiver")

    message = str(failure.value)
    assert "the receiver did not answer successfully after 3 attempt(s); last: " in message
    assert "check that it is reachable" in message


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("3", 3.0), (" 0 ", 0.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("soon", None), ("", None)],
)
def test_retry_after_is_read_as_seconds_or_a_date(header: str, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds


def test_a_write_cut_off_after_its_request_went_out_is_an_unknown_outcome(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a receiver that takes the POST and never answers,
    When the call gives up, Then its error is OutcomeUnknown saying the receiver may have it:
    it said the call failed, and a page that went out was recorded as not sent (tools.md says
    a timeout after the request went out is `unknown`). A server never reached, or a GET cut
    off, is a plain failure."""
    from plangate.errors import OutcomeUnknown

    monkeypatch.setenv("PLANGATE_HTTP_DEADLINE", "0.5")
    server.answer(Reply(200, delay=30))
    with pytest.raises(OutcomeUnknown, match="may have received the request"):
        post(server)

    server.answer(Reply(200, delay=30))
    with pytest.raises(ToolError) as read:
        send("GET", server.url, service="the receiver")
    with pytest.raises(ToolError) as unreachable:
        send("POST", "http://127.0.0.1:9/hook", service="the receiver")
    assert not isinstance(read.value, OutcomeUnknown)
    assert not isinstance(unreachable.value, OutcomeUnknown)
