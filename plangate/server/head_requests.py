"""HEAD answered as GET without its body (RFC 9110 9.3.2), as Starlette's plain routes do.

FastAPI's routes take only the methods they declare, so a HEAD (link checkers, monitors,
`curl -I`) got 405 from every page. No route here streams: the GET runs whole, its headers
(Content-Length included) are sent, its body is not.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """ASGI middleware: run a HEAD request as its GET and send no body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass other requests on untouched."""
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_without_body)
