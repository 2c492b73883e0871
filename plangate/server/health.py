"""Probes: `/healthz` (the process answers) and `/readyz` (its store answers too).

Kubernetes restarts a pod whose liveness fails and takes one out of its Service while its
readiness fails: a database outage must only do the second, so only `/readyz` asks the store.
Neither says more than one line of why: no URL, no error text (it may name a host or a user).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from plangate.server.reviews import get_desk
from plangate.store import Store

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)


def _store(request: Request) -> Store:
    return get_desk(request).store


@router.get("/healthz")
def healthz() -> JSONResponse:
    """Answer 200 while the process serves requests."""
    return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """Answer 200 when the store answers `SELECT 1`, else 503 with the reason in one line."""
    try:
        with _store(request).session() as session:
            session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        log.warning("readiness: the store does not answer (%s)", type(exc).__name__)
        body = {"status": "unavailable", "reason": "the store does not answer"}
        return JSONResponse(body, status_code=503, headers={"Cache-Control": "no-store"})
    return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})
