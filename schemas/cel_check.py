"""A static check of CEL expressions against declared variables: fields and functions.

CEL looks fields up at run time: `plan.nosuchfield == 3` compiles, and a rule written so
fails only when a plan reaches it (the gate then holds, fail closed, but the rule never
worked). This checks an expression before it is used: every function is one the runtime has
(or one declared), every variable is declared or bound by a macro (`exists(s, ...)`), and
every field read through a declared record exists. Values declared `ANY` (a tool's arguments,
a step's output) are not looked into. The compiler (`cel.compile`) still judges the syntax;
this reads its tokens, which is enough for the member chains that CEL's grammar allows.

The same walk says what an expression reads (`expression_reads`), so that a caller can build
only those fields: converting values into CEL is most of the time an evaluation takes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import cel

# Functions and operators this CEL runtime has (checked against it by a test).
BUILTIN_FUNCTIONS = frozenset(
    {
        "!_", "-_", "@in", "@not_strictly_false", "_!=_", "_%_", "_&&_", "_*_", "_+_", "_-_",
        "_/_", "_<=_", "_<_", "_==_", "_>=_", "_>_", "_?_:_", "_[_]", "_||_",
        "size", "contains", "startsWith", "endsWith", "matches", "int", "uint", "double",
        "string", "bytes", "type", "duration", "timestamp", "dyn", "getFullYear", "getMonth",
        "getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear", "getHours", "getMinutes",
        "getSeconds", "getMilliseconds",
    }
)  # fmt: skip
MACROS = frozenset({"exists", "all", "exists_one", "map", "filter"})
# CEL's names of its own types, compared with `type(x)`.
TYPE_NAMES = frozenset(
    {"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"}
)
KEYWORDS = frozenset({"true", "false", "null", "in", "has"})  # names that are no value
# As CEL reads them: a raw string (r"...") has no escapes, so r"\" ends at its second quote;
# `//` starts a comment to the end of the line (skipped). Read otherwise, a `)` in a comment
# or a quote after a raw backslash hid a comprehension from `comprehension_problems`.
_TOKEN = re.compile(
    r"(?P<comment>//[^\n]*)"
    r"""|(?P<string>(?:[bB]?[rR]|[rR][bB])(?:'''.*?'''|\"\"\".*?\"\"\"|'[^'\n]*'|"[^"\n]*")"""
    r"""|[bB]?(?:'''(?:\\.|.)*?'''|\"\"\"(?:\\.|.)*?\"\"\"|'(?:\\.|[^'\\\n])*'"""
    r"""|"(?:\\.|[^"\\\n])*"))"""
    r"|(?P<number>\d[\w.]*)|(?P<name>[A-Za-z_]\w*)|(?P<punct>\S)",
    re.DOTALL,
)


class Any_:  # noqa: N801 - read as a type name, like `typing.Any`
    """A value whose shape is not declared (a tool's arguments, a step's output)."""

    def __repr__(self) -> str:
        return "ANY"


ANY = Any_()


# Distinct expressions kept compiled: conditions and rules are few and repeat (every stage
# checks a plan's conditions, the executor runs them); at most 1000 characters each.
_COMPILED_KEPT = 1024


@functools.lru_cache(maxsize=_COMPILED_KEPT)
def compiled(source: str) -> cel.Program:
    """Return the CEL program of an expression, compiled once while it is in use.

    Raises as `cel.compile` does (a failure is not kept). A program only evaluates, from any
    thread. Compiling one took as long as running it, and a goal's condition was compiled four
    times: three stages check it, and the executor runs it.
    """
    return cel.compile(source)


@dataclass(frozen=True)
class ListOf:
    """A list of values of one declared shape."""

    item: Any


@dataclass(frozen=True)
class MapOf:
    """A map from strings to values of one declared shape."""

    value: Any


# A declared shape: a record (a Mapping of field name to shape), ListOf, MapOf, ANY, or a
# scalar type (str, int, bool), which has no fields.
Shape = Any


def result_over_empty_values(source: str, variables: Mapping[str, Shape]) -> object:
    """Return what an expression gives over the emptiest value of each declared variable.

    A condition must give true or false for every input; one that gives a number or a text
    for empty ones (`size(plan.steps)`) gives one for all, so it never tests anything. An
    expression that fails over them (an index past the end, an undeclared function's value)
    proves nothing, and is returned as the exception it raised.
    """
    try:
        context = cel.Context(variables={name: _emptiest(v) for name, v in variables.items()})
        return compiled(source).execute(context)
    except Exception as exc:  # whatever the runtime raises: no evidence either way
        return exc


def _emptiest(shape: Shape) -> Any:
    if isinstance(shape, Mapping):
        return {name: _emptiest(field) for name, field in shape.items()}
    if isinstance(shape, ListOf):
        return []
    if isinstance(shape, MapOf):
        return {}
    if shape in (str, int, bool):
        return shape()
    return None  # ANY: null


def expression_problems(
    source: str, variables: Mapping[str, Shape], functions: Collection[str] = ()
) -> list[str]:
    """Return what is wrong with a CEL expression over these variables (empty if nothing).

    A syntax error is the compiler's first line; otherwise each unknown function, variable or
    field, said once, in the order met.
    """
    try:
        program = compiled(source)
    except Exception as exc:  # whatever the compiler raises: the expression is refused
        return ["it does not compile: " + (str(exc).splitlines() or [type(exc).__name__])[0]]
    allowed = BUILTIN_FUNCTIONS | set(functions)
    problems = [f"unknown function {name}()" for name in program.functions() if name not in allowed]
    problems += _Walk(variables, cel_tokens(source)).problems()
    return list(dict.fromkeys(problems))


@dataclass(frozen=True)
class Reads:
    """What expressions read of their variables, as dotted paths (`plan.steps[].tool`).

    `fields` holds every field read by name; `whole` every value used as a whole (compared,
    sized, indexed by a computed key, its keys iterated, or handed to a function), of which
    any field may matter.
    """

    fields: frozenset[str] = frozenset()
    whole: frozenset[str] = frozenset()

    def __or__(self, other: Reads) -> Reads:
        return Reads(self.fields | other.fields, self.whole | other.whole)

    # Asked of the policy's reads at every decision, and a policy's reads never change: the
    # answers are kept (a few per policy, so a small bound suffices).
    @functools.lru_cache(maxsize=256)  # noqa: B019 - Reads are small, frozen and few
    def fields_of(self, record: str) -> frozenset[str] | None:
        """Return the fields read of the record at `record` (None: it may need all of them)."""
        if any(record == p or record.startswith((p + ".", p + "[")) for p in self.whole):
            return None  # the record, or a value holding it, is used whole
        prefix = record + "."
        names = (path.removeprefix(prefix) for path in self.fields if path.startswith(prefix))
        return frozenset(re.split(r"[.\[]", name, maxsplit=1)[0] for name in names)


def expression_reads(source: str, variables: Mapping[str, Shape]) -> Reads:
    """Return what an expression (one `expression_problems` accepts) reads of `variables`."""
    walk = _Walk(variables, cel_tokens(source))
    walk.problems()
    return Reads(frozenset(walk.fields), frozenset(walk.whole))


def comprehension_problems(source: str, variables: Collection[str]) -> list[str]:
    """Return what makes an expression's cost grow faster than the data it reads.

    A comprehension (`exists`, `all`, `map`, ...) costs the size of what it ranges over times
    the cost of its body, and CEL evaluates holding the GIL, with no deadline: eight nested
    over a plan's eleven steps took 28 s. So a comprehension may neither hold another nor read
    a declared variable (another collection) in its body: then the work is linear in the data.
    Read from the tokens, so spaces (`steps .exists`) change nothing.
    """
    tokens = cel_tokens(source)
    opened: list[str | None] = []  # per open bracket: the comprehension it opened, if one
    inside: list[str] = []
    problems: list[str] = []
    for at, (kind, text) in enumerate(tokens):
        after_dot = at >= 1 and tokens[at - 1] == ("punct", ".")
        if kind == "name" and inside and text in variables and not after_dot:
            problems.append(f"{inside[-1]}() reads {text} in its body")
        calls = at + 1 < len(tokens) and tokens[at + 1] == ("punct", "(")
        if kind == "name" and inside and text == "matches" and after_dot and calls:
            # This runtime compiles a pattern at each call (one took 24 ms): once per item.
            problems.append(f"{inside[-1]}() calls matches() in its body")
        if kind != "punct":
            continue
        if text in "([{":
            macro = tokens[at - 1][1] if at >= 2 and tokens[at - 1][0] == "name" else None
            if macro not in MACROS or text != "(" or tokens[at - 2] != ("punct", "."):
                macro = None
            if macro is not None and inside:
                problems.append(f"{inside[-1]}() holds {macro}()")
            opened.append(macro)
            if macro is not None:
                inside.append(macro)
        elif text in ")]}" and opened and opened.pop() is not None:
            inside.pop()
    return list(dict.fromkeys(problems))


def call_literals(source: str, receiver: str, function: str) -> list[list[str | None]]:
    """Return the arguments of each `receiver.function(...)` call in an expression.

    Each argument is a plain string literal's text, else None (an expression, or a literal
    with escapes: known only when it runs).
    """
    tokens = cel_tokens(source)
    head = [("name", receiver), ("punct", "."), ("name", function), ("punct", "(")]
    calls: list[list[str | None]] = []
    for at in range(len(tokens) - 3):
        if tokens[at : at + 4] != head:
            continue
        args: list[list[tuple[str, str]]] = [[]]
        depth = 0
        for kind, text in tokens[at + 4 :]:
            if kind == "punct" and text in "([{":
                depth += 1
            elif kind == "punct" and text in ")]}":
                if depth == 0:
                    break
                depth -= 1
            elif kind == "punct" and text == "," and depth == 0:
                args.append([])
                continue
            args[-1].append((kind, text))
        calls.append([_plain_string(arg) for arg in args])
    return calls


def _plain_string(tokens: list[tuple[str, str]]) -> str | None:
    if len(tokens) != 1 or tokens[0][0] != "string":
        return None
    text = tokens[0][1]
    plain = text[:1] in ("'", '"') and not text.startswith(("'''", '"""'))
    return text[1:-1] if plain and "\\" not in text else None


def cel_tokens(source: str) -> list[tuple[str, str]]:
    """Return an expression's tokens as (kind, text): string, number, name or punct."""
    tokens = []
    for match in _TOKEN.finditer(source):
        kind = match.lastgroup or "punct"
        if kind != "comment":
            tokens.append((kind, match.group(kind)))
    return tokens


class _Walk:
    """Follows every member chain in the tokens through the declared shapes."""

    def __init__(self, variables: Mapping[str, Shape], tokens: list[tuple[str, str]]) -> None:
        # Each name in scope with its shape and the path it stands for (a macro's variable
        # stands for the items of what it ranges over: `plan.steps[]`).
        self._scope: dict[str, tuple[Shape, str]] = {
            name: (shape, name) for name, shape in variables.items()
        }
        self._tokens = tokens
        self._found: list[str] = []
        self.fields: set[str] = set()
        self.whole: set[str] = set()

    def problems(self) -> list[str]:
        at = 0
        while at < len(self._tokens):
            kind, text = self._tokens[at]
            after_dot = at > 0 and self._tokens[at - 1][1] == "."
            if kind == "name" and not after_dot and text not in KEYWORDS:
                at = self._chain(at)
            elif kind == "name" and after_dot and text in MACROS and self._is(at + 1, "("):
                at = self._bind_over_value(at + 2)
            else:
                at += 1
        return self._found

    def _bind_over_value(self, at: int) -> int:
        """Bind the variable of a macro over a value no chain names (a literal, a result).

        What it ranges over was read where it was made: a literal reads nothing, a `map`'s
        body was walked, a `filter`'s receiver and a bracketed chain are used whole.
        """
        kind, variable = self._tokens[at] if at < len(self._tokens) else ("punct", "")
        if kind == "name" and self._is(at + 1, ","):
            self._scope[variable] = (ANY, "")
            return at + 1
        return at

    def _is(self, at: int, text: str) -> bool:
        return at < len(self._tokens) and self._tokens[at][1] == text

    def _chain(self, at: int) -> int:
        """Follow `name(.field | [index] | .method(...))*` from `at`; return where it ends."""
        name = self._tokens[at][1]
        if self._is(at + 1, "("):
            return at + 1  # a global function: its arguments are walked as they come
        if name in TYPE_NAMES and name not in self._scope:
            return at + 1  # `type(x) == double`: CEL's own names of its types
        if name not in self._scope:
            self._found.append(f"unknown variable {name}")
            return at + 1
        # `written` names the value as the expression does (for messages); `path` names the
        # data it stands for (`plan.steps[].tool` for `s.tool`), for what it reads.
        (shape, path), written, at = self._scope[name], name, at + 1
        while True:
            if self._is(at, ".") and at + 1 < len(self._tokens):
                member = self._tokens[at + 1][1]
                if self._is(at + 2, "("):
                    # A method's result is not declared: the chain ends (past a macro's variable).
                    return self._call(member, shape, path, at + 3)
                if isinstance(shape, Mapping):
                    self.fields.add(f"{path}.{member}")
                shape = self._field(shape, member, written)
                path, written, at = f"{path}.{member}", f"{written}.{member}", at + 2
            elif self._is(at, "["):
                # The rest is not followed, so all of what is indexed may matter: a list's
                # items, or a record read by a key that may be computed.
                if isinstance(shape, ListOf):
                    self._use_whole(shape.item, f"{path}[]")
                else:
                    self._use_whole(shape, path)
                return at  # the index is walked as it comes
            else:
                self._use_whole(shape, path)
                return at

    def _call(self, method: str, shape: Shape, path: str, at: int) -> int:
        """Follow a method of `shape`: a macro binds its variable; any other uses `shape` whole.

        Return where the walk goes on: its arguments, past the variable a macro binds.
        """
        kind, variable = self._tokens[at] if at < len(self._tokens) else ("punct", "")
        if method not in MACROS or kind != "name":
            self._use_whole(shape, path)
            return at
        if method == "filter":
            # Its result is the items themselves, which the rest of the expression may read
            # in any way (`[0].args`): had only the fields its condition reads been built, a
            # rule reading others would see them missing (and `has()` say false).
            self._use_whole(shape, path)
        if isinstance(shape, ListOf):
            self._scope[variable] = (shape.item, f"{path}[]")
        elif isinstance(shape, MapOf):
            self._scope[variable] = (str, f"{path}{{}}")  # a map's macro ranges over its keys
        else:  # a record's keys, or something undeclared
            self._use_whole(shape, path)
            self._scope[variable] = (ANY, f"{path}{{}}")
        return at + 1

    def _use_whole(self, shape: Shape, path: str) -> None:
        if isinstance(shape, Mapping | ListOf | MapOf):
            self.whole.add(path)

    def _field(self, shape: Shape, member: str, path: str) -> Shape:
        if shape is ANY or isinstance(shape, Any_):
            return ANY
        if isinstance(shape, MapOf):
            return shape.value
        if isinstance(shape, Mapping):
            if member in shape:
                return shape[member]
            known = ", ".join(sorted(shape))
            self._found.append(f"{path} has no field {member} (it has: {known})")
            return ANY
        self._found.append(f"{path} has no fields; {path}.{member} reads nothing")
        return ANY
