"""The tools of MCP servers as plangate tools: listed with their schemas, hints mapped to policy.

A server list file (`PLANGATE_MCP_SERVERS`, JSON, or YAML when it ends in .yaml/.yml) has the shape
other MCP clients use::

    {"mcpServers": {
        "incidents": {"command": "python", "args": ["-m", "incidents_mcp"], "env": {}},
        "tickets": {"url": "https://tickets.example/mcp",
                    "headers": {"Authorization": "Bearer ${TICKETS_TOKEN}"},
                    "tools": {"close_ticket": {"tags": []}}}}}

A tool `t` of server `s` is offered as `s.t` (set `"prefix"` to change `s.`; `""` keeps bare
names). Its annotations, which are the server's own claims, map as the MCP spec defines them:
`readOnlyHint` (default false) gives effect `read`, else `write`; `idempotentHint` (default
false, true for a read-only tool) gives `idempotent`; `destructiveHint` gives the tag
`destructive` and defaults to true for a tool that is not read-only, so an unannotated tool is a
destructive write. `"tools": {"t": {"effect": ..., "idempotent": ..., "tags": [...]}}` replaces
those values field by field.

The SDK is async and the executor is threaded: each file gets one event-loop thread holding one
session per server, which calls are submitted to.
"""

from __future__ import annotations

import atexit
from pathlib import Path

from plangate.errors import ToolLoadError
from plangate.tools.mcp.connection import Connection
from plangate.tools.mcp.loop import Loop
from plangate.tools.mcp.servers_file import (
    HttpServer,
    ServerConfig,
    StdioServer,
    ToolOverride,
    read_server_list,
)
from plangate.tools.mcp.tool import META_PREFIX, McpTool, derive_policy, tools_of

__all__ = [
    "META_PREFIX",
    "HttpServer",
    "McpServers",
    "McpTool",
    "ServerConfig",
    "StdioServer",
    "ToolOverride",
    "close_all",
    "derive_policy",
    "open_mcp_servers",
    "read_server_list",
]


class McpServers:
    """The servers of one server list file, connected, and the plangate tools they offer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tools: list[McpTool] = []
        self._connections: list[Connection] = []
        self._loop: Loop | None = None
        configs = read_server_list(path)
        try:
            import mcp  # noqa: F401
        except ImportError as exc:
            raise ToolLoadError(
                f"MCP servers ({path}) need the mcp SDK ({exc}); pip install 'plangate[mcp]'"
            ) from exc
        self._loop = Loop()
        _OPEN.add(self)
        try:
            for name, config in configs.items():
                connection = Connection(name, config, path, self._loop)
                self._connections.append(connection)
                connection.open()
                self.tools.extend(tools_of(connection))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close every session (stopping stdio servers) and the loop; calling again does nothing."""
        _OPEN.discard(self)
        for connection in self._connections:
            connection.close()
        self._connections = []
        if self._loop is not None:
            self._loop.stop()
            self._loop = None

    def __enter__(self) -> McpServers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_OPEN: set[McpServers] = set()


def open_mcp_servers(path: Path) -> McpServers:
    """Connect to every server of the list file at `path`; their tools are in `.tools`."""
    return McpServers(path)


@atexit.register
def close_all() -> None:
    """Close every server list still open (run at exit: it stops stdio servers' processes)."""
    for servers in list(_OPEN):
        servers.close()
