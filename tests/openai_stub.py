"""A scripted OpenAI-compatible server for tests: exact answers, every request recorded.

It speaks real HTTP on 127.0.0.1 (a free port), so the planner's real `openai` SDK talks to it
as it would to OpenAI, vLLM or llama.cpp. Each test queues the replies it wants, in order;
a request with nothing left to answer gets HTTP 418, which fails the goal loudly.
`echoing()` answers an error that quotes the request's Authorization header back, as a careless
or hostile server would.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One scripted answer: status, JSON body, headers, and a delay before it is sent.

    With `gather`, the answer also waits (up to 5 s) until that many requests have arrived.
    """

    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    gather: int = 0
    echo: bool = False
    raw: bytes | None = None  # sent as it is, instead of `body`
    trickle: float = 0.0  # seconds between the body's bytes (a server that never finishes)


def completion(
    content: str | None,
    *,
    finish_reason: str = "stop",
    refusal: str | None = None,
    usage: tuple[int, int] = (100, 50),
    model: str = "stub-model",
) -> Reply:
    """A chat completion answering `content` (or refusing), costing `usage` tokens."""
    return Reply(
        body={
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": refusal},
                    "finish_reason": finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": usage[0],
                "completion_tokens": usage[1],
                "total_tokens": sum(usage),
            },
        }
    )


def plan_reply(steps: list[dict[str, Any]], summary: str = "a plan", **kwargs: Any) -> Reply:
    """A completion whose content is a plan in the strict answer shape."""
    full = [{"args": {}, "when": None, "after": [], **step} for step in steps]
    return completion(json.dumps({"summary": summary, "steps": full}), **kwargs)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    """An OpenAI-style error answer."""
    body = {"error": {"message": message, "type": "stub_error", "code": None, "param": None}}
    return Reply(status=status, body=body, headers=headers or {})


def echoing(status: int = 401) -> Reply:
    """An error quoting the request's Authorization header: raw, URL-encoded, JSON, base64."""
    return Reply(status=status, echo=True)


def echo_body(authorization: str) -> dict[str, Any]:
    """The body of an echoing answer for `authorization`."""
    quoted = urllib.parse.quote(authorization, safe="")
    encoded = base64.b64encode(authorization.encode()).decode()
    escaped = json.dumps(authorization)
    message = (
        f"Incorrect API key provided: {authorization}. url={quoted} json={escaped} b64={encoded}"
    )
    body = {"message": message, "type": "invalid_request_error", "code": authorization}
    return {"error": {**body, "param": json.dumps({"authorization": authorization})}}


class OpenAIStub:
    """The server: `script(...)` queues replies; `requests` holds every request body."""

    def __init__(self) -> None:
        self._replies: deque[Reply] = deque()
        self._lock = threading.Condition()
        self._closing = threading.Event()
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """The URL to give as OPENAI_BASE_URL."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def script(self, *replies: Reply) -> None:
        """Queue replies, answered in order."""
        with self._lock:
            self._replies.extend(replies)

    def _next(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._lock.notify_all()
            if self._replies:
                return self._replies.popleft()
        return error(418, "the test script has no reply left for this request")

    def _gather(self, count: int) -> None:
        with self._lock:
            # Counted on arrivals, not on requests in flight: those drop as answers leave.
            self._lock.wait_for(lambda: len(self.requests) >= count, timeout=5.0)

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                reply = stub._next({"path": self.path, **body})
                try:
                    if reply.gather:
                        stub._gather(reply.gather)
                    if reply.delay:
                        stub._closing.wait(reply.delay)
                    answer = reply.body
                    if reply.echo:
                        answer = echo_body(self.headers.get("Authorization", ""))
                    data = reply.raw if reply.raw is not None else json.dumps(answer).encode()
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    if not reply.trickle:
                        self.wfile.write(data)
                    for index in range(len(data) if reply.trickle else 0):
                        self.wfile.write(data[index : index + 1])
                        self.wfile.flush()
                        if stub._closing.wait(reply.trickle):
                            break
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to answer
                finally:
                    stub._done()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        return Handler

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving; delayed replies still waiting are released at once."""
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@contextmanager
def running_stub() -> Iterator[OpenAIStub]:
    """An OpenAIStub serving for the duration of the block."""
    stub = OpenAIStub()
    stub.start()
    try:
        yield stub
    finally:
        stub.stop()


def messages_of(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages of a recorded request."""
    messages: list[dict[str, Any]] = request["messages"]
    return messages
