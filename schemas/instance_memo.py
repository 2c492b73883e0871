"""Results remembered per object, for as long as the object lives: frozen models' derived values.

A plan is hashed, sized and validated by every stage, several times per message (validation,
the approval's hash, its check); a tool's argument schema is compiled into a validator for
every plan that calls it. Both are frozen models: what is derived from one instance never
changes, so it is computed once. Keyed by identity, not by value (the models hold dicts, which
cannot be hashed), and dropped when the instance is: nothing outlives what it was made from.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

ObjT = TypeVar("ObjT")
ValueT = TypeVar("ValueT")


class InstanceMemo(Generic[ObjT, ValueT]):
    """`memo(obj)` is `compute(obj)`, computed once per live object."""

    def __init__(self, compute: Callable[[ObjT], ValueT]) -> None:
        self._compute = compute
        self._values: dict[int, tuple[weakref.ref[ObjT], ValueT]] = {}
        self._lock = threading.Lock()

    def __call__(self, obj: ObjT) -> ValueT:
        """Return `compute(obj)`, computed on this instance's first call only."""
        key = id(obj)
        hit = self._values.get(key)
        if hit is not None and hit[0]() is obj:
            return hit[1]
        value = self._compute(obj)  # raises as it would have: nothing is remembered
        with self._lock:
            self._values[key] = (weakref.ref(obj, lambda _ref: self._forget(key, _ref)), value)
        return value

    def _forget(self, key: int, ref: weakref.ref[ObjT]) -> None:
        with self._lock:
            hit = self._values.get(key)
            if hit is not None and hit[0] is ref:
                del self._values[key]

    def __len__(self) -> int:
        return len(self._values)
