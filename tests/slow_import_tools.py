"""Tools whose module takes seconds to import, saying when it begins (in `SLOW_IMPORT_MARK`).

A signal sent then reaches `plangate run` while its pipeline starts, before the goal is run.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from plangate.tools import tool

Path(os.environ["SLOW_IMPORT_MARK"]).write_text("importing", encoding="utf-8")
threading.Event().wait(3.0)  # the workload: a slow import, not a synchronisation


@tool(effect="read")
def quick_count() -> int:
    """Count something at once."""
    return 1
