"""A request's headers must arrive within `HEADERS_SECONDS` of its connection, or it is closed.

uvicorn bounds a request's body (plangate's `body_limit`) and the wait between two requests on
one connection (its keep-alive timeout), but not the headers: a client sending one header line
every ten seconds kept its connection, and a thousand of them a thousand connections and file
descriptors, for as long as it liked ("slowloris"). Behind a proxy that buffers requests this
never happens; `serve` is also reached directly (compose publishes its port).

This is uvicorn's own h11 protocol with one timer more, armed when the connection opens and
after each response, cancelled once a request's headers are in; when it fires with no request
under way the connection is closed, as the keep-alive timeout closes an idle one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

HEADERS_SECONDS = 30.0


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers take too long."""

    headers_seconds = HEADERS_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._headers_due: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the connection's wait for its first request's headers."""
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Read as uvicorn does; a request that began (its headers all in) stops the wait."""
        waiting_for = self.cycle
        super().data_received(data)
        if self.cycle is not waiting_for:
            self._disarm()

    def on_response_complete(self) -> None:
        """Answered: the next request's headers have as long again."""
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the wait with the connection."""
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._headers_due = self.loop.call_later(self.headers_seconds, self._headers_late)

    def _disarm(self) -> None:
        if self._headers_due is not None:
            self._headers_due.cancel()
            self._headers_due = None

    def _headers_late(self) -> None:
        self._headers_due = None
        under_way = self.cycle is not None and not self.cycle.response_complete
        if not under_way and not self.transport.is_closing():
            self.transport.close()
