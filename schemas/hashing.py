"""The canonical hash of a plan: SHA-256 over its RFC 8785 (JCS) canonical JSON."""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785
from pydantic import BaseModel

from schemas.instance_memo import InstanceMemo


def canonical_json(value: BaseModel | Any) -> bytes:
    """Return the RFC 8785 canonical JSON bytes of a model or a JSON-like value.

    A frozen model's bytes are computed once per instance (a plan is hashed and sized several
    times per message; the canonical form is pure Python, tens of microseconds each time).
    """
    if isinstance(value, BaseModel):
        if value.model_config.get("frozen"):
            return _frozen_canonical_json(value)
        return _canonical_json(value.model_dump(mode="json"))
    return _canonical_json(value)


def _canonical_json(data: Any) -> bytes:
    return bytes(rfc8785.dumps(data))


_frozen_canonical_json: InstanceMemo[BaseModel, bytes] = InstanceMemo(
    lambda model: _canonical_json(model.model_dump(mode="json"))
)


def sha256_hex(data: bytes) -> str:
    """Return the lowercase hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def plan_hash(plan: BaseModel) -> str:
    """Return `sha256:<hex>` of the plan's canonical JSON; this is what an approval signs."""
    return "sha256:" + sha256_hex(canonical_json(plan))
