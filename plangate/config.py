"""Settings from `PLANGATE_*` environment variables (pydantic-settings), with sane defaults.

The default data folder is per user: `$XDG_DATA_HOME/plangate`, else `~/.local/share/plangate`.
It holds the SQLite database, the approval signing key and the demo tools' records.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from plangate import redaction


def default_data_dir() -> Path:
    """Return the per-user data folder: `$XDG_DATA_HOME/plangate` or `~/.local/share/plangate`."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "plangate"


# kombu transports plangate is tested on (and their TLS and driver spellings).
BROKER_SCHEMES = frozenset({"redis", "rediss", "amqp", "amqps", "pyamqp", "memory"})


class Settings(BaseSettings):
    """Everything configurable, read from the environment (prefix `PLANGATE_`)."""

    model_config = SettingsConfigDict(env_prefix="PLANGATE_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in the data folder."
    )
    broker_url: str = Field(default="redis://127.0.0.1:6379/0", description="kombu URL.")
    namespace: str = Field(
        default="plangate",
        pattern=r"^[a-z][a-z0-9_-]{0,31}$",
        description="Prefix of the exchange and queue names.",
    )
    planner: Literal["auto", "openai", "playbook"] = Field(
        default="auto",
        description="`auto`: openai when OPENAI_API_KEY or OPENAI_BASE_URL is set, else playbook.",
    )
    playbook_file: Path | None = None
    model: str = Field(default="gpt-4o-mini", min_length=1, description="The LLM planner's model.")
    planner_attempts: int = Field(default=3, ge=1, le=10, description="Tries per plan revision.")
    planner_timeout_seconds: float = Field(default=60.0, gt=0, description="Per LLM request.")
    planner_max_tokens: int = Field(default=4096, ge=16, description="Per LLM answer.")
    planner_max_retries: int = Field(
        default=2, ge=0, le=10, description="The openai SDK's own retries (429, 5xx, timeouts)."
    )
    goal_token_budget: int = Field(
        default=60_000, ge=1, description="LLM tokens one goal may use, across every revision."
    )
    replan_limit: int = Field(
        default=2, ge=0, le=20, description="Revisions made after rejections (or failures)."
    )
    replan_on_failure: bool = Field(
        default=False, description="Also revise a plan whose execution failed."
    )
    policy_file: Path | None = None
    tools: str = Field(
        default="plangate.demo.tools", description="Comma-separated tool modules to load."
    )
    mcp_servers: Path | None = Field(
        default=None,
        description="A JSON (or YAML) file of MCP servers whose tools the executor offers too.",
    )
    signing_key_file: Path | None = None
    trusted_keys_dir: Path | None = None
    approval_ttl_seconds: int = Field(default=3600, gt=0)
    hold_ttl_seconds: int = Field(
        default=86400, gt=0, description="A plan held this long for a person expires."
    )
    webhook_url: str | None = Field(
        default=None, description="Receives a JSON POST (Slack-compatible) when a plan is held."
    )
    public_url: str = Field(
        default="http://127.0.0.1:8080", description="Where reviewers reach `plangate serve`."
    )
    reviewers_file: Path | None = Field(
        default=None,
        description="Reviewers (names, roles, token hashes), written by `plangate reviewers add`.",
    )
    session_secret: SecretStr | None = Field(
        default=None,
        description="Signs review-page sessions and forms (32+ characters); the same on every "
        "replica of `serve`. Unset: one per process, so replicas refuse each other's forms.",
    )
    session_ttl_seconds: int = Field(
        default=12 * 3600, gt=0, description="A review-page login lasts this long."
    )
    reviewer_token: SecretStr | None = Field(
        default=None, description="The CLI's reviewer token (`plangate review approve` ...)."
    )
    server_url: str | None = Field(
        default=None, description="The `plangate serve` the CLI's review commands talk to."
    )
    concurrency: int = Field(default=4, ge=1, le=256)
    max_attempts: int = Field(default=3, ge=1)
    step_lease_seconds: float = Field(
        default=300.0, gt=0, description="How long a step's claim holds before another may act."
    )
    handler_timeout_seconds: float = Field(
        default=1800.0,
        gt=0,
        description="A worker's handler still running this long is reported, and its message "
        "handed back to the stage for another attempt (handlers are idempotent).",
    )
    tool_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A tool call's deadline unless its tool sets `timeout`: a read still "
        "running then fails; a write becomes `unknown` for a person to settle.",
    )
    redelivery_after_seconds: float = Field(
        default=30.0,
        ge=1,
        description="On Redis, a message that a worker stopped renewing (it died) goes back to "
        "its queue this long after, restored by any live worker; live workers renew theirs.",
    )
    reconcile_after_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A goal unchanged this long is republished by a worker (then 2x, 4x, ...).",
    )
    relay_after_seconds: float = Field(
        default=30.0, gt=0, description="An outbox row unsent this long is published by a worker."
    )
    sweep_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often a worker relays the outbox and reconciles."
    )
    amqp_heartbeat_seconds: float = Field(
        default=60.0,
        ge=0,
        description="AMQP heartbeat of a worker's consuming connection: a RabbitMQ (or a network "
        "path) gone silent is noticed within two of them; 0 turns heartbeats off.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="A worker answers /metrics (Prometheus), /healthz and /readyz on this port "
        "(unset: health_port, if set; else off).",
    )
    health_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="A worker answers /healthz and /readyz on this port (unset: off; 0: any).",
    )
    health_host: str = Field(
        default="127.0.0.1",
        description="Where the health endpoint listens (0.0.0.0 for Kubernetes probes).",
    )
    log_level: str = "INFO"
    jaeger_url: str = Field(
        default="http://localhost:16686",
        description="The Jaeger UI that `plangate trace` links to.",
    )

    @field_validator("broker_url")
    @classmethod
    def _a_broker_plangate_speaks(cls, url: str) -> str:
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in BROKER_SCHEMES:
            raise ValueError(
                f"{url.split('://', 1)[0]!r} is not a broker plangate speaks; use "
                "redis://host:6379/0, amqp://user:password@host:5672// or memory://"
            )
        return url

    def model_post_init(self, context: Any) -> None:
        """Make the secrets among these settings known to the one redaction point."""
        redaction.register_settings(self)

    def resolved_database_url(self) -> str:
        """Return the database URL, defaulting to `plangate.db` in the data folder."""
        return self.database_url or f"sqlite:///{self.data_dir / 'plangate.db'}"

    def tool_modules(self) -> list[str]:
        """Return the tool module names listed in `tools`."""
        return [name.strip() for name in self.tools.split(",") if name.strip()]
