"""One bound on every request body, taken before any route reads it or asks who is calling.

Goal intake and the review page's forms read their bodies with tighter bounds of their own;
the routes whose JSON FastAPI parses (approve, reject, edit, settle, cancel, retry) read the
whole body first, before their token was checked: 150 MiB sent without one took the server's
memory from 123 to 348 MiB. Here any body over the bound is refused with 413, declared
(`Content-Length`) or streamed (chunked), and never held whole. Pure ASGI, so that the body
is counted as it arrives rather than after a framework has buffered it.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import suppress

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.decoding import MAX_MESSAGE_BYTES

# No request can carry more than the largest message plangate accepts.
MAX_REQUEST_BYTES = MAX_MESSAGE_BYTES


# A body still arriving after this long is refused (408): a client trickling one byte at a time
# held a connection and a worker's coroutine for as long as it liked.
BODY_SECONDS = 30.0


class _Refused(Exception):
    """The body went past a bound (its size, its time) while a route was reading it."""


class BodyLimit:
    """Refuse a request body over `limit` bytes (413), or still arriving after `seconds` (408)."""

    def __init__(
        self, app: ASGIApp, limit: int = MAX_REQUEST_BYTES, seconds: float = BODY_SECONDS
    ) -> None:
        self._app = app
        self._limit = limit
        self._seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, its body counted as it arrives."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self._limit:
            await self._refuse(send)
            return
        seen = 0
        started = refused = arrived = False
        deadline = asyncio.get_running_loop().time() + self._seconds

        async def counted() -> Message:
            nonlocal seen, refused, arrived
            if arrived:  # then only the client's disconnect comes, whenever it does
                return await receive()
            try:
                message = await asyncio.wait_for(
                    receive(), max(0.0, deadline - asyncio.get_running_loop().time())
                )
            except TimeoutError:
                message = {"type": "too.slow"}
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                arrived = not message.get("more_body", False)
            if seen > self._limit or message["type"] == "too.slow":
                # Answered here: a framework may catch the error and answer otherwise.
                if not started and not refused:
                    refused = True
                    await self._refuse(send, slow=message["type"] == "too.slow")
                raise _Refused
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if refused:  # the 413 is sent: what the route says after it goes nowhere
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        # Refused above, or a route that answered before reading it all: nothing more to say.
        with suppress(_Refused):
            await self._app(scope, counted, watched)

    async def _refuse(self, send: Send, *, slow: bool = False) -> None:
        said = f"the request body is over {self._limit // 1024} KiB, more than any request needs"
        if slow:
            said = f"the request body took over {self._seconds:g} s to arrive; send it at once"
        body = json.dumps({"error": said}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 408 if slow else 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
