"""Tools whose import waits for the test: a worker's start held after its store opened.

`HELD_IMPORT_MARKER` is a file: the import notes "importing" in it and waits until the file
`<marker>.release` appears. An executor imports its tools after it opened its store and before
it first writes to it (its catalog), so a test can end its connections in between.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from plangate.tools import tool

_marker = Path(os.environ["HELD_IMPORT_MARKER"])
_marker.write_text("importing", encoding="utf-8")
_release = _marker.with_name(_marker.name + ".release")
_deadline = time.monotonic() + 60  # a test that never releases fails on its own timeout
_pause = threading.Event()
while not _release.exists() and time.monotonic() < _deadline:  # held until the test says
    _pause.wait(0.02)


@tool(effect="read")
def held_import_count() -> int:
    """Count something at once (the import was what took the time)."""
    return 1
