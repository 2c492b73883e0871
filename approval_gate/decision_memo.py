"""What a policy's rules decided before, by the exact values they were given."""

from __future__ import annotations

import marshal
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
# Outcomes remembered per policy: plans of one kind (a playbook's, a team's) look alike to rules
# that read only tools, effects and tags, so most decisions were already taken once.
MEMO_SIZE = 4096
MEMO_KEY_BYTES = 8192  # larger values (long arguments) are decided afresh: at most ~32 MiB held
# The key is the values' marshal encoding: a sixth of JSON's time, and equal bytes mean equal
# values (marshal reads back exactly what it wrote), so a memo hit is never a different plan.
# Version 2 writes no back-references, whose use depends on objects' reference counts: equal
# values give equal bytes. The memo lives in one process, so the version never changes under it.
_MARSHAL_VERSION = 2


class DecisionMemo(Generic[T]):
    """Outcomes of a policy's rules by the exact values they were given (what they read).

    Without `history` a rule is a pure function of those values, so an outcome found once is
    the outcome again; converting values into CEL and running the rules is most of a decision.
    Bounded: the oldest outcome is forgotten first, and values over `MEMO_KEY_BYTES` are not
    remembered at all.
    """

    def __init__(self, size: int = MEMO_SIZE) -> None:
        self._size = size
        self._outcomes: dict[bytes, T] = {}
        self._lock = threading.Lock()  # gate workers decide in several threads

    def outcome(self, variables: dict[str, Any], evaluate: Callable[[], T]) -> T:
        """Return the outcome remembered for these values, or `evaluate()` and remember it."""
        try:
            key = marshal.dumps(variables, _MARSHAL_VERSION)
        except ValueError:  # a value marshal cannot hold: nothing to key it by
            return evaluate()
        if len(key) > MEMO_KEY_BYTES:
            return evaluate()
        with self._lock:
            found = self._outcomes.get(key)
        if found is None:
            found = evaluate()
            with self._lock:
                if len(self._outcomes) >= self._size:
                    del self._outcomes[next(iter(self._outcomes))]
                self._outcomes[key] = found
        return found

    def __len__(self) -> int:
        return len(self._outcomes)

    def clear(self) -> None:
        """Forget every outcome (the benchmark measures a decision never taken before)."""
        with self._lock:
            self._outcomes.clear()
