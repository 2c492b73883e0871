"""A bound on the work one rule may do over one plan, so that no plan stalls the gate.

A rule whose work may grow faster than the plan it reads (nested comprehensions, a scan in a
comprehension's body: `schemas.cel_cost`), or cost more than a step per value (a regex, which
this CEL runtime compiles at every call), is not evaluated over a plan that would make it do
more than `MAX_RULE_WORK` steps: it holds the plan for a person instead, as a rule that could
not be evaluated does (the gate fails closed). CEL evaluates holding the GIL and cannot be
interrupted, so the bound is checked before, from the number of values the rule could range
over; a rule of one step per value is never checked.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cel

from approval_gate.policy_context import RULE_VARIABLES
from schemas.cel_check import MapOf
from schemas.cel_cost import (
    COPY_STEPS,
    MAX_WORK,
    Cost,
    DataSize,
    cost_terms,
    literal_values,
    regex_patterns,
)

# Steps of CEL's evaluation a rule may take over one plan (`schemas.cel_cost.MAX_WORK`): at
# about 0.25 µs each, about a second of the gate's time.
MAX_RULE_WORK = MAX_WORK
STEP_SECONDS = 0.25e-6


def _map_paths(shapes: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Return the paths of the declared maps among the rules' variables (`goal.metadata`)."""
    paths = []
    for name, shape in shapes.items():
        if isinstance(shape, MapOf):
            paths.append(prefix + name)
        elif isinstance(shape, Mapping):
            paths += _map_paths(shape, f"{prefix}{name}.")
    return paths


RULE_MAPS = frozenset(_map_paths(RULE_VARIABLES))


@dataclass(frozen=True)
class RuleCost:
    """How a rule's work grows: a term per comprehension, and the rule's own literal values."""

    terms: frozenset[Cost]
    literals: int

    @classmethod
    def of(cls, match: str) -> RuleCost:
        """Return the cost of a rule's `match`, read from its tokens (its regexes measured)."""
        return cls(cost_terms(match, regex_steps, RULE_MAPS), literal_values(match))

    @property
    def bounded(self) -> bool:
        """Whether its work may exceed a step per value of the plan: it is then checked."""
        return any(
            t.degree > 1 or (t.degree == 1 and t.constant > 1) or t.copies for t in self.terms
        )

    def work(self, size: DataSize) -> int:
        """Return the most steps the rule may take over data of this size.

        Each comprehension ranges over one list (or map), or scans one (`x in l`): none is
        longer than the longest; and those over parts of the item they are in see each value
        once, so the first factor is at most every value.
        """
        values, longest = size.values + self.literals, size.longest + self.literals
        return max((self._term_work(t, values, longest) for t in self.terms), default=0)

    @staticmethod
    def _term_work(term: Cost, values: int, longest: int) -> int:
        work = (
            term.constant * values * longest ** (term.degree - 1) if term.degree else term.constant
        )
        # A `map` or `filter` copies its result so far at each item: up to the longest list.
        return round(work * longest * COPY_STEPS) if term.copies else work

    def refusal(self, size: DataSize) -> str | None:
        """Return why the rule is not evaluated over data of this size, if it is not."""
        work = self.work(size)
        if not self.bounded or work <= MAX_RULE_WORK:
            return None
        return (
            f"it may take up to {work:,} steps over the {size.values} values of this plan it "
            f"may read, the longest list {size.longest} long (at most {MAX_RULE_WORK:,}, about "
            "a second; nested comprehensions, a scan, a map or filter, or a regex called on "
            "each value cost more than a step a value): held for a person rather than evaluated"
        )

    def load_problem(self) -> str | None:
        """Return why the rule can never be evaluated (over its own literals alone)."""
        work = self.work(DataSize(0, 0))
        if work <= MAX_RULE_WORK:
            return None
        return (
            f"it may take up to {work:,} steps over its own literal values alone (at most "
            f"{MAX_RULE_WORK:,}), so it would hold every plan; range over fewer values, nest "
            "fewer comprehensions, or call a simpler regex"
        )


@functools.lru_cache(maxsize=256)
def regex_steps(pattern: str) -> int:
    """Return what one `matches` call with this literal pattern (its CEL text) costs, in steps.

    Measured once per pattern, as this runtime compiles the pattern at every call: a pattern
    of counted repetitions over a word class took 16-24 ms a call (a gate held a minute over one
    plan's recipients), a plain one 50 µs. A pattern it refuses costs a step here: it is
    refused when the policy loads (`regex_problems`).
    """
    try:
        program = cel.compile(f'"".matches({pattern})')
        took = []
        for _ in range(5):  # the least of five: a busy machine's minute is not the pattern's
            started = time.perf_counter()
            program.execute({})
            took.append(time.perf_counter() - started)
    except Exception:  # refused when the policy loads, with the runtime's words
        return 1
    return max(1, round(min(took) / STEP_SECONDS))


def regex_problems(match: str) -> list[str]:
    """Return what is wrong with the regexes a rule calls.

    A pattern made from what the rule reads lets the plan choose what matches, and how long
    each call takes; one this runtime refuses held every plan the rule met.
    """
    problems = []
    for pattern in regex_patterns(match).values():
        if pattern is None:
            problems.append(
                "matches() is given a pattern made from what the rule reads: the plan would "
                "choose what matches, and what each call costs; write the pattern in the rule"
            )
            continue
        try:
            cel.compile(f'"".matches({pattern})').execute({})
        except Exception as exc:  # the runtime's words: which regex, and where it breaks
            said = " ".join(str(exc).split())[:300]
            problems.append(f"the pattern {pattern} is not a regex this runtime takes ({said})")
    return problems
