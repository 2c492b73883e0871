"""The canonical hash of a plan: SHA-256 over its RFC 8785 (JCS) canonical JSON."""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785
from pydantic import BaseModel


def canonical_json(value: BaseModel | Any) -> bytes:
    """Return the RFC 8785 canonical JSON bytes of a model or a JSON-like value."""
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return bytes(rfc8785.dumps(data))


def sha256_hex(data: bytes) -> str:
    """Return the lowercase hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def plan_hash(plan: BaseModel) -> str:
    """Return `sha256:<hex>` of the plan's canonical JSON; this is what an approval signs."""
    return "sha256:" + sha256_hex(canonical_json(plan))
