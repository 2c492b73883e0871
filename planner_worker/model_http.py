"""The HTTP client the planner's openai SDK sends through: bounded in size and time, no redirects.

The SDK's own client bounds each read, not an answer: a server that trickles a byte a second
holds a planner thread for ever, one that answers 50 MB (or a gzip bomb) is read whole into
memory, and a redirect is followed to any host with the API key. Here each attempt is read
within `timeout` seconds from its start (a `ReadTimeout`, which the SDK retries and then reports
as a timeout), at most `MAX_ANSWER_BYTES` once decoded (`AnswerTooLarge`, never retried: the
same server would answer the same), and a redirect is answered as the error it is.

httpx has no bound on a whole answer, so `send` reads the body itself; the rest is httpx's.
Its timeouts bound each read, so a status line and headers sent a byte at a time, or endless
`103 Early Hints`, would hold it for ever: a watchdog shuts the attempt's socket at the
deadline, whatever phase it is in. Each attempt has a connection of its own (no keep-alive),
so that the watchdog knows the socket, and shutting it touches no other request; a model's
answer takes seconds, a connection's setup milliseconds.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import httpx
import openai

from plangate.redaction import quoted

MAX_ANSWER_BYTES = 4 * 1024 * 1024
"""The most a model server's answer may take, decoded: a plan fits in 1 MiB, JSON-escaped in a
chat completion it takes at most a few times that."""
_RAW_PIECE = 4096  # decoded a piece at a time: gzip inflates a piece to at most ~4 MiB
_DECODED = {"", "identity", "gzip", "deflate"}  # what the client asks for and bounds
_LATE = "the model server was still answering at the deadline"


class AnswerTooLarge(openai.OpenAIError):
    """The model server's answer is over `MAX_ANSWER_BYTES` or in an encoding not asked for.

    An OpenAIError so the SDK raises it as it is, without retrying.
    """


class ModelHttpClient(httpx.Client):
    """An httpx client that reads each answer within its time and size bounds."""

    def __init__(self, timeout: float) -> None:
        super().__init__(
            timeout=timeout,
            follow_redirects=False,
            # Only encodings whose inflation is bounded here (httpx would add br and zstd
            # when their packages are installed).
            headers={"Accept-Encoding": "gzip, deflate"},
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def send(
        self, request: httpx.Request, *, stream: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """Send `request`; unless streaming, read the answer within its bounds."""
        deadline = time.monotonic() + _attempt_seconds(request)
        watchdog = _Watchdog(deadline)
        request.extensions["trace"] = watchdog.trace
        try:
            response = super().send(request, stream=True, **kwargs)
            if stream:
                return response  # the planner never streams; a stream is bounded by its reader
            try:
                body = _read_bounded(response, deadline)
            finally:
                response.close()
            if watchdog.fired:  # a socket shut under a read ends it as if the answer had ended
                raise httpx.ReadTimeout(_LATE, request=request)
        except httpx.TransportError:
            if watchdog.fired:
                raise httpx.ReadTimeout(_LATE, request=request) from None
            raise
        finally:
            watchdog.cancel()
        headers = [
            (name, value)
            for name, value in response.headers.multi_items()
            if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        answer = httpx.Response(
            response.status_code,
            headers=headers,
            content=body,
            request=request,
            extensions=response.extensions,
        )
        answer.elapsed = response.elapsed
        return answer


class _Watchdog:
    """Shuts an attempt's socket at its deadline, so that a read blocked in it returns."""

    def __init__(self, deadline: float) -> None:
        self.fired = False
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """Httpcore's trace hook: note the socket once it is connected."""
        if event != "connection.connect_tcp.complete" or info.get("return_value") is None:
            return
        # A duplicate: TLS takes the connected socket's descriptor over, which leaves the
        # original closed; shutting the duplicate down ends the one connection both name.
        found = info["return_value"].get_extra_info("socket").dup()
        with self._lock:
            self._socket = found
            late = self.fired
        if late:
            self._shut(found)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            found = self._socket
            if found is not None:
                self._shut(found)  # under the lock: cancel() must not close it meanwhile

    def cancel(self) -> None:
        self._timer.cancel()
        with self._lock:
            found, self._socket = self._socket, None
        if found is not None:
            found.close()

    @staticmethod
    def _shut(found: socket.socket) -> None:
        with contextlib.suppress(OSError):  # already closed: nothing left to stop
            found.shutdown(socket.SHUT_RDWR)


def _attempt_seconds(request: httpx.Request) -> float:
    timeout = request.extensions.get("timeout", {})
    read = timeout.get("read") if isinstance(timeout, dict) else None
    return float(read) if read else 600.0


def _read_bounded(response: httpx.Response, deadline: float) -> bytes:
    """Return the decoded body, raising ReadTimeout past `deadline`, AnswerTooLarge past the cap."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in _DECODED:
        raise AnswerTooLarge(
            f"the model server at {response.url.host} answered in Content-Encoding "
            f"{quoted(encoding, 40)!r}, which plangate did not ask for; check OPENAI_BASE_URL"
        )
    response.stream = _Pieces(response, deadline)
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise _too_large(response)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(response: httpx.Response) -> AnswerTooLarge:
    return AnswerTooLarge(
        f"the model server at {response.url.host} answered more than {MAX_ANSWER_BYTES} bytes, "
        "more than a plan can take; check OPENAI_BASE_URL and that the server honours "
        "max_completion_tokens (PLANGATE_PLANNER_MAX_TOKENS)"
    )


class _Pieces(httpx.SyncByteStream):
    """The raw body within its deadline and cap, cut into pieces each inflated before the next.

    Checked here, on the raw bytes, not on what they inflate to: compressed bytes may inflate to
    nothing (a gzip header's endless file name, empty deflate blocks) for as long as they come.
    """

    def __init__(self, response: httpx.Response, deadline: float) -> None:
        self._response = response
        self._raw = cast("httpx.SyncByteStream", response.stream)  # a sync client's are sync
        self._deadline = deadline

    def __iter__(self) -> Iterator[bytes]:
        size = 0
        for chunk in self._raw:
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise _too_large(self._response)
            if time.monotonic() > self._deadline:
                raise httpx.ReadTimeout(_LATE, request=self._response.request)
            for start in range(0, len(chunk), _RAW_PIECE):
                yield chunk[start : start + _RAW_PIECE]

    def close(self) -> None:
        self._raw.close()
