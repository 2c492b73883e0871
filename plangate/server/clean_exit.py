"""uvicorn's server, exiting 0 after a SIGTERM it stopped for cleanly, as a worker does.

uvicorn raises a signal it handled again once it has shut down, for the handler that was there
before it: the default one then killed the process (exit 143), which supervisors count as a
failure of a clean stop. A SIGINT (Ctrl-C) is still raised again, as a terminal expects.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import uvicorn


class CleanExitServer(uvicorn.Server):
    """A uvicorn server whose clean stop at SIGTERM ends the process with exit 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Handle signals as uvicorn does, but for raising SIGTERM again at the end."""
        with super().capture_signals():
            yield
            self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]
