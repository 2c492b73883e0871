"""The event-loop thread the SDK's coroutines run on, which also tells who started a process which.

The SDK's stdio transport keeps the process it starts to itself: plangate could not say that a
server exited, nor with what code. anyio starts it through the loop's `subprocess_exec`, so the
loop hands the process's transport (its pid, its exit code) to the code that asked for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")
_P = TypeVar("_P", bound=asyncio.BaseProtocol)

CLOSE_TIMEOUT = 10.0
"""The longest a session's (and a stdio server's) end, or the loop's, is waited for."""

_spawned: ContextVar[list[asyncio.SubprocessTransport] | None] = ContextVar(
    "plangate_mcp_spawned", default=None
)


@contextmanager
def recording_spawns() -> Iterator[list[asyncio.SubprocessTransport]]:
    """Collect the processes the current task starts on the loop inside the block."""
    spawned: list[asyncio.SubprocessTransport] = []
    token = _spawned.set(spawned)
    try:
        yield spawned
    finally:
        _spawned.reset(token)


class _EventLoop(asyncio.SelectorEventLoop):
    """asyncio's loop, recording each process it starts for a task that asked."""

    async def subprocess_exec(
        self, protocol_factory: Callable[[], _P], program: Any, *args: Any, **kwargs: Any
    ) -> tuple[asyncio.SubprocessTransport, _P]:
        """Start a process as asyncio does; record its transport for a task that asked."""
        transport, protocol = await super().subprocess_exec(
            protocol_factory, program, *args, **kwargs
        )
        spawned = _spawned.get()
        if spawned is not None:
            spawned.append(transport)
        return transport, protocol


class Loop:
    """An event loop on its own thread, for the SDK's coroutines."""

    def __init__(self) -> None:
        self._loop = _EventLoop()
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
        self._thread.join(CLOSE_TIMEOUT)
