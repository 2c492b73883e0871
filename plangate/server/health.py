"""Probes: `/healthz` (the process answers) and `/readyz` (its store answers too).

Kubernetes restarts a pod whose liveness fails and takes one out of its Service while its
readiness fails: a database outage must only do the second, so only `/readyz` asks the store.
A broker outage does neither: `serve` stores each goal it takes and its outbox sends it once
the broker answers, and reviews need only the store. Taken out of the Service for it, every
replica refused goals it could keep. `/readyz` says so, and stays 200; so it does of a
reviewers file it cannot read (reviews are down, goals are still taken).
Neither says more than one line of why: no URL, no error text (it may name a host or a user).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from plangate import metrics
from plangate.readiness import broker_problem, not_ready
from plangate.server.reviewers import get_reviewers
from plangate.server.reviews import get_desk

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
def healthz() -> JSONResponse:
    """Answer 200 while the process serves requests."""
    return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """Answer 200 when the store answers with the current schema (saying if the broker does not)."""
    desk = get_desk(request)
    problem = not_ready(desk.store)
    if problem is not None:
        body = {"status": "unavailable", "reason": problem}
        return JSONResponse(body, status_code=503, headers={"Cache-Control": "no-store"})
    ready = {"status": "ok"}
    if (broker := broker_problem(desk.bus)) is not None:  # the reason workers' /readyz give
        ready["broker"] = f"{broker}: goals are stored, and sent once it takes them"
    if get_reviewers(request).problem is not None:  # intake still works: said, not 503
        ready["reviewers"] = "the reviewers file cannot be read: nobody can review (see the log)"
    return JSONResponse(ready, headers={"Cache-Control": "no-store"})


@router.get("/metrics")
def prometheus_metrics(request: Request) -> Response:
    """Return this process's metrics and the store's gauges, in Prometheus' text format."""
    body = metrics.exposition(metrics.registry_with(get_desk(request).store))
    return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})
