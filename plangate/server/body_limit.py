"""One bound on every request body, taken before any route reads it or asks who is calling.

Goal intake and the review page's forms read their bodies with tighter bounds of their own;
the routes whose JSON FastAPI parses (approve, reject, edit, settle, cancel, retry) read the
whole body first, before their token was checked: 150 MiB sent without one took the server's
memory from 123 to 348 MiB. Here any body over the bound is refused with 413, declared
(`Content-Length`) or streamed (chunked), and never held whole. Pure ASGI, so that the body
is counted as it arrives rather than after a framework has buffered it.
"""

from __future__ import annotations

import json
from contextlib import suppress

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.decoding import MAX_MESSAGE_BYTES

# No request can carry more than the largest message plangate accepts.
MAX_REQUEST_BYTES = MAX_MESSAGE_BYTES


class _TooLarge(Exception):
    """The body went past the bound while a route was reading it."""


class BodyLimit:
    """Refuse (413) every request whose body is over `limit` bytes."""

    def __init__(self, app: ASGIApp, limit: int = MAX_REQUEST_BYTES) -> None:
        self._app = app
        self._limit = limit

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
        started = refused = False

        async def counted() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self._limit:
                    # Answered here: a framework may catch the error and answer otherwise.
                    if not started and not refused:
                        refused = True
                        await self._refuse(send)
                    raise _TooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if refused:  # the 413 is sent: what the route says after it goes nowhere
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        # Refused above, or a route that answered before reading it all: nothing more to say.
        with suppress(_TooLarge):
            await self._app(scope, counted, watched)

    async def _refuse(self, send: Send) -> None:
        said = f"the request body is over {self._limit // 1024} KiB, more than any request needs"
        body = json.dumps({"error": said}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
