"""A read that quotes a token its process holds, as a status endpoint echoing its credentials would.

Loaded by the fleet's executor (`PLANGATE_TOOLS`), whose environment alone holds the token.
"""

from __future__ import annotations

import os

from plangate.tools import tool


@tool(effect="read")
def service_status() -> dict[str, str]:
    """Say the status service's health, quoting the token it was called with."""
    return {"health": "ok", "called_with": os.environ.get("STATUS_SERVICE_TOKEN", "")}
