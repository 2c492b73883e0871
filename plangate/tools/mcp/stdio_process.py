"""A stdio MCP server's process: started by the SDK, its stderr read by plangate, its end told.

A server that exits on its own (a crash, `os._exit`) is said once in the log, at warning, with
its exit code and that the next call starts it again; a call it was in the middle of says the
same (`ended`), rather than the SDK's bare "Connection closed".
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from plangate.tools.mcp.loop import recording_spawns
from plangate.tools.mcp.server_stderr import StderrBudget, read_stderr
from plangate.tools.mcp.servers_file import StdioServer

EXIT_WAIT = 2.0
"""How long a closed connection waits for its process's exit to be known (it is being reaped)."""

logger = logging.getLogger(__name__)


class ServerProcess:
    """One started stdio server: its exit code once it has one, the thread reading its stderr."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.transport: asyncio.SubprocessTransport | None = None
        self.reader: threading.Thread | None = None
        # Set once its session is ready: an end before that is a failure to start, which
        # opening the session says.
        self.serving = False
        self._stopping = False
        self._told = False
        self._lock = threading.Lock()

    def exit_code(self, wait: float = 0.0) -> int | None:
        """Return the exit code (negative: the signal that ended it), or None if it runs.

        `wait` is how long to wait for the code: the process has just closed its pipes.
        """
        if self.transport is None:  # it did not start
            return None
        deadline = time.monotonic() + wait
        # Polled: asyncio's transport has no public wait for the exit alone (the SDK polls too).
        while (code := self.transport.get_returncode()) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return code

    def stopping(self) -> None:
        """Record that plangate is stopping it: its end is then no news."""
        self._stopping = True

    def ended(self, wait: float = EXIT_WAIT) -> str | None:
        """Say how it ended ("exited with code 1"); None if it still runs.

        An end plangate did not ask for, once the server served, is logged, once.
        """
        code = self.exit_code(wait)
        if code is None:
            return None
        how = _how(code)
        with self._lock:
            tell = self.serving and not self._stopping and not self._told
            self._told = self._told or tell
        if tell:
            logger.warning("%s %s; the next call starts it again", self.where, how)
        return how

    def stderr_level(self) -> int:
        """Return the level its stderr lines are logged at: warning until it serves (why not)."""
        return logging.INFO if self.serving else logging.WARNING

    def stderr_closed(self) -> None:
        """Tell its end, if plangate did not stop it (its stderr closes as it exits)."""
        if self.serving and not self._stopping:
            self.ended()

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` s for its stderr's last lines to be logged."""
        if self.reader is not None:
            self.reader.join(max(0.0, timeout))


def _how(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name}"


@asynccontextmanager
async def stdio_transport(
    where: str, name: str, config: StdioServer, budget: StderrBudget
) -> AsyncIterator[tuple[Any, Any, ServerProcess]]:
    """Start the server with a stderr pipe of its own; yield the SDK's streams and the process."""
    from mcp import StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=config.command, args=config.args, env=config.env, cwd=config.cwd
    )
    process = ServerProcess(where)
    read_end, write_end = os.pipe()
    pipe = open(read_end, "rb")  # noqa: SIM115 - the reader thread closes it
    process.reader = read_stderr(name, pipe, budget, process.stderr_level, process.stderr_closed)
    async with AsyncExitStack() as stack:
        # The write end is closed here once the child has its copy (or failed to start), so
        # that the reader sees the pipe end when the server exits: no descriptor left behind.
        with recording_spawns() as spawned, open(write_end, "w", encoding="utf-8") as errlog:
            read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
        process.transport = spawned[0] if spawned else None
        yield read, write, process
