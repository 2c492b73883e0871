"""Writes refused while the store's schema is not the one this `serve` knows.

A newer release's `db upgrade` moved the schema on while `serve` ran: its `/readyz` said so,
but it went on taking goals and decisions, writing with code that does not know the schema,
while the workers (which stop then) and every command refused the same database. Where
nothing routes on readiness (compose marks the container unhealthy, no more), that went on
unseen. A request that would write is refused (503) saying why; reads are still answered.
The schema is read again at most every `EVERY` seconds, a write's answer waiting for no more.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from plangate.store.schema import mismatch

log = logging.getLogger(__name__)

EVERY = 5.0  # seconds between two reads of the schema's revision
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


class _Looked:
    """The schema's problem as last read (None: it is the one this plangate knows)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at = -EVERY
        self.problem: str | None = None


class SchemaGuard:
    """Refuse a request that would write (503) while the schema is not this plangate's."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._looked = _Looked()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass a read on; a write too, unless the schema moved past this plangate."""
        if scope["type"] == "http" and scope["method"] not in _READS:
            problem = await run_in_threadpool(self._problem, scope)
            if problem is not None:
                await _refuse(send, problem)
                return
        await self._app(scope, receive, send)

    def _problem(self, scope: Scope) -> str | None:
        looked = self._looked
        with looked.lock:
            if time.monotonic() - looked.at < EVERY:
                return looked.problem
            desk = getattr(scope["app"].state, "desk", None)
            try:
                problem = None if desk is None else mismatch(desk.store.revision())
            except Exception:  # the store does not answer: the route says so itself
                problem = None
            if problem != looked.problem:  # said as it comes and goes, not per request
                if problem is not None:
                    log.error("%s; requests that write are refused until then", problem)
                else:
                    log.warning("the database schema is this plangate's again: writes are taken")
            looked.at, looked.problem = time.monotonic(), problem
            return problem


async def _refuse(send: Send, problem: str) -> None:
    body = json.dumps({"error": f"{problem}; nothing was stored"}).encode()
    headers = [(b"content-type", b"application/json"), (b"retry-after", b"30")]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
