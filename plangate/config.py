"""Settings from `PLANGATE_*` environment variables (pydantic-settings), with sane defaults.

The default data folder is per user: `$XDG_DATA_HOME/plangate`, else `~/.local/share/plangate`.
It holds the SQLite database, the approval signing key and the demo tools' records.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    """Return the per-user data folder: `$XDG_DATA_HOME/plangate` or `~/.local/share/plangate`."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "plangate"


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
    planner: Literal["auto", "openai", "playbook"] = "auto"
    playbook_file: Path | None = None
    policy_file: Path | None = None
    tools: str = Field(
        default="plangate.demo.tools", description="Comma-separated tool modules to load."
    )
    signing_key_file: Path | None = None
    trusted_keys_dir: Path | None = None
    approval_ttl_seconds: int = Field(default=3600, gt=0)
    concurrency: int = Field(default=4, ge=1, le=256)
    max_attempts: int = Field(default=3, ge=1)

    def resolved_database_url(self) -> str:
        """Return the database URL, defaulting to `plangate.db` in the data folder."""
        return self.database_url or f"sqlite:///{self.data_dir / 'plangate.db'}"

    def tool_modules(self) -> list[str]:
        """Return the tool module names listed in `tools`."""
        return [name.strip() for name in self.tools.split(",") if name.strip()]
