"""A write that takes `INTERRUPTED_WRITE_SECONDS`, for the tests of Ctrl-C during a write.

It appends `start` to the file `INTERRUPTED_WRITE_LOG` as it begins and `end` once done: the
test presses Ctrl-C once `start` is there, and reads whether the write happened.
"""

from __future__ import annotations

import os
import time

from plangate.tools import tool


def _log(word: str) -> None:
    with open(os.environ["INTERRUPTED_WRITE_LOG"], "a", encoding="utf-8") as log:
        log.write(word + "\n")


@tool(effect="write", idempotent=False, timeout=60)
def pay(amount: int) -> str:
    """Pay `amount`, slowly: not safe to call twice."""
    _log("start")
    time.sleep(float(os.environ["INTERRUPTED_WRITE_SECONDS"]))
    _log("end")
    return f"paid {amount}"
