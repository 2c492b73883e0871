"""`plangate serve`: the HTTP server. `create_app` builds it; one module per route group."""

from __future__ import annotations

from plangate.server.app import create_app

__all__ = ["create_app"]
