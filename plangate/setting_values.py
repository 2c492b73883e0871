"""How a variable's text becomes a setting, where pydantic's reading alone would be wrong.

Compose files and Kubernetes leave variables set but empty, and people write `WARN` or
`on`: each reader here says what such text means, or why it cannot be used. `Settings`
applies them to its fields (`plangate.config`).
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr
from pydantic_core import PydanticUseDefault


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
