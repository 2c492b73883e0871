"""A real MCP server for the adapter's tests, written with the `mcp` SDK's server side.

Run it as `python -m tests.mcp_server --transport stdio` or
`python -m tests.mcp_server --transport http --port N` (streamable HTTP on 127.0.0.1:N/mcp).

Its tools cover each hint the adapter maps: a read-only `open_incidents`, an idempotent and
non-destructive `page_oncall` that records each call (arguments and request `_meta`) in the file
named by `MCP_TEST_EFFECTS`, a destructive `delete_incident` that records its deletions there
too, an unannotated `restart_service`, a `failing_tool` that answers with `isError`,
`incident_summary` with an output schema (structured content), and `server_pid` and
`crash_server` to break the connection on purpose.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

server = MCPServer("incidents", log_level="WARNING")

INCIDENTS = [
    {"id": "INC-1", "title": "API latency", "severity": "high"},
    {"id": "INC-2", "title": "Disk almost full", "severity": "low"},
]


def _record(kind: str, args: dict[str, Any], ctx: Context) -> None:
    """Append one effect line, so the test can count what really happened."""
    path = Path(os.environ["MCP_TEST_EFFECTS"])
    meta = dict(ctx.request_context.meta or {})
    authorization = (ctx.headers or {}).get("authorization")
    line = {"tool": kind, "args": args, "meta": meta, "authorization": authorization}
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(line) + "\n")


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def open_incidents(severity: str | None = None) -> str:
    """List the open incidents' ids, optionally of one severity."""
    ids = [i["id"] for i in INCIDENTS if severity is None or i["severity"] == severity]
    return ",".join(ids)


@server.tool(
    annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True)
)
def page_oncall(message: str, ctx: Context) -> str:
    """Page the on-call engineer with a message."""
    _record("page_oncall", {"message": message}, ctx)
    return f"paged: {message}"


@server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
def delete_incident(incident_id: str, ctx: Context) -> str:
    """Delete an incident for good."""
    _record("delete_incident", {"incident_id": incident_id}, ctx)
    return f"deleted {incident_id}"


@server.tool()
def restart_service(service: str) -> str:
    """Restart a service (no annotations: the MCP defaults apply)."""
    return f"restarted {service}"


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def failing_tool() -> str:
    """Always fail, as a tool whose backend is down does."""
    raise ToolError("the incident database is unreachable")


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def incident_summary() -> dict[str, int]:
    """Count the open incidents by severity."""
    counts: dict[str, int] = {}
    for incident in INCIDENTS:
        counts[incident["severity"]] = counts.get(incident["severity"], 0) + 1
    return counts


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def server_pid() -> int:
    """Return this server process's id."""
    return os.getpid()


@server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
def crash_server() -> str:
    """Exit the server in the middle of the call, as a crash does."""
    os._exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    parser.add_argument("--port", type=int, default=8000)
    options = parser.parse_args()
    if options.transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=options.port)


if __name__ == "__main__":
    main()
