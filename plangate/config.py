"""Settings from `PLANGATE_*` environment variables (pydantic-settings), with sane defaults.

`Settings` is the only reader of plangate's configuration in the environment: its fields are
the `PLANGATE_*` variables, and the few conventional names plangate honours as they are
(`XDG_DATA_HOME`, `OPENAI_API_KEY`, `OPENAI_BASE_URL`). Code given no settings (tools, the
trace switches, the fault points) asks `plangate.current_settings.current_settings()`.

The default data folder is per user: `$XDG_DATA_HOME/plangate`, else `~/.local/share/plangate`
(the SQLite database, the approval signing key, the demo tools' records).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from plangate import redaction
from plangate import setting_values as values
from plangate.addresses import check_broker_url, check_model_server_url, check_web_address
from plangate.errors import ConfigError, own_words


def default_data_dir(xdg_data_home: Path | None) -> Path:
    """Return the per-user data folder: `<xdg_data_home>/plangate` or `~/.local/share/plangate`."""
    return (xdg_data_home or Path.home() / ".local" / "share") / "plangate"


NAMESPACE_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
# A year: past `timedelta`'s range a hold or an approval failed the gate on each plan.
MAX_TTL_SECONDS = 366 * 24 * 3600


class Settings(BaseSettings):
    """Everything configurable, read from the environment (prefix `PLANGATE_`).

    A field with a `validation_alias` is read from that conventional name instead, unprefixed
    (`XDG_DATA_HOME`, `OPENAI_*`); `variable_name(field)` says which variable a field is.
    """

    # populate_by_name: a field read from a conventional name can be given by name in code.
    model_config = SettingsConfigDict(env_prefix="PLANGATE_", extra="ignore", populate_by_name=True)

    # Declared before data_dir: its default is derived from this one.
    xdg_data_home: Path | None = Field(
        default=None,
        validation_alias="XDG_DATA_HOME",
        description="The freedesktop.org per-user data folder (`XDG_DATA_HOME`, not prefixed); "
        "the default data folder is `plangate` inside it.",
    )
    data_dir: Path = Field(
        default_factory=lambda data: default_data_dir(data["xdg_data_home"]),
        description="The data folder: the SQLite database, the approval signing key, the demo "
        "tools' records (default: `$XDG_DATA_HOME/plangate`, else `~/.local/share/plangate`).",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in the data folder."
    )
    broker_url: str = Field(default="redis://127.0.0.1:6379/0", description="kombu URL.")
    namespace: str = Field(
        default="plangate",
        pattern=NAMESPACE_PATTERN,
        description="Prefix of the exchange and queue names.",
    )
    planner: Literal["auto", "openai", "playbook"] = Field(
        default="auto",
        description="`auto`: openai when OPENAI_API_KEY or OPENAI_BASE_URL is set, else playbook.",
    )
    openai_api_key: SecretStr | None = Field(
        default=None,
        validation_alias="OPENAI_API_KEY",
        description="The LLM planner's API key (`OPENAI_API_KEY`, not prefixed, as the openai "
        "SDK names it); may be unset for a local server given by OPENAI_BASE_URL.",
    )
    openai_base_url: str | None = Field(
        default=None,
        validation_alias="OPENAI_BASE_URL",
        description="An OpenAI-compatible server for the LLM planner, e.g. llama.cpp, vLLM or "
        "Ollama (`OPENAI_BASE_URL`, not prefixed, as the openai SDK names it).",
    )
    playbook_file: Path | None = Field(
        default=None,
        description="The playbook planner's YAML file (unset: the packaged example playbooks).",
    )
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
    policy_file: Path | None = Field(
        default=None, description="The gate's policy file (unset: the packaged default policy)."
    )
    tools: str = Field(
        default="plangate.demo.tools", description="Comma-separated tool modules to load."
    )
    mcp_servers: Path | None = Field(
        default=None,
        description="A JSON (or YAML) file of MCP servers whose tools the executor offers too.",
    )
    signing_key_file: Path | None = Field(
        default=None,
        description="The gate's Ed25519 private key, PEM (unset: `keys/` in the data folder, "
        "created on first use).",
    )
    trusted_keys_dir: Path | None = Field(
        default=None,
        description="The folder of `*.pub` keys whose approvals the executor accepts (unset: "
        "`keys/trusted` in the data folder).",
    )
    approval_ttl_seconds: int = Field(
        default=3600,
        gt=0,
        le=MAX_TTL_SECONDS,
        description="An approval not used to start a run this long expires.",
    )
    hold_ttl_seconds: int = Field(
        default=86400,
        gt=0,
        le=MAX_TTL_SECONDS,
        description="A plan held this long for a person expires.",
    )
    webhook_url: str | None = Field(
        default=None, description="Receives a JSON POST (Slack-compatible) when a plan is held."
    )
    webhook_allowed_hosts: str = Field(
        default="",
        description="The hosts the `webhook_post` tool may reach, comma-separated `host` or "
        "`host:port` (e.g. `hooks.example.com,[::1]:8080`); unset, it reaches none.",
    )
    public_url: str = Field(
        default="http://127.0.0.1:8080", description="Where reviewers reach `plangate serve`."
    )
    reviewers_file: Path | None = Field(
        default=None,
        description="Reviewers (names, roles, token hashes), written by `plangate reviewers add`: "
        "serve authenticates by it, and the gate checks each person's approval by it.",
    )
    trusted_proxies: str = Field(
        default="",
        description="The proxies in front of `plangate serve` whose `X-Forwarded-For` names the "
        "client (comma-separated addresses or networks); unset: none, and the client is who "
        "connected. Failed logins are limited per client: trust only your own proxies.",
        max_length=4096,
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
    intake_token: SecretStr | None = Field(
        default=None,
        description="When set, `plangate serve` accepts goals only with it as a bearer token.",
    )
    intake_token_previous: SecretStr | None = Field(
        default=None,
        description="While the intake token is rotated: the old one, accepted too (its use is "
        "logged) until every sender has the new one.",
    )
    intake_goals_per_minute: int = Field(
        default=600,
        ge=0,
        description="Goals one client address may submit to a `serve` process a minute; past "
        "it, 429 with Retry-After. 0: no limit. A service sending more publishes on the broker.",
    )
    server_url: str | None = Field(
        default=None, description="The `plangate serve` the CLI's review commands talk to."
    )
    concurrency: int = Field(
        default=4, ge=1, le=256, description="Messages a worker handles at the same time."
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Deliveries of a failing message before it is dead-lettered."
    )
    step_lease_seconds: float = Field(
        default=300.0, gt=0, description="How long a step's claim holds before another may act."
    )
    handler_timeout_seconds: float = Field(
        default=1740.0,  # under RabbitMQ's consumer_timeout (30 min), which it checks each minute
        gt=0,
        description="A worker's handler still running this long is reported, and its message "
        "handed back for another attempt (handlers are idempotent). On RabbitMQ, keep it and "
        "every tool's timeout below the broker's consumer_timeout (30 min by default).",
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
    http_timeout: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Seconds one HTTP attempt of an integration or notice may wait for an answer.",
    )
    http_deadline: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="Seconds a whole HTTP call may take, every attempt and wait between included.",
    )
    http_attempts: int = Field(
        default=3,
        ge=1,
        le=10,
        description="Attempts of an HTTP call that fails by connection, 429 or 5xx.",
    )
    http_backoff: float = Field(
        default=0.5,
        ge=0,
        le=30,
        description="Seconds before the first HTTP retry (doubling, with jitter, up to 30 s).",
    )
    audit_checkpoint_seconds: float = Field(
        default=60.0,
        gt=0,
        description=(
            "How often a gate worker seals every audit chain's head with a signed checkpoint "
            "(if any chain moved): a goal's chain removed whole is found by `audit verify`."
        ),
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
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="The least severe log level written (DEBUG, INFO, ...)."
    )
    jaeger_url: str = Field(
        default="http://localhost:16686",
        description="The Jaeger UI that `plangate trace` links to (http:// or https://).",
    )
    trace_link_only: bool = Field(
        default=False,
        description="Start the executor's run in a trace of its own, linked to the goal's (a "
        "run may start hours after the plan); off: the run is part of the goal's trace.",
    )
    trace_content: bool = Field(
        default=False,
        description="Put tool arguments and results on spans. Off by default: they may carry "
        "personal data or secrets.",
    )
    demo_data: Path | None = Field(
        default=None,
        description="The demo tools' numbers, JSON like "
        '`{"open_tickets": 128, "sla_threshold": 100}` (unset: the packaged `data.json`).',
    )
    demo_ticket_count: int | None = Field(
        default=None, description="Overrides the demo's count of open tickets."
    )
    demo_sla: int | None = Field(
        default=None, description="Overrides the demo's SLA threshold (most open tickets allowed)."
    )
    demo_notifications: Path | None = Field(
        default=None,
        description="The file the demo's notify_oncall appends to (unset: "
        "`notifications.jsonl` in the data folder).",
    )
    fault: str | None = Field(
        default=None,
        description="For plangate's own kill tests only: the fault point at which a process "
        "kills itself (`plangate.faults.POINTS`). Never set it in production.",
    )
    fault_marker: Path | None = Field(
        default=None,
        description="For plangate's own kill tests only: a file created when the fault fires, "
        "so that the restarted process runs on.",
    )

    # How a variable's text is read where pydantic alone would read it wrongly (blank, WARN).
    _blank_is_the_default = field_validator("data_dir", mode="before")(values.blank_is_the_default)
    _blank_is_unset = field_validator(*values.BLANK_MEANS_UNSET, mode="before")(
        values.blank_is_unset
    )
    _not_a_placeholder = field_validator(
        "session_secret", "intake_token", "intake_token_previous", "reviewer_token"
    )(values.not_a_placeholder)
    _a_whole_number = field_validator("demo_ticket_count", "demo_sla", mode="before")(
        values.a_whole_number
    )
    _a_level_name = field_validator("log_level", mode="before")(values.a_level_name)
    _blank_is_off = field_validator("trace_link_only", "trace_content", mode="before")(
        values.blank_is_off
    )

    @model_validator(mode="before")
    @classmethod
    def _known_names(cls, given: Any) -> Any:
        return values.known_names(cls, given)

    @model_validator(mode="after")
    def _some_tools(self) -> Settings:
        values.some_tools(self.tool_modules(), self.mcp_servers)
        return self

    @field_validator("jaeger_url")
    @classmethod
    def _a_web_address(cls, url: str) -> str:
        return check_web_address(url)

    @field_validator("openai_base_url")
    @classmethod
    def _a_model_server(cls, url: str | None) -> str | None:
        return None if url is None else check_model_server_url(url)

    @field_validator("broker_url")
    @classmethod
    def _a_broker_plangate_speaks(cls, url: str) -> str:
        return check_broker_url(url)

    def model_post_init(self, context: Any) -> None:
        """Make the secrets among these settings known to the one redaction point."""
        redaction.register_settings(self)

    @property
    def store_in_data_folder(self) -> bool:
        """Whether the store is the data folder's own SQLite file (no database URL given).

        An embedded run's own then, not a deployment's that other processes share.
        """
        return self.database_url is None

    def resolved_database_url(self) -> str:
        """Return the database URL, defaulting to `plangate.db` in the data folder."""
        return self.database_url or f"sqlite:///{self.data_dir / 'plangate.db'}"

    def tool_modules(self) -> list[str]:
        """Return the tool module names listed in `tools`."""
        return [name.strip() for name in self.tools.split(",") if name.strip()]


def variable_name(field: str) -> str:
    """Return the environment variable a settings field is read from (`PLANGATE_<FIELD>`)."""
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else f"PLANGATE_{field.upper()}"


def settings_error(exc: ValidationError) -> ConfigError:
    """Return a ConfigError naming the variable of the first invalid setting, and what is wrong."""
    problem = exc.errors()[0]
    where = str(problem["loc"][0]) if problem["loc"] else ""
    name = variable_name(where) if where in Settings.model_fields else where.upper()
    said = own_words(problem["msg"])
    return ConfigError(f"{name}: {said}" if name else said)  # (a check of several settings)
