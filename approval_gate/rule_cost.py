"""A bound on the work one rule may do over one plan, so that no plan stalls the gate.

A rule whose cost grows faster than the plan it reads (`schemas.cel_cost`) is not evaluated
over a plan that would make it do more than `MAX_RULE_WORK` steps: it holds the plan for a
person instead, as a rule that could not be evaluated does (the gate fails closed). CEL
evaluates holding the GIL and cannot be interrupted, so the bound is checked before, from
the number of values the rule could range over; a linear rule is never checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schemas.cel_cost import Cost, cost_terms, literal_values

# Steps of CEL's evaluation a rule may take over one plan: about 0.2 µs each here, so at most
# about a second of the gate's time. A quadratic rule stays within it up to 2,000 values.
MAX_RULE_WORK = 4_000_000


@dataclass(frozen=True)
class RuleCost:
    """How a rule's work grows: a term per comprehension, and the rule's own literal values."""

    terms: frozenset[Cost]
    literals: int

    @classmethod
    def of(cls, match: str) -> RuleCost:
        """Return the cost of a rule's `match`, read from its tokens."""
        return cls(cost_terms(match), literal_values(match))

    @property
    def grows_faster_than_the_plan(self) -> bool:
        """Whether its work may grow faster than the plan it reads: the rule is then checked."""
        return any(t.degree > 1 or (t.degree == 1 and t.constant > 1) for t in self.terms)

    def work(self, size: DataSize) -> int:
        """Return the most steps the rule may take over data of this size.

        Each comprehension ranges over one list (or map), or scans one (`x in l`): none is
        longer than the longest; and those over parts of the item they are in see each value
        once, so the first factor is at most every value.
        """
        values, longest = size.values + self.literals, size.longest + self.literals
        terms = (t.constant * values * longest ** (t.degree - 1) for t in self.terms if t.degree)
        constants = (t.constant for t in self.terms if not t.degree)
        return max((*terms, *constants), default=0)

    def refusal(self, size: DataSize) -> str | None:
        """Return why the rule is not evaluated over data of this size, if it is not."""
        work = self.work(size)
        if not self.grows_faster_than_the_plan or work <= MAX_RULE_WORK:
            return None
        return (
            f"its nested comprehensions may take up to {work:,} steps over the {size.values} "
            f"values of this plan it may read, the longest list {size.longest} long (at most "
            f"{MAX_RULE_WORK:,}, about a second); held for a person rather than evaluated"
        )

    def load_problem(self) -> str | None:
        """Return why the rule can never be evaluated (over its own literals alone)."""
        work = self.work(DataSize(0, 0))
        if work <= MAX_RULE_WORK:
            return None
        return (
            f"its nested comprehensions may take up to {work:,} steps over its own literal "
            f"values alone (at most {MAX_RULE_WORK:,}), so it would hold every plan; range over "
            "fewer values, or nest fewer comprehensions"
        )


@dataclass(frozen=True)
class DataSize:
    """How many values the variables hold, and the most items one list or map of them holds."""

    values: int
    longest: int


def data_size(variables: Mapping[str, Any]) -> DataSize:
    """Return the size of the variables handed to the rules."""
    count, longest = 0, 0
    pending: list[Any] = list(variables.values())
    while pending:
        value = pending.pop()
        count += 1
        if isinstance(value, Mapping):
            longest = max(longest, len(value))
            pending.extend(value.values())
        elif isinstance(value, list | tuple):
            longest = max(longest, len(value))
            pending.extend(value)
    return DataSize(count, longest)
