"""A static check of CEL expressions against declared variables: fields and functions.

CEL looks fields up at run time: `plan.nosuchfield == 3` compiles, and a rule written so
fails only when a plan reaches it (the gate then holds, fail closed, but the rule never
worked). This checks an expression before it is used: every function is one the runtime has
(or one declared), every variable is declared or bound by a macro (`exists(s, ...)`), and
every field read through a declared record exists. Values declared `ANY` (a tool's arguments,
a step's output) are not looked into. The compiler (`cel.compile`) still judges the syntax;
this reads its tokens, which is enough for the member chains that CEL's grammar allows.
"""

from __future__ import annotations

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
_MACROS = frozenset({"exists", "all", "exists_one", "map", "filter"})
_KEYWORDS = frozenset({"true", "false", "null", "in", "has"})
_TOKEN = re.compile(
    r"""(?P<string>[rRbB]*('''.*?'''|\"\"\".*?\"\"\"|'(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*"))"""
    r"|(?P<number>\d[\w.]*)|(?P<name>[A-Za-z_]\w*)|(?P<punct>\S)",
    re.DOTALL,
)


class Any_:  # noqa: N801 - read as a type name, like `typing.Any`
    """A value whose shape is not declared (a tool's arguments, a step's output)."""

    def __repr__(self) -> str:
        return "ANY"


ANY = Any_()


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


def expression_problems(
    source: str, variables: Mapping[str, Shape], functions: Collection[str] = ()
) -> list[str]:
    """Return what is wrong with a CEL expression over these variables (empty if nothing).

    A syntax error is the compiler's first line; otherwise each unknown function, variable or
    field, said once, in the order met.
    """
    try:
        program = cel.compile(source)
    except Exception as exc:  # whatever the compiler raises: the expression is refused
        return ["it does not compile: " + (str(exc).splitlines() or [type(exc).__name__])[0]]
    allowed = BUILTIN_FUNCTIONS | set(functions)
    problems = [f"unknown function {name}()" for name in program.functions() if name not in allowed]
    problems += _Walk(variables, _tokens(source)).problems()
    return list(dict.fromkeys(problems))


def _tokens(source: str) -> list[tuple[str, str]]:
    tokens = []
    for match in _TOKEN.finditer(source):
        kind = match.lastgroup or "punct"
        tokens.append((kind, match.group(kind)))
    return tokens


class _Walk:
    """Follows every member chain in the tokens through the declared shapes."""

    def __init__(self, variables: Mapping[str, Shape], tokens: list[tuple[str, str]]) -> None:
        self._scope: dict[str, Shape] = dict(variables)
        self._tokens = tokens
        self._found: list[str] = []

    def problems(self) -> list[str]:
        at = 0
        while at < len(self._tokens):
            kind, text = self._tokens[at]
            after_dot = at > 0 and self._tokens[at - 1][1] == "."
            if kind == "name" and not after_dot and text not in _KEYWORDS:
                at = self._chain(at)
            else:
                at += 1
        return self._found

    def _is(self, at: int, text: str) -> bool:
        return at < len(self._tokens) and self._tokens[at][1] == text

    def _chain(self, at: int) -> int:
        """Follow `name(.field | [index] | .method(...))*` from `at`; return where it ends."""
        name = self._tokens[at][1]
        if self._is(at + 1, "("):
            return at + 1  # a global function: its arguments are walked as they come
        if name not in self._scope:
            self._found.append(f"unknown variable {name}")
            return at + 1
        shape, path, at = self._scope[name], name, at + 1
        while True:
            if self._is(at, ".") and at + 1 < len(self._tokens):
                member = self._tokens[at + 1][1]
                if self._is(at + 2, "("):
                    self._bind_macro(member, shape, at + 3)
                    return at + 2  # a method's result is not declared: the chain ends
                shape = self._field(shape, member, path)
                path, at = f"{path}.{member}", at + 2
            elif self._is(at, "["):
                shape = shape.item if isinstance(shape, ListOf) else _value_of(shape)
                return at  # the index is walked as it comes; the rest is not followed
            else:
                return at

    def _bind_macro(self, method: str, shape: Shape, at: int) -> None:
        if method in _MACROS and at < len(self._tokens) and self._tokens[at][0] == "name":
            if isinstance(shape, ListOf):
                self._scope[self._tokens[at][1]] = shape.item
            elif isinstance(shape, MapOf):
                self._scope[self._tokens[at][1]] = str
            else:
                self._scope[self._tokens[at][1]] = ANY

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


def _value_of(shape: Shape) -> Shape:
    return shape.value if isinstance(shape, MapOf) else ANY
