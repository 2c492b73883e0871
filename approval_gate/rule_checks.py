"""What a rule's `match` is checked for when its policy loads, so that it can ever work.

Each would otherwise show only at a decision, as a hold of every plan the rule met (the gate
fails closed): a field or function no plan has, a `history` window that is no window, and
an expression that gives no true or false.
"""

from __future__ import annotations

from approval_gate.history import FUNCTIONS as HISTORY_FUNCTIONS
from approval_gate.history import window_problems
from approval_gate.policy_context import RULE_VARIABLES
from approval_gate.rule_cost import RuleCost, regex_problems
from plangate.errors import PolicyError
from schemas.cel_check import expression_problems, result_over_empty_values


def check_match(match: str, rule: str, line: int | None, source: str) -> RuleCost:
    """Raise PolicyError, naming the rule and its line, if `match` cannot work; else its cost."""
    problems = expression_problems(match, RULE_VARIABLES, HISTORY_FUNCTIONS)
    problems = problems or window_problems(match)
    problems = problems or regex_problems(match)
    cost = RuleCost.of(match)
    problems = problems or [p for p in [cost.load_problem()] if p]
    if problems:
        said = "; ".join(problems)
        raise PolicyError(f"the match expression is wrong (in {source}): {said}", rule, line)
    given = result_over_empty_values(match, RULE_VARIABLES)
    if not isinstance(given, Exception | bool):
        raise PolicyError(
            f"the match expression is wrong (in {source}): it gives {given!r} "
            f"({type(given).__name__}), not true or false, so it never matches and holds every "
            "plan it meets; compare it, e.g. `size(plan.steps) > 3`",
            rule,
            line,
        )
    return cost
