"""A tool that prints as it works, three ways, for the test that `run --json` keeps stdout."""

from __future__ import annotations

import os
import subprocess

from plangate.tools import tool


@tool(effect="read")
def chatty_read() -> int:
    """Count something, saying so on stdout from Python, from the descriptor and a subprocess."""
    print("python print from the tool")
    os.write(1, b"raw write to descriptor 1\n")
    subprocess.run(["echo", "a subprocess the tool started"], check=True)
    return 7
