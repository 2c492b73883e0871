"""What the routes share: the process's one `Client`."""

from __future__ import annotations

from fastapi import Request

from plangate.client import Client


def get_client(request: Request) -> Client:
    """Return the process's shared client (opened by the app's lifespan)."""
    client: Client = request.app.state.client
    return client
