"""How a variable's text becomes a setting, where pydantic's reading alone would be wrong.

Compose files and Kubernetes leave variables set but empty, and people write `WARN` or
`on`: each reader here says what such text means, or why it cannot be used. `Settings`
applies them to its fields (`plangate.config`).
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUseDefault

from plangate.errors import ConfigError

# Set but empty (as compose files leave them) means unset, not an empty token or the current
# folder (a blank PLANGATE_POLICY_FILE read the folder `.`).
BLANK_MEANS_UNSET = (
    *("xdg_data_home", "openai_api_key", "openai_base_url", "intake_token", "demo_data"),
    *("demo_notifications", "fault", "fault_marker", "playbook_file", "policy_file"),
    *("mcp_servers", "signing_key_file", "trusted_keys_dir", "reviewers_file"),
)


def known_names(model: type[BaseModel], given: Any) -> Any:
    """Refuse a keyword no setting has, naming the closest one; return what was given.

    Unknown input is ignored (the environment holds variables of every program), and so was
    `Settings(playbok_file=...)`: the packaged playbook ran instead. A misspelt `PLANGATE_*`
    variable is refused too (`plangate.current_settings.check_variable_names`).
    """
    if not isinstance(given, dict):
        return given
    fields = model.model_fields
    aliases = {f.validation_alias for f in fields.values() if isinstance(f.validation_alias, str)}
    for name in given:
        if name not in fields and name not in aliases:
            close = difflib.get_close_matches(str(name), sorted(fields), n=1, cutoff=0.6)
            meant = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(
                f"{name} is not a setting plangate reads{meant} (the documentation's Settings "
                "page lists them all)"
            )
    return given


def blank_is_the_default(value: Any) -> Any:
    """Read a blank folder as unset: not the current folder, where the database would land."""
    if isinstance(value, str) and not value.strip():
        raise PydanticUseDefault
    return value


def blank_is_unset(value: Any) -> Any:
    """Read a blank value as unset: not an empty token, nor the folder `.` for a file."""
    return None if isinstance(value, str) and not value.strip() else value


def not_a_placeholder(value: SecretStr | None) -> SecretStr | None:
    """Refuse deploy/'s placeholders: they are public, and taken as set anyone held the token."""
    if value is not None and "CHANGE-ME" in value.get_secret_value().upper():
        raise ValueError(
            "is still deploy/'s placeholder; set a secret of your own: "
            "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )
    return value


def a_whole_number(value: Any) -> Any:
    """Read a whole number (blank: unset), saying so of anything else."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"must be a whole number, not {value!r}") from None


def a_level_name(value: Any) -> Any:
    """Read a log level in any case, with logging's aliases (WARN, FATAL); blank: INFO."""
    if not isinstance(value, str):
        return value
    level = value.strip().upper() or "INFO"
    return {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(level, level)


def blank_is_off(value: Any) -> Any:
    """Read a blank switch as off; otherwise pydantic's reading: 1/true/yes/on, 0/false/..."""
    if isinstance(value, str):
        return value.strip().lower() or False
    return value


def some_tools(tool_modules: list[str], mcp_servers: object | None) -> None:
    """Refuse settings that give an executor no tool at all.

    Every plan would name a tool no executor has (a run waited out its timeout; an executor
    failed each goal it took). Unset, PLANGATE_TOOLS gives the demo tools.
    """
    if not tool_modules and mcp_servers is None:
        raise ValueError(
            "PLANGATE_TOOLS names no tool module (nor does PLANGATE_MCP_SERVERS name a "
            "file of servers); give one or more modules, comma-separated, or leave it "
            "unset for the demo tools (plangate.demo.tools)"
        )
