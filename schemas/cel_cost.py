"""How an expression's cost grows with the data it reads: the power of its comprehensions.

CEL evaluates holding the GIL, with no deadline and no cost limit in this runtime, and a
comprehension (`exists`, `all`, `map`, ...) costs the size of what it ranges over times the
cost of its body. A comprehension nested in another over the same data, or a body that reads
a whole other value (`x in plan.steps`), makes the cost the square of the data's size: a rule
like that held a gate for minutes over a plan of 20,000 values. A `when` may not do so at all
(`comprehension_problems`); a policy's rules may, since many are fine over plans of the usual
size, so the gate bounds the work instead, by the degree this module reads from the tokens.

The reading errs toward more: a comprehension nested in another counts once more unless it
ranges over a part of the item its enclosing comprehension binds (`s.args.to.exists(r, ...)`
inside `plan.steps.exists(s, ...)`: each value is still visited once), and a body counts once
more if it scans a variable (`x in plan.steps`) or an enclosing comprehension's item (`x in
s.args.to`). Comparing a value or indexing it counts as one step; reading a field copies what
it holds in this runtime, so a read through the plan's steps or a step's arguments counts as a
scan of them. A regex (`matches`) counts as what its pattern costs to compile, which this
runtime does at each call, and a `map` or `filter` as copying its result at each item. It is
an estimate from the expression's form, made to err toward more; what it cannot see (a cost
this runtime has that no token shows) is why the bound is on a second, not on the exact work.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from schemas.cel_check import KEYWORDS, MACROS, cel_tokens
from schemas.references import steps_in_condition

# Steps of CEL's evaluation one expression may take over what it reads (about a second here);
# copying one item of a `map` or `filter` result costs about a fifth of a step (a `filter`
# over 5,000 items took 1.15 s).
MAX_WORK = 4_000_000
COPY_STEPS = 0.2
_CLOSING = {")": "(", "]": "[", "}": "{"}


@dataclass
class _Comprehension:
    item: str | None  # the name its body binds
    # What it and the comprehensions it is in range over, each a factor of its work: the data
    # (None: any value of the plan) or a literal list of so many values.
    factors: tuple[int | None, ...]
    reads_other: bool = False  # its body scans a value beyond its own item
    call_steps: int = 1  # what one pass of its body costs beyond a step: a regex it calls
    copies: bool = False  # a `map` or `filter`: this runtime copies its result at each item


@dataclass(frozen=True)
class Cost:
    """A comprehension's most work: `constant` times the power `degree` of the data's size.

    `copies`: a `map` or `filter`, which this runtime makes by copying what it has made so
    far at each item: quadratic in what it ranges over (a list of 20,000 took 17 s).
    """

    degree: int
    constant: int
    copies: bool = False


def cost_terms(
    source: str,
    regex_steps: Callable[[str], int] | None = None,
    maps: Collection[str] = (),
) -> frozenset[Cost]:
    """Return a term per comprehension; the expression's work is at most the largest of them.

    `regex_steps` says what one `matches` call with a literal pattern (its CEL text) costs, in
    steps: this runtime compiles the pattern at every call, and one pattern took 24 ms.
    `maps` are the variables' paths that hold maps (`tools`, `goal.metadata`): `x in tools`
    looks a key up, a step, where `x in plan.steps` scans a list.
    """
    tokens = cel_tokens(source)
    regex_calls = regex_patterns(source)  # where each `.matches(` is, and its pattern
    outside = Cost(0, 0)
    opened: list[_Comprehension | None] = []  # per open bracket: the comprehension it opened
    inside: list[_Comprehension] = []
    every: list[_Comprehension] = []
    receivers: set[int] = set()  # where each comprehension's range starts: read as its factor
    reads: list[tuple[int, _Comprehension]] = []
    for at, (kind, text) in enumerate(tokens):
        if kind == "name" and inside and _reads_beyond_its_item(tokens, at, inside, maps):
            reads.append((at, inside[-1]))
        if at in regex_calls and regex_steps is not None:
            pattern = regex_calls[at]
            steps = regex_steps(pattern) if pattern is not None else 1
            if inside:
                inside[-1].call_steps = max(inside[-1].call_steps, steps)
            else:
                outside = Cost(0, outside.constant + steps)
        if kind != "punct":
            continue
        if text in "([{":
            item = _macro_opened(tokens, at)
            if item is None:
                opened.append(None)
                continue
            root_at, literal = _receiver(tokens, at - 2)
            receivers.add(root_at)
            outer = inside[-1] if inside else None
            if outer is not None and root_at >= 0 and tokens[root_at][1] == outer.item:
                factors = outer.factors  # a part of the item it is in: each value seen once
            else:
                factors = (outer.factors if outer else ()) + (literal,)
            copies = tokens[at - 1][1] in ("map", "filter")
            comprehension = _Comprehension(item, factors, copies=copies)
            opened.append(comprehension)
            inside.append(comprehension)
            every.append(comprehension)
        elif text in _CLOSING and opened and opened.pop() is not None:
            inside.pop()
    for at, comprehension in reads:
        if at not in receivers:
            comprehension.reads_other = True
    terms = {
        _cost(c.factors + ((None,) if c.reads_other else ()), c.call_steps, c.copies) for c in every
    }
    return frozenset(terms | ({outside} if outside.constant else set()))


def regex_patterns(source: str) -> dict[int, str | None]:
    """Return each `.matches(` call by the place of its name, with its pattern's CEL text.

    None for a pattern that is no plain literal: built when it runs, from what it reads.
    """
    tokens = cel_tokens(source)
    calls: dict[int, str | None] = {}
    for at, (kind, text) in enumerate(tokens):
        if kind != "name" or text != "matches" or at < 1 or tokens[at - 1] != ("punct", "."):
            continue
        if at + 1 >= len(tokens) or tokens[at + 1] != ("punct", "("):
            continue  # a field named `matches` (a search's answer), not the function
        argument = tokens[at + 2 : at + 4]
        literal = len(argument) == 2 and argument[0][0] == "string" and argument[1][1] == ")"
        calls[at] = argument[0][1] if literal else None
    return calls


def _reads_beyond_its_item(
    tokens: list[tuple[str, str]], at: int, inside: list[_Comprehension], maps: Collection[str]
) -> bool:
    """Whether the name at `at`, in a comprehension's body, is a value beyond its own item."""
    name = tokens[at][1]
    if name in KEYWORDS or name == inside[-1].item or not _is_value(tokens, at):
        return False
    # This runtime copies what a field holds at each read (`s.args.x` copies the arguments,
    # `plan.steps` every step): read through one of the plan's large fields, a value beyond
    # the item costs as a scan of it. Indexed (`s["args"]["x"]`) it is not copied.
    if _LARGE_FIELDS & set(_path(tokens, at).split(".")[1:]):
        return True
    # Compared or its fields read, a value is one step; scanned (`x in plan.steps`, `x in
    # s.args.to`, `x in (l)`), it is a list no longer than the longest.
    if at < 1 or tokens[at - 1] not in (("name", "in"), ("punct", "(")):
        return False
    if tokens[at - 1] == ("punct", "(") and (at < 2 or tokens[at - 2] != ("name", "in")):
        return False
    bound = next((c for c in reversed(inside) if c.item == name), None)
    if bound is None:  # a variable: a list scanned, unless the path names a map
        return _path(tokens, at) not in maps
    return bound.factors[-1:] == (None,)  # an item of data


_STEP_READS = re.compile(r"\bsteps\s*\.")

# The fields of the plan whose values may be as large as the plan: its steps, their arguments.
_LARGE_FIELDS = frozenset({"steps", "args"})


def _path(tokens: list[tuple[str, str]], at: int) -> str:
    """Return the dotted path of plain fields that starts at the name at `at` (`goal.metadata`)."""
    names = [tokens[at][1]]
    while at + 2 < len(tokens) and tokens[at + 1] == ("punct", ".") and tokens[at + 2][0] == "name":
        if at + 3 < len(tokens) and tokens[at + 3] == ("punct", "("):
            break  # a method: its result is no field
        names.append(tokens[at + 2][1])
        at += 2
    return ".".join(names)


def literal_values(source: str) -> int:
    """Return how many literal values the expression holds: data it may range over too."""
    return sum(1 for kind, _ in cel_tokens(source) if kind in ("string", "number"))


def _cost(factors: tuple[int | None, ...], call_steps: int = 1, copies: bool = False) -> Cost:
    constant = call_steps
    for factor in factors:
        constant *= 1 if factor is None else max(factor, 1)
    return Cost(sum(1 for factor in factors if factor is None), constant, copies)


def _macro_opened(tokens: list[tuple[str, str]], at: int) -> str | None:
    """Return the item a comprehension opened at `at` binds (`.exists(s, ...`), else None."""
    if tokens[at][1] != "(" or at < 2 or tokens[at - 2] != ("punct", "."):
        return None
    if tokens[at - 1][0] != "name" or tokens[at - 1][1] not in MACROS:
        return None
    following = tokens[at + 1 : at + 3]
    if len(following) == 2 and following[0][0] == "name" and following[1][1] == ",":
        return following[0][1]
    return ""  # a comprehension written oddly: it binds nothing a body could name


def _is_value(tokens: list[tuple[str, str]], at: int) -> bool:
    """Whether the name at `at` is read as a value: no field, function or bound item."""
    if at >= 1 and tokens[at - 1] == ("punct", "."):
        return False  # a field or a method
    if at + 1 < len(tokens) and tokens[at + 1] == ("punct", "("):
        return False  # a function
    return not (at >= 1 and tokens[at - 1] == ("punct", "(") and _macro_opened(tokens, at - 1))


def _receiver(tokens: list[tuple[str, str]], dot: int) -> tuple[int, int | None]:
    """Return where the chain before `.macro(` starts if at a name (else -1), and its size.

    The size is a literal list's count of values; None for data (any value of the plan).
    """
    at = dot - 1
    while at >= 0:
        kind, text = tokens[at]
        if kind == "name":
            if at >= 1 and tokens[at - 1] == ("punct", "."):
                at -= 2
                continue
            return at, None
        if kind != "punct" or text not in _CLOSING:
            return -1, None
        closing, at = at, _opening(tokens, at)
        if at < 0:
            return -1, None
        before = tokens[at - 1] if at >= 1 else ("punct", "")
        if tokens[at][1] == "(" and before[0] == "name":
            at -= 1  # a method or function: its receiver, or a function's result
            if at >= 1 and tokens[at - 1] == ("punct", "."):
                at -= 2
                continue
            return -1, None
        if tokens[at][1] == "[" and (before[0] == "name" or before[1] in _CLOSING):
            at -= 1  # an index into what comes before
            continue
        if tokens[at][1] == "[":
            return -1, _items(tokens[at + 1 : closing])
        return -1, None  # a bracketed expression: it may be data
    return -1, None


def _items(tokens: list[tuple[str, str]]) -> int:
    """Return how many items a literal list's tokens hold (commas outside brackets, plus one)."""
    depth, commas = 0, 0
    for kind, text in tokens:
        if kind == "punct" and text in "([{":
            depth += 1
        elif kind == "punct" and text in _CLOSING:
            depth -= 1
        elif kind == "punct" and text == "," and depth == 0:
            commas += 1
    return commas + 1 if tokens else 0


def _opening(tokens: list[tuple[str, str]], closing: int) -> int:
    """Return where the bracket closed at `closing` opened (-1 if it never did)."""
    depth = 0
    for at in range(closing, -1, -1):
        kind, text = tokens[at]
        if kind != "punct":
            continue
        if text in _CLOSING:
            depth += 1
        elif text in "([{":
            depth -= 1
            if depth == 0:
                return at
    return -1


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


def copies_results(source: str) -> bool:
    """Whether the expression calls `map` or `filter`, which copy their result at each item."""
    tokens = cel_tokens(source)
    return any(
        _macro_opened(tokens, at) is not None and tokens[at - 1][1] in ("map", "filter")
        for at in range(len(tokens))
    )


@functools.lru_cache(maxsize=1024)
def _condition_shape(condition: str) -> tuple[frozenset[str], int, bool]:
    """Return what a condition reads of the outputs, how often, and whether it copies results.

    By its text alone, so each text is read once: the executor asks at every step it guards.
    """
    reads = len(_STEP_READS.findall(condition))
    return frozenset(steps_in_condition(condition)), reads, copies_results(condition)


def condition_too_costly(condition: str, outputs: Mapping[str, Any]) -> str | None:
    """Return why a step's condition is not evaluated over these outputs, if it is not.

    Its comprehensions see each value once, but a `map` or `filter` copies what it made so
    far at each item: over an output of 60,000 items one condition would hold the executor,
    GIL and all, for a minute.
    """
    read, times, copies = _condition_shape(condition)
    steps = outputs.get("steps", {})
    size = data_size({"steps": {k: v for k, v in steps.items() if k in read}})
    # Each `steps.<id>` it names is a copy of that output, and `+` joins them into longer
    # lists (a copy each): k of them, k times as long. A map or filter then copies at each item.
    work = times * times * size.values * COPY_STEPS
    if copies:
        work += size.values * times * size.longest * times * COPY_STEPS
    if work <= MAX_WORK:
        return None
    return (
        f"`when` was not evaluated: it may take up to {round(work):,} steps over outputs of "
        f"{size.values} values (at most {MAX_WORK:,}: it reads them {times} times, and a map "
        "or filter copies its result at each item); the step fails rather than hold the "
        "executor"
    )
