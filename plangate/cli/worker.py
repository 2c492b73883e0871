"""`plangate worker STAGE`: one stage as its own process (the distributed mode)."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from plangate.cli.common import WaitForSchema, friendly_errors, load_settings


@friendly_errors
def worker(
    stage: Annotated[
        Literal["planner", "gate", "executor"],
        typer.Argument(metavar="STAGE", help="planner, gate or executor."),
    ],
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=256,
            metavar="N",
            help="Messages handled at once [default: PLANGATE_CONCURRENCY or 4].",
        ),
    ] = None,
    wait_for_schema: WaitForSchema = 0,
) -> None:
    """Consume one stage's queue until SIGTERM, then finish in-flight work and exit 0.

    Connects to PLANGATE_BROKER_URL (default redis://127.0.0.1:6379/0; amqp:// for RabbitMQ)
    and PLANGATE_DATABASE_URL (default: SQLite in the data folder; postgresql+psycopg://...
    in production). Run `plangate db upgrade` once before the first worker starts (or pass
    --wait-for-schema, to wait for it: a deployment that starts both at once). Logs are
    JSON lines on stderr with the goal id and trace id. With PLANGATE_METRICS_PORT set, it
    answers GET /healthz, /readyz and /metrics there (on PLANGATE_HEALTH_HOST, default
    127.0.0.1); PLANGATE_HEALTH_PORT is its older name.
    """
    from plangate.logs import setup_logging
    from plangate.process_name import name_process
    from plangate.worker import Worker

    name_process(stage)
    settings = load_settings()
    setup_logging(settings.log_level, stage=stage)
    raise typer.Exit(Worker(stage, settings, concurrency, wait_for_schema).run())
