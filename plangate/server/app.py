"""The application factory: one FastAPI app sharing one `Client` for the process."""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from contextlib import ExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

from plangate import __version__, metrics, telemetry
from plangate.client import Client
from plangate.config import Settings
from plangate.redaction import register_secret
from plangate.server import goal_pages, goals, health, login, pages, reviews
from plangate.server.api_docs import (
    ASSETS,
    complete_error_responses,
    install_api_docs,
    named_body_schemas,
    refusals,
)
from plangate.server.body_limit import BodyLimit
from plangate.server.errors import install_handlers
from plangate.server.head_requests import HeadAsGet
from plangate.server.ratelimit import WindowLimit
from plangate.server.reviewers import Reviewers, ReviewersFile, ReviewerSource
from plangate.server.schema_guard import SchemaGuard
from plangate.server.security_headers import SecurityHeaders
from plangate.server.sessions import SessionKeeper, session_secret


def create_app(
    settings: Settings | None = None,
    *,
    client: Client | None = None,
    intake_token: str | None = None,
    reviewers: ReviewerSource | None = None,
) -> FastAPI:
    """Build the server; without `client`, one is opened at startup and closed at shutdown.

    `intake_token` defaults to `settings.intake_token` (`PLANGATE_INTAKE_TOKEN`); when set, goal
    intake needs it as a bearer token. `reviewers` default to those in `PLANGATE_REVIEWERS_FILE`,
    read again when it changes. Review-page sessions are signed with `PLANGATE_SESSION_SECRET`
    (ConfigError if it is shorter than 32 characters; unset, a per-process one, with a warning).
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with ExitStack() as stack:
            # Before the first request, so that every request's spans (and a decision's) are
            # recorded: they were only once a goal had been submitted through this process.
            telemetry.setup_tracing("plangate-serve")
            app.state.client = client or stack.enter_context(Client(settings))
            desk = reviews.ReviewDesk(settings)
            stack.callback(desk.close)
            app.state.desk = desk
            yield

    app = _App(
        title="plangate",
        version=__version__,
        summary="Submit goals and follow them: the planner decides, the gate authorises.",
        lifespan=lifespan,
        docs_url=None,  # served with local assets: install_api_docs
        redoc_url=None,  # ReDoc comes only from a CDN
        # Starlette's slash redirect builds its Location from the Host header a client sends.
        redirect_slashes=False,
        # FastAPI's own spans of each request: a goal submitted over HTTP is one trace from
        # its request. Not of the probes and scrapes (a trace every few seconds), nor of its
        # dependencies and serialisation (a span each, recorded at full cost).
        telemetry={"exclude": _probe, "operation_spans": False},
    )
    app.state.settings = settings
    configured = settings.intake_token.get_secret_value() if settings.intake_token else None
    app.state.intake_token = intake_token or configured or None
    register_secret(app.state.intake_token)
    previous = settings.intake_token_previous
    app.state.intake_token_previous = previous.get_secret_value() if previous else None
    register_secret(app.state.intake_token_previous)  # in a comment too: `person_words`
    app.state.reviewers = reviewers if reviewers is not None else _reviewers(settings)
    app.state.sessions = SessionKeeper(
        session_secret(settings),
        timedelta(seconds=settings.session_ttl_seconds),
        secure=settings.public_url.startswith("https://"),
    )
    app.state.failure_limit = WindowLimit()
    per_minute = settings.intake_goals_per_minute
    app.state.intake_limit = WindowLimit(per_minute, 60.0) if per_minute else None
    metrics.intake_counted()
    install_handlers(app)
    app.add_middleware(SchemaGuard)
    app.add_middleware(BodyLimit)
    app.add_middleware(HeadAsGet)
    # Every route of the API reads or writes the store: each answers 503 while it does not.
    for api in (goals.router, reviews.router):
        app.include_router(api, responses=refusals(503))
    app.include_router(login.router)
    app.include_router(pages.router)
    app.include_router(goal_pages.router)
    app.include_router(health.router)
    install_api_docs(app)
    return app


_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})


def _probe(scope: MutableMapping[str, Any]) -> bool:
    path = str(scope.get("path", ""))
    return path in _PROBES or path.startswith(ASSETS)


class _App(FastAPI):
    """The server, its security headers outermost: on every answer, a 500 too.

    Starlette answers an unhandled error in its outermost layer, outside every added middleware.
    """

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())

    def openapi(self) -> dict[str, Any]:
        """Return the OpenAPI document, with the errors every route answers alike."""
        if self.openapi_schema is None:
            self.openapi_schema = complete_error_responses(named_body_schemas(super().openapi()))
        return self.openapi_schema


def _reviewers(settings: Settings) -> ReviewerSource:
    path = settings.reviewers_file
    return ReviewersFile(path) if path is not None else Reviewers()
