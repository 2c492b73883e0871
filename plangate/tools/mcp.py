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

import asyncio
import atexit
import concurrent.futures
import json
import os
import re
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import yaml
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from plangate.errors import ToolError, ToolLoadError
from plangate.tools.context import ToolContext
from plangate.tools.decorator import Tool
from schemas.tool_spec import Effect, ToolSpec

if TYPE_CHECKING:
    from mcp import ClientSession
    from mcp.types import CallToolResult, RequestParamsMeta, ToolAnnotations
    from mcp.types import Tool as RemoteTool

T = TypeVar("T")

META_PREFIX = "plangate/"
"""Prefix of the `_meta` keys a call carries: idempotency_key, goal_id, plan_id, step_id."""

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_CLOSE_TIMEOUT = 10.0


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
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ToolLoadError(
            f"cannot read the MCP server list {path}: {exc.strerror}; check PLANGATE_MCP_SERVERS"
        ) from exc
    try:
        data = yaml.safe_load(text) if yaml_file else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        kind = "YAML" if yaml_file else "JSON (name it .yaml for YAML)"
        raise ToolLoadError(f"MCP server list {path} is not valid {kind}: {exc}") from exc
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
        raise ToolLoadError(f"{where}: {_describe(exc, model)}") from exc
    # Values from the environment keep secrets (a token) out of the file.
    if isinstance(server, StdioServer):
        server.env = {k: _expand(v, f"{where}, env {k}") for k, v in server.env.items()}
    else:
        server.headers = {k: _expand(v, f"{where}, header {k}") for k, v in server.headers.items()}
    return server


def _describe(exc: ValidationError, model: type[BaseModel]) -> str:
    # Only locations and messages: an input may be a secret (a header).
    parts = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(model.model_fields)
            parts.append(f'unknown key "{loc}" (known keys: {allowed})')
        else:
            parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def _expand(value: str, where: str) -> str:
    def variable(match: re.Match[str]) -> str:
        found = os.environ.get(match.group(1))
        if found is None:
            raise ToolLoadError(f"{where}: environment variable {match.group(1)} is not set")
        return found

    return _VARIABLE.sub(variable, value)


def derive_policy(annotations: ToolAnnotations | None) -> tuple[Effect, bool, tuple[str, ...]]:
    """Return (effect, idempotent, tags) as the MCP spec reads a tool's hints, absent ones too."""
    read_only = bool(annotations and annotations.read_only_hint)
    destructive = not read_only
    idempotent = read_only  # reading again changes nothing more
    if annotations is not None:
        # An explicit destructiveHint counts even on a read-only tool: the safer reading.
        if annotations.destructive_hint is not None:
            destructive = annotations.destructive_hint
        if annotations.idempotent_hint is not None:
            idempotent = annotations.idempotent_hint
    return ("read" if read_only else "write"), idempotent, ("destructive",) if destructive else ()


class _Connection:
    """One server's session, held open by a task on the shared loop; reopened when it breaks."""

    def __init__(self, name: str, config: ServerConfig, source: Path, loop: _Loop) -> None:
        self.name = name
        self.config = config
        self.where = f"MCP server {name!r} (from {source})"
        self._loop = loop
        self._lock = threading.Lock()
        self._session: ClientSession | None = None
        self._stop: asyncio.Event | None = None
        self._holder: concurrent.futures.Future[None] | None = None
        self._generation = 0

    def open(self) -> None:
        """Start or connect to the server and initialize the session, within the timeout."""
        ready: concurrent.futures.Future[ClientSession] = concurrent.futures.Future()
        self._stop = asyncio.Event()
        self._holder = self._loop.submit(self._hold(ready, self._stop))
        try:
            self._session = ready.result(timeout=self.config.timeout_seconds)
        except concurrent.futures.TimeoutError:
            self._holder.cancel()
            self.close()
            raise ToolLoadError(
                f"{self.where} did not answer within {self.config.timeout_seconds:g} s; "
                f"check that it starts and speaks MCP, or raise its timeout_seconds"
            ) from None
        except Exception as exc:
            self.close()
            raise ToolLoadError(f"{self.where} {self._failure(exc)}") from exc

    def _failure(self, exc: BaseException) -> str:
        reason = "; ".join(f"{type(e).__name__}: {e}" for e in _leaves(exc))
        if isinstance(self.config, StdioServer):
            return f"could not be started with {self.config.command!r}: {reason}; fix its command"
        url = _without_secrets(self.config.url)
        return f"is unreachable at {url}: {reason}; check its url and that it runs"

    async def _hold(
        self, ready: concurrent.futures.Future[ClientSession], stop: asyncio.Event
    ) -> None:
        from mcp import ClientSession

        try:
            async with AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._transport())
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                ready.set_result(session)
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    def _transport(self) -> AbstractAsyncContextManager[tuple[Any, Any]]:
        if isinstance(self.config, StdioServer):
            from mcp import StdioServerParameters, stdio_client

            params = StdioServerParameters(
                command=self.config.command,
                args=self.config.args,
                env=self.config.env,
                cwd=self.config.cwd,
            )
            return stdio_client(params)
        return _http_transport(self.config)

    def close(self) -> None:
        """End the session (and a stdio server's process); wait for that, within a bound."""
        stop, holder = self._stop, self._holder
        self._session = self._stop = self._holder = None
        if stop is not None:
            self._loop.call(stop.set)
        if holder is not None:
            try:
                holder.result(timeout=_CLOSE_TIMEOUT)
            except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                holder.cancel()

    def list_tools(self) -> list[RemoteTool]:
        """Return every tool the server lists, following pagination."""
        from mcp.types import PaginatedRequestParams

        session = self._live()
        tools: list[RemoteTool] = []
        cursor: str | None = None
        while True:
            params = None if cursor is None else PaginatedRequestParams(cursor=cursor)
            page = self._loop.run(session.list_tools(params=params), self.config.timeout_seconds)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                return tools

    def call(
        self, tool: str, args: dict[str, Any], meta: dict[str, Any], *, repeatable: bool
    ) -> CallToolResult:
        """Call `tool`; on a lost connection, reconnect and call again only if `repeatable`."""
        from mcp import MCPError
        from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT

        unknown = "" if repeatable else "; whether it took effect is unknown"
        session, generation = self._checked(repeatable)
        try:
            return self._request(session, tool, args, meta)
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                raise ToolError(f"{self._silent(tool)}{unknown}") from exc
            if exc.code != CONNECTION_CLOSED:
                raise
            self._reopen(generation)
            if not repeatable:
                raise ToolError(
                    f"the connection to {self.where} broke during the call to {tool}{unknown}, "
                    "so it is not sent again: check the server, then retry the goal"
                ) from exc
        session, _ = self._checked(repeatable=True)
        return self._request(session, tool, args, meta)

    def _silent(self, tool: str) -> str:
        timeout = self.config.timeout_seconds
        return f"{self.where}: {tool} gave no answer within {timeout:g} s (its timeout_seconds)"

    def _checked(self, repeatable: bool) -> tuple[ClientSession, int]:
        session, generation = self._live(), self._generation
        if not repeatable:
            # A call that must not run twice is only sent over a session known to be alive,
            # so a lost connection during it really means "outcome unknown".
            try:
                self._loop.run(session.send_ping(), self.config.timeout_seconds)
            except Exception:
                self._reopen(generation)
                session, generation = self._live(), self._generation
        return session, generation

    def _request(
        self, session: ClientSession, tool: str, args: dict[str, Any], meta: dict[str, Any]
    ) -> CallToolResult:
        timeout = self.config.timeout_seconds
        request_meta = cast("RequestParamsMeta", meta)
        call = session.call_tool(tool, args, read_timeout_seconds=timeout, meta=request_meta)
        try:
            # The SDK's own timeout answers first; this one guards against a stuck transport.
            return self._loop.run(call, timeout + 5)
        except concurrent.futures.TimeoutError:
            raise ToolError(self._silent(tool)) from None

    def _live(self) -> ClientSession:
        with self._lock:
            if self._session is None or self._holder is None or self._holder.done():
                self._reconnect()
            assert self._session is not None
            return self._session

    def _reopen(self, generation: int) -> None:
        with self._lock:
            # Another thread may have reopened it already, after the same failure.
            if generation == self._generation:
                self._reconnect()

    def _reconnect(self) -> None:
        self.close()
        try:
            self.open()
        except ToolLoadError as exc:
            raise ToolError(str(exc)) from exc
        self._generation += 1


@asynccontextmanager
async def _http_transport(config: HttpServer) -> AsyncIterator[tuple[Any, Any]]:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    # The SDK's own defaults: a server may hold a response stream open for long.
    timeout = httpx2.Timeout(30.0, read=300.0)
    async with (
        httpx2.AsyncClient(headers=config.headers, timeout=timeout) as client,
        streamable_http_client(config.url, http_client=client) as (read, write),
    ):
        yield read, write


def _without_secrets(url: str) -> str:
    # Messages reach step records and spans: keep a URL's userinfo and query (tokens) out.
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


class _Loop:
    """An event loop on its own thread, for the SDK's coroutines."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="plangate-mcp", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule `coro` on the loop; return its future."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coro` on the loop and wait for its result; cancel it after `timeout` seconds."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def call(self, func: Any) -> None:
        """Call `func()` on the loop's thread."""
        self._loop.call_soon_threadsafe(func)

    def stop(self) -> None:
        """Stop the loop and wait for its thread."""
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CLOSE_TIMEOUT)


class McpTool(Tool[..., Any]):
    """One tool of an MCP server: its arguments checked against its input schema, then sent."""

    def __init__(self, spec: ToolSpec, remote_name: str, connection: _Connection) -> None:
        # Not Tool.__init__: that reads a Python signature, and this tool is a JSON schema.
        self.spec = spec
        self.module = connection.where
        self._remote = remote_name
        self._connection = connection
        self._preview = None
        self._func = self._call_outside_a_plan
        try:
            self._validator = validator_for(spec.args_schema)(spec.args_schema)
            self._validator.check_schema(spec.args_schema)
        except SchemaError as exc:
            raise ToolLoadError(
                f"{connection.where}: tool {remote_name!r} has an invalid input schema: "
                f"{exc.message}"
            ) from exc

    def invoke(self, args: Mapping[str, Any], context: ToolContext) -> Any:
        """Check `args` against the input schema, call the tool on its server, return its output."""
        problems = sorted(self._validator.iter_errors(dict(args)), key=lambda e: list(e.path))
        if problems:
            described = "; ".join(
                f"{'.'.join(str(p) for p in e.path) or 'arguments'}: {e.message}" for e in problems
            )
            raise ToolError(f"tool {self.name}: bad arguments: {described}")
        meta = {
            f"{META_PREFIX}idempotency_key": context.idempotency_key,
            f"{META_PREFIX}goal_id": context.goal_id,
            f"{META_PREFIX}plan_id": context.plan_id,
            f"{META_PREFIX}step_id": context.step_id,
        }
        return self._send(dict(args), meta)

    def _call_outside_a_plan(self, **args: Any) -> Any:
        return self._send(args, {})

    def _send(self, args: dict[str, Any], meta: dict[str, Any]) -> Any:
        repeatable = self.spec.effect == "read" or self.spec.idempotent
        try:
            result = self._connection.call(self._remote, args, meta, repeatable=repeatable)
        except ToolError:
            raise
        except Exception as exc:
            reason = "; ".join(str(e) or type(e).__name__ for e in _leaves(exc))
            raise ToolError(f"tool {self.name} failed: {reason}") from exc
        texts = [_describe_block(block) for block in result.content]
        if result.is_error:
            reason = " ".join(texts) or "the server gave no reason"
            raise ToolError(f"tool {self.name} failed: {reason}")
        if result.structured_content is not None:
            return result.structured_content
        if not texts:
            return None
        return texts[0] if len(texts) == 1 else texts


def _describe_block(block: Any) -> str:
    if block.type == "text":
        return str(block.text)
    if block.type in ("image", "audio"):
        return f"[{block.type} {block.mime_type}, {len(block.data)} base64 characters]"
    if block.type == "resource_link":
        return f"[resource link {block.uri}]"
    resource = block.resource
    text = getattr(resource, "text", None)
    return str(text) if text is not None else f"[resource {resource.uri}]"


class McpServers:
    """The servers of one server list file, connected, and the plangate tools they offer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tools: list[McpTool] = []
        self._connections: list[_Connection] = []
        self._loop: _Loop | None = None
        configs = read_server_list(path)
        try:
            import mcp  # noqa: F401
        except ImportError as exc:
            raise ToolLoadError(
                f"MCP servers ({path}) need the mcp SDK ({exc}); pip install 'plangate[mcp]'"
            ) from exc
        self._loop = _Loop()
        _OPEN.add(self)
        try:
            for name, config in configs.items():
                connection = _Connection(name, config, path, self._loop)
                self._connections.append(connection)
                connection.open()
                self.tools.extend(_tools_of(connection))
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


def _tools_of(connection: _Connection) -> list[McpTool]:
    config = connection.config
    remote = {tool.name: tool for tool in connection.list_tools()}
    for key, names in (("include", config.include or []), ("tools", list(config.tools))):
        if unknown := sorted(set(names) - set(remote)):
            raise ToolLoadError(
                f'{connection.where}: "{key}" names {", ".join(unknown)}, which the server does '
                f"not list; it lists: {', '.join(sorted(remote)) or 'nothing'}"
            )
    prefix = f"{connection.name}." if config.prefix is None else config.prefix
    chosen = config.include if config.include is not None else sorted(remote)
    return [
        McpTool(_spec(remote[name], prefix, config.tools.get(name), connection), name, connection)
        for name in chosen
    ]


def _spec(
    remote: RemoteTool, prefix: str, override: ToolOverride | None, connection: _Connection
) -> ToolSpec:
    effect, idempotent, tags = derive_policy(remote.annotations)
    if override is not None:
        effect = override.effect or effect
        idempotent = idempotent if override.idempotent is None else override.idempotent
        tags = tags if override.tags is None else override.tags
    try:
        return ToolSpec(
            name=prefix + remote.name,
            description=remote.description or remote.title or "",
            args_schema=remote.input_schema,
            output_schema=remote.output_schema,
            effect=effect,
            idempotent=idempotent,
            tags=tags,
        )
    except ValidationError as exc:
        fix = 'leave the tool out with "include"'
        if any(err["loc"] == ("name",) for err in exc.errors()):
            fix = f"a name has at most 64 letters, digits, _ . or -: set a shorter prefix, or {fix}"
        raise ToolLoadError(
            f"{connection.where}: tool {remote.name!r} as {prefix + remote.name!r}: "
            f"{_describe(exc, ToolSpec)}; {fix}"
        ) from exc


_OPEN: set[McpServers] = set()


def open_mcp_servers(path: Path) -> McpServers:
    """Connect to every server of the list file at `path`; their tools are in `.tools`."""
    return McpServers(path)


@atexit.register
def close_all() -> None:
    """Close every server list still open (run at exit: it stops stdio servers' processes)."""
    for servers in list(_OPEN):
        servers.close()
