"""The question `plangate run` asks at the terminal about a held plan, and the answers it takes."""

from __future__ import annotations

from typing import Literal

from rich.console import Console
from rich.prompt import Prompt

Answer = Literal["approve", "reject", "show"]
# A letter or the word, in any case; and y/yes, n/no, as any yes/no question takes them (they
# were refused, with no word of what the prompt takes).
_ANSWERS: dict[str, Answer] = {
    "a": "approve",
    "approve": "approve",
    "y": "approve",
    "yes": "approve",
    "r": "reject",
    "reject": "reject",
    "n": "reject",
    "no": "reject",
    "s": "show",
    "show": "show",
}
QUESTION = r"Held for a person. \[a]pprove, \[r]eject or \[s]how the plan JSON?"


class _Question(Prompt):
    """The prompt, saying what it takes when an answer is refused."""

    illegal_choice_message = (
        "[prompt.invalid.choice]Answer a (or approve, y, yes), r (or reject, n, no), or s (or show)"
    )


def ask(console: Console) -> Answer:
    """Ask until the answer is one the prompt takes; EOFError if the input ends first."""
    answer = _Question.ask(
        QUESTION, choices=list(_ANSWERS), show_choices=False, case_sensitive=False, console=console
    )
    return _ANSWERS[answer.strip().lower()]


def ask_why(console: Console, question: str) -> str:
    """Ask why the plan is rejected; "" if input ends first (the rejection stands)."""
    try:
        return Prompt.ask(question, console=console).strip()
    except EOFError:
        return ""


def still_held(goal_id: str) -> str:
    """Say how a goal left held at the end of a run is decided: a reviewer with a token."""
    return (
        "the goal stays held until a reviewer with a token decides or cancels it "
        f"(`plangate goals cancel {goal_id}`; `plangate reviewers add NAME` makes a reviewer "
        "and prints their token)"
    )
