"""Bench only: give each Python thread of a process its name in the kernel too (Linux).

`bench/pipeline.py` puts this folder first on its plangate workers' `PYTHONPATH`, so that it
can split each worker's CPU by thread (`/proc/PID/task/*/comm`): the consume loop, the
handlers, the executor's announcers, its step pool and the tool calls. Python 3.11 leaves
the kernel's name as the process's own ("python") for every thread; the kernel keeps the
first 15 bytes. Nothing here changes what a thread does.
"""

from __future__ import annotations

import ctypes
import sys
import threading

_PR_SET_NAME = 15

if sys.platform == "linux":
    _libc = ctypes.CDLL(None, use_errno=True)
    _bootstrap_inner = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def _named_bootstrap_inner(self: threading.Thread) -> None:
        _libc.prctl(_PR_SET_NAME, self.name.encode("utf-8", "replace")[:15], 0, 0, 0)
        _bootstrap_inner(self)

    threading.Thread._bootstrap_inner = _named_bootstrap_inner  # type: ignore[attr-defined]
