"""The MCP server list file: its models, its reading, `${VAR}` expansion from the environment."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from plangate import redaction
from plangate.errors import ToolLoadError, describe
from plangate.small_files import read_text
from schemas.tool_spec import Effect

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Headers and variables whose values are credentials: known to the redaction point once read.
_SECRET_HEADER = re.compile(r"authorization|cookie|token|key|secret|password|auth", re.I)


class ToolOverride(BaseModel):
    """What plangate is to believe of one tool, in place of the server's hints, field by field."""

    model_config = ConfigDict(extra="forbid")

    effect: Effect | None = None
    idempotent: bool | None = None
    tags: tuple[str, ...] | None = None


class _Server(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["stdio", "http", "streamable-http"] | None = None
    timeout_seconds: float = Field(default=60.0, gt=0)
    prefix: str | None = None
    include: list[str] | None = None
    tools: dict[str, ToolOverride] = Field(default_factory=dict)


class StdioServer(_Server):
    """A server plangate starts as a process and talks to over its stdin and stdout."""

    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None


class HttpServer(_Server):
    """A server plangate reaches over streamable HTTP."""

    url: str = Field(pattern=r"^https?://")
    headers: dict[str, str] = Field(default_factory=dict)


ServerConfig = StdioServer | HttpServer


def read_server_list(path: Path) -> dict[str, ServerConfig]:
    """Parse a server list file; every mistake is a ToolLoadError naming the file and server."""
    yaml_file = path.suffix.lower() in (".yaml", ".yml")
    try:
        text = read_text(path)
    except OSError as exc:
        raise ToolLoadError(
            f"cannot read the MCP server list {path}: {exc.strerror}; check PLANGATE_MCP_SERVERS"
        ) from exc
    try:
        data = yaml.safe_load(text) if yaml_file else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        kind = "YAML" if yaml_file else "JSON (name it .yaml for YAML)"
        raise ToolLoadError(f"MCP server list {path} is not valid {kind}: {exc}") from exc
    except RecursionError:
        raise ToolLoadError(f"MCP server list {path} is nested too deeply to read") from None
    if not isinstance(data, dict) or not isinstance(data.get("mcpServers"), dict):
        raise ToolLoadError(
            f'MCP server list {path} must be an object with "mcpServers": {{name: server, ...}}'
        )
    if unknown := sorted(set(data) - {"mcpServers"}):
        raise ToolLoadError(f'MCP server list {path}: unknown key "{unknown[0]}"')
    if not data["mcpServers"]:
        raise ToolLoadError(f'MCP server list {path} lists no servers under "mcpServers"')
    return {str(name): _server(str(name), raw, path) for name, raw in data["mcpServers"].items()}


def _server(name: str, raw: Any, path: Path) -> ServerConfig:
    where = f"MCP server {name!r} in {path}"
    if not isinstance(raw, dict):
        raise ToolLoadError(f"{where} must be an object")
    kind = raw.get("type") or ("stdio" if "command" in raw else "http" if "url" in raw else None)
    if kind is None:
        raise ToolLoadError(f'{where} needs "command" (a stdio server) or "url" (streamable HTTP)')
    model: type[ServerConfig] = StdioServer if kind == "stdio" else HttpServer
    try:
        server = model.model_validate(raw)
    except ValidationError as exc:
        raise ToolLoadError(f"{where}: {describe(exc, model)}") from exc
    # Values from the environment keep secrets (a token) out of the file; whatever a header
    # takes from it, and any credential header or variable, is a secret from then on.
    if isinstance(server, StdioServer):
        server.env = {
            k: _expand(v, f"{where}, env {k}", secret=False) for k, v in server.env.items()
        }
        secrets = [v for k, v in server.env.items() if _SECRET_HEADER.search(k)]
        redaction.register_secrets(secrets)
    else:
        server.headers = {k: _expand(v, f"{where}, header {k}") for k, v in server.headers.items()}
        for name, value in server.headers.items():
            if _SECRET_HEADER.search(name):
                redaction.register_header(value)
    return server


def _expand(value: str, where: str, *, secret: bool = True) -> str:
    def variable(match: re.Match[str]) -> str:
        # Not Settings: the user's file names any variable to interpolate, not plangate's own.
        found = os.environ.get(match.group(1))
        if found is None:
            raise ToolLoadError(f"{where}: environment variable {match.group(1)} is not set")
        if secret or _SECRET_HEADER.search(match.group(1)):
            redaction.register_secret(found)
        return found

    return _VARIABLE.sub(variable, value)
