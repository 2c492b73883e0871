"""`plangate serve`: the HTTP server (goal intake, review; OpenAPI at /docs)."""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING, Annotated

import typer

from plangate.cli.common import WaitForSchema, friendly_errors, load_settings
from plangate.errors import ConfigError, PlangateError

if TYPE_CHECKING:  # `plangate --help` loads this module: nothing heavy at its top
    import socket

    from fastapi import FastAPI

    from plangate.client import Client
    from plangate.config import Settings

log = logging.getLogger("plangate.serve")


@friendly_errors
def serve(
    host: Annotated[
        str, typer.Option(metavar="HOST", help="Address to listen on (0.0.0.0: every one).")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, metavar="PORT", help="Port to listen on.")
    ] = 8080,
    wait_for_schema: WaitForSchema = 0,
) -> None:
    """Serve the HTTP API until SIGTERM: /api/v1/goals, /api/v1/reviews, /reviews, /docs.

    Goals arrive as plain JSON ({"text": ..., "metadata": {...}, "idempotency_key": ...}) or
    as a CloudEvent 1.0 of type dev.plangate.goal.submitted (structured or binary mode; the
    same source and id twice make one goal). Set PLANGATE_INTAKE_TOKEN to require
    `Authorization: Bearer <token>`; without it, anyone who reaches the port can submit goals.
    Reviewers in PLANGATE_REVIEWERS_FILE (made with `plangate reviewers add NAME --role R`,
    which prints each token once; the file keeps only hashes and is read again when it
    changes) decide held plans at /reviews (a web page) or /api/v1/reviews (JSON,
    `Authorization: Bearer <token>`; `plangate review ... --server URL` uses it). Page
    sessions are signed with PLANGATE_SESSION_SECRET (32+ characters): give every replica
    the same one, or each refuses the others' forms. Failed logins and bad tokens are limited
    per client address (10 in 5 minutes, then 429), in each replica; behind a proxy, name it in
    PLANGATE_TRUSTED_PROXIES so that X-Forwarded-For is read (and only then).
    Uses PLANGATE_BROKER_URL and PLANGATE_DATABASE_URL like the workers; with
    --wait-for-schema, it waits for `plangate db upgrade` as they do, answering /healthz and
    /readyz (503) meanwhile.
    """
    import socket

    from plangate.logs import setup_logging
    from plangate.process_name import name_process
    from plangate.server.migration_wait import open_client

    name_process("serve")
    settings = load_settings()
    setup_logging(settings.log_level, stage="serve")
    # Bound first, so a port in use is one line before anything else (uvicorn would log it
    # and exit 3, the code for "rejected").
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listening = socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}; stop what uses it, or pass "
            "--port (or --host)"
        ) from exc
    # Opened here, not at startup, so a wrong URL or an old schema is a one-line error.
    with listening:
        client = open_client(settings, listening, wait_for_schema)
        if client is None:
            return  # SIGTERM while waiting for the migration: a clean stop
        with client:
            _serve(settings, client, listening)


def _serve(settings: Settings, client: Client, listening: socket.socket) -> None:
    """Serve the app on `listening` with uvicorn until SIGTERM."""
    import uvicorn

    from plangate.server import create_app
    from plangate.server.access_log import leave_probes_out
    from plangate.server.clean_exit import CleanExitServer
    from plangate.server.header_deadline import HeaderDeadline

    app = create_app(settings, client=client)
    host, port = listening.getsockname()[:2]
    say_what_is_open(app, settings, str(host))
    # uvicorn says where it listens only when it binds the port itself.
    address = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    log.info(
        "serving on http://%s: reviews at /reviews, goals at /api/v1/goals, API docs at /docs "
        "(reviewers' links use PLANGATE_PUBLIC_URL, %s)",
        address,
        settings.public_url,
    )
    if "public_url" not in settings.model_fields_set and not settings.public_url.endswith(
        f":{port}"
    ):
        log.warning(
            "PLANGATE_PUBLIC_URL is not set: the links held plans' notices give, and the "
            "origin forms must come from, are %s, not this port; set it to the address "
            "reviewers reach this serve at",
            settings.public_url,
        )
    # log_config=None: uvicorn's own loggers go through ours, as JSON lines like a worker's.
    # X-Forwarded-For only from the proxies named: uvicorn's default trusts 127.0.0.1, so
    # a local client (or a same-host proxy passing the header on) chose its own address for
    # the failed-login limit, to slip past it or to lock someone else out.
    trusted = settings.trusted_proxies.strip()
    config = uvicorn.Config(
        app,
        log_level=settings.log_level.lower(),
        log_config=None,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
        http=HeaderDeadline,  # a request's headers have 30 s to arrive
    )
    leave_probes_out()
    CleanExitServer(config).run(sockets=[listening])


def say_what_is_open(app: FastAPI, settings: Settings, host: str) -> None:
    """Warn, at start, of a deployment that left intake open or held plans undecidable.

    Both went unsaid: a secret's key left out (its reference is optional) opened intake to
    anyone on the network, and an empty reviewers file left every held plan waiting.
    """
    if app.state.intake_token is None and not _loopback(host):
        log.warning(
            "goal intake is open: PLANGATE_INTAKE_TOKEN is not set, so anyone who reaches "
            "%s can submit goals; set it, and give it to the services that submit them",
            host,
        )
    try:
        reviewers = app.state.reviewers.current()
    except PlangateError:  # a file that cannot be read is said as it is read
        return
    if len(reviewers) == 0:
        # "no reviewer is in no reviewers file" read as a riddle: the unset file said apart.
        where = (
            f"is in {settings.reviewers_file}"
            if settings.reviewers_file
            else "file is set (PLANGATE_REVIEWERS_FILE)"
        )
        log.warning(
            "no reviewer %s: a held plan cannot be decided here; add one with "
            "`plangate reviewers add NAME --role ROLE --file FILE`",
            where,
        )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may be reached from anywhere
        return False
