"""One server's session, held open on the shared event-loop thread; its calls and their ends."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

from plangate.errors import OutcomeUnknown, ToolError, ToolLoadError
from plangate.redaction import quoted
from plangate.tools.mcp.loop import CLOSE_TIMEOUT, Loop
from plangate.tools.mcp.server_stderr import StderrBudget
from plangate.tools.mcp.servers_file import HttpServer, ServerConfig, StdioServer
from plangate.tools.mcp.stdio_process import ServerProcess, stdio_transport

if TYPE_CHECKING:
    from mcp import ClientSession
    from mcp.types import CallToolResult, RequestParamsMeta
    from mcp.types import Tool as RemoteTool

_READER_GRACE = 1.0  # for a stopped server's last stderr lines to be logged
MAX_LISTED_TOOLS = 1000
"""The most tools a server's listing is read for, over all its pages (`include` picks among)."""


class Connection:
    """One server's session, held open by a task on the shared loop; reopened when it breaks."""

    def __init__(self, name: str, config: ServerConfig, source: Path, loop: Loop) -> None:
        self.name = name
        self.config = config
        self.where = f"MCP server {name!r} (from {source})"
        self._loop = loop
        self._lock = threading.Lock()
        self._session: ClientSession | None = None
        self._stop: asyncio.Event | None = None
        self._holder: concurrent.futures.Future[None] | None = None
        self._process: ServerProcess | None = None  # a stdio server's, set by its transport
        self._stderr = StderrBudget(name)
        self._generation = 0

    def open(self) -> None:
        """Start or connect to the server and initialize the session, within the timeout."""
        ready: concurrent.futures.Future[ClientSession] = concurrent.futures.Future()
        self._stop = asyncio.Event()
        self._holder = self._loop.submit(self._hold(ready, self._stop))
        try:
            # The session's own deadline answers first; this one guards a transport that will
            # not even let go (its cleanup has CLOSE_TIMEOUT).
            self._session = ready.result(timeout=self.config.timeout_seconds + CLOSE_TIMEOUT)
            if self._process is not None:
                self._process.serving = True
        except TimeoutError:
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
        reason = quoted("; ".join(f"{type(e).__name__}: {e}" for e in leaves(exc)), 500)
        if any(type(e).__name__ == "MCPError" for e in leaves(exc)):
            # It ran and answered, with an error: its command or address is right.
            return f"refused to start a session: {reason}; fix the server"
        if isinstance(self.config, StdioServer):
            return f"could not be started with {self.config.command!r}: {reason}; fix its command"
        url = _without_secrets(self.config.url)
        return f"is unreachable at {url}: {reason}; check its url and that it runs"

    async def _hold(
        self, ready: concurrent.futures.Future[ClientSession], stop: asyncio.Event
    ) -> None:
        import anyio
        from mcp import ClientSession

        try:
            # The deadline is a scope around the whole session, lifted once it is ready: a scope
            # inside it would close before the transport's own, which anyio refuses, and
            # cancelling the task from outside leaves the transport to print tracebacks.
            with anyio.CancelScope(
                deadline=anyio.current_time() + self.config.timeout_seconds
            ) as scope:
                async with AsyncExitStack() as stack:
                    read, write = await stack.enter_async_context(self._transport())
                    session = await stack.enter_async_context(ClientSession(read, write))
                    await session.initialize()
                    scope.deadline = math.inf
                    if not scope.cancel_called:  # the deadline passed as the answer came
                        ready.set_result(session)
                    await stop.wait()
            if scope.cancelled_caught and not ready.done():
                ready.set_exception(TimeoutError())
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    @asynccontextmanager
    async def _transport(self) -> AsyncIterator[tuple[Any, Any]]:
        if isinstance(self.config, StdioServer):
            started = stdio_transport(self.where, self.name, self.config, self._stderr)
            async with started as (read, write, process):
                self._process = process
                yield read, write
        else:
            async with _http_transport(self.config) as streams:
                yield streams

    def close(self) -> None:
        """End the session (and a stdio server's process); wait for that, within a bound."""
        stop, holder, process = self._stop, self._holder, self._process
        self._session = self._stop = self._holder = self._process = None
        deadline = time.monotonic() + CLOSE_TIMEOUT
        if process is not None:
            process.ended(wait=0)  # an exit found before it is stopped is still told
            process.stopping()
        if stop is not None:
            self._loop.call(stop.set)
        if holder is not None:
            try:
                holder.result(timeout=CLOSE_TIMEOUT - _READER_GRACE)
            except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                holder.cancel()
        if process is not None:
            process.join(min(_READER_GRACE, deadline - time.monotonic()))

    def list_tools(self) -> list[RemoteTool]:
        """Return every tool the server lists, following pagination."""
        from mcp.types import PaginatedRequestParams

        session, _, _ = self._live()
        tools: list[RemoteTool] = []
        cursor: str | None = None
        deadline = time.monotonic() + self.config.timeout_seconds  # for the whole listing
        while True:
            if len(tools) > MAX_LISTED_TOOLS:
                raise ToolLoadError(
                    f"{self.where} lists more than {MAX_LISTED_TOOLS} tools (a listing that "
                    "may never end); fix the server, or offer its tools from a smaller one"
                )
            params = None if cursor is None else PaginatedRequestParams(cursor=cursor)
            try:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                page = self._loop.run(session.list_tools(params=params), left)
            except TimeoutError:
                raise ToolLoadError(
                    f"{self.where} did not list its tools within "
                    f"{self.config.timeout_seconds:g} s; check the server, or raise its "
                    "timeout_seconds"
                ) from None
            except Exception as exc:
                # A listing in a shape MCP does not allow, a server gone while listing.
                raise ToolLoadError(
                    f"{self.where} could not list its tools: {one_line(exc)}; fix the server"
                ) from None
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                return tools

    def call(
        self,
        tool: str,
        args: dict[str, Any],
        meta: dict[str, Any],
        *,
        repeatable: bool,
        writes: bool,
    ) -> CallToolResult:
        """Call `tool`; on a lost connection, reconnect and call again only if `repeatable`.

        A call cut off by a lost connection after it was sent (its server exited, say) may
        have taken effect: for a write that is an OutcomeUnknown, for a person to settle.
        """
        from mcp import MCPError
        from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT

        unknown = "" if repeatable else "; whether it took effect is unknown"
        session, generation, process = self._checked(repeatable)
        try:
            return self._request(session, tool, args, meta, repeatable)
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                cut_off = ToolError if repeatable else OutcomeUnknown
                raise cut_off(f"{self._silent(tool)}{unknown}") from exc
            if exc.code != CONNECTION_CLOSED:
                raise
            broke = self._broke(tool, process)
            if not repeatable:
                raise OutcomeUnknown(
                    f"{broke}{unknown}, so it is not sent again: check the server"
                ) from exc
        return self._resend(tool, args, meta, generation, broke, writes)

    def _resend(
        self,
        tool: str,
        args: dict[str, Any],
        meta: dict[str, Any],
        generation: int,
        first: str,
        writes: bool,
    ) -> CallToolResult:
        """Send a repeatable call once more, its first try cut off as `first` says.

        Given up, it is an OutcomeUnknown for a write (a try may have taken effect), else a
        ToolError.
        """
        from mcp import MCPError
        from mcp.types import CONNECTION_CLOSED

        cut_off = OutcomeUnknown if writes else ToolError
        unknown = "; whether it took effect is unknown" if writes else ""
        try:
            self._reopen(generation)
            session, _, process = self._checked(repeatable=True)
        except ToolError as exc:
            raise cut_off(f"{first}; it could not be sent again: {exc}{unknown}") from exc
        try:
            return self._request(session, tool, args, meta)
        except MCPError as exc:
            if exc.code != CONNECTION_CLOSED:
                raise
            again = self._broke(tool, process)
            raise cut_off(f"{again}, as on the first try; check the server{unknown}") from exc

    def _broke(self, tool: str, process: ServerProcess | None) -> str:
        """Say how the connection ended during a call to `tool`: how its server ended, if it did.

        The next call starts a server that exited again (`_live`).
        """
        ended = None if process is None else process.ended()
        if ended is None:
            return f"the connection to {self.where} broke during the call to {tool}"
        return f"{self.where} {ended} during the call to {tool}"

    def _silent(self, tool: str) -> str:
        timeout = self.config.timeout_seconds
        return f"{self.where}: {tool} gave no answer within {timeout:g} s (its timeout_seconds)"

    def _checked(self, repeatable: bool) -> tuple[ClientSession, int, ServerProcess | None]:
        session, generation, process = self._live()
        if not repeatable:
            # A call that must not run twice is only sent over a session known to be alive,
            # so a lost connection during it really means "outcome unknown".
            try:
                self._loop.run(session.send_ping(), self.config.timeout_seconds)
            except Exception:
                if process is not None:
                    process.ended()  # told, if it exited, before it is started again
                self._reopen(generation)
                session, generation, process = self._live()
        return session, generation, process

    def _request(
        self,
        session: ClientSession,
        tool: str,
        args: dict[str, Any],
        meta: dict[str, Any],
        repeatable: bool = True,
    ) -> CallToolResult:
        timeout = self.config.timeout_seconds
        request_meta = cast("RequestParamsMeta", meta)
        call = session.call_tool(tool, args, read_timeout_seconds=timeout, meta=request_meta)
        try:
            # The SDK's own timeout answers first; this one guards against a stuck transport.
            return self._loop.run(call, timeout + 5)
        except concurrent.futures.TimeoutError:
            if repeatable:
                raise ToolError(self._silent(tool)) from None
            raise OutcomeUnknown(
                f"{self._silent(tool)}; whether it took effect is unknown"
            ) from None

    def _live(self) -> tuple[ClientSession, int, ServerProcess | None]:
        with self._lock:
            if (
                self._session is None
                or self._holder is None
                or self._holder.done()
                or (self._process is not None and self._process.exit_code() is not None)
            ):
                self._reconnect()
            assert self._session is not None
            return self._session, self._generation, self._process

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

    from plangate.tools.mcp.http_answers import bound_answer

    # The SDK's own defaults: a server may hold a response stream open for long.
    timeout = httpx2.Timeout(30.0, read=300.0)
    headers = {"Accept-Encoding": "identity", **config.headers}
    hooks = {"response": [bound_answer]}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout, event_hooks=hooks) as client,
        streamable_http_client(config.url, http_client=client) as (read, write),
    ):
        yield read, write


def _without_secrets(url: str) -> str:
    # Messages reach step records and spans: keep a URL's userinfo and query (tokens) out.
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def urls_without_secrets(text: str) -> str:
    """Return `text` with every URL in it cut to scheme, host, port and path."""
    return re.sub(r"https?://[^\s'\"<>]+", lambda m: _without_secrets(m.group(0)), text)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """Say what `exc` is in one short redacted line (a validation error's first problem)."""
    lines = str(exc).splitlines()[:2]
    return quoted(f"{type(exc).__name__}: {' '.join(lines) or type(exc).__name__}", limit)


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """Yield the exceptions inside `exc`, exception groups flattened; `exc` itself if none."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


class _OneLineRecords(logging.Filter):
    """A server's bad line or broken stream is one redacted log line, not an SDK traceback.

    What a remote server sends is not plangate's bug: the traceback says nothing an operator
    can act on, and it would quote what the server sent at length.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and _from_the_server(error):
            record.msg = f"{record.getMessage()}: {one_line(error)}"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


def _from_the_server(error: BaseException) -> bool:
    """Whether `error` is about what a server sent (data, a stream), not a bug of a callback."""
    module = type(error).__module__
    return isinstance(error, ValueError | OSError) or module.startswith(
        ("anyio", "httpx", "httpcore", "httpx2", "pydantic", "plangate.tools.mcp.http_answers")
    )


# The SDK's loggers that report what a server sent: stdio, HTTP, the dispatch, the session's
# notifications (`client`).
for _name in ("mcp.client.stdio", "mcp.client.streamable_http", "mcp.shared.jsonrpc_dispatcher"):
    logging.getLogger(_name).addFilter(_OneLineRecords())
logging.getLogger("client").addFilter(_OneLineRecords())
