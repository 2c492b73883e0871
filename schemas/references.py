"""References between steps: `${id}` / `${id.field}` in args, `steps.<id>` in `when`.

Finding them (for validation and the DAG) and resolving them (for execution) live together so
the two can never disagree about the syntax.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from schemas.plan import Step

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z0-9_]+)*)\}")
_WHEN_STEP = re.compile(r"\bsteps\.([A-Za-z_][A-Za-z0-9_]*)")


class Reference(NamedTuple):
    """`${step_id.path...}` found in an argument value.

    A named tuple rather than a frozen dataclass: the gate finds every reference of a plan at
    each decision, and a tuple is made in a fifth of the time.
    """

    step_id: str
    path: tuple[str, ...]
    whole: bool  # the value is exactly the reference, so it keeps the output's type


class UnresolvedReference(LookupError):
    """A reference names an output (or a field of it) that does not exist."""


def references_in(value: Any) -> Iterator[Reference]:
    """Yield every reference inside an argument value, however deeply nested."""
    if isinstance(value, str):
        if "${" not in value:  # most arguments are plain text
            return
        whole = _REFERENCE.fullmatch(value) is not None
        for step_id, dotted in _REFERENCE.findall(value):
            yield Reference(step_id, tuple(dotted.split(".")[1:]), whole)  # ".a.b" -> (a, b)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from references_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from references_in(item)


def whole_reference(value: Any) -> Reference | None:
    """Return the reference `value` consists of exactly (so it keeps its type), else None."""
    if isinstance(value, str) and _REFERENCE.fullmatch(value):
        return next(references_in(value))
    return None


def steps_in_condition(when: str) -> set[str]:
    """Return the ids a `when` expression reads through `steps.<id>`."""
    return set(_WHEN_STEP.findall(when))


def data_sources(step: Step) -> set[str]:
    """Return the ids of the steps whose outputs `step` reads (in its arguments or `when`)."""
    sources = {ref.step_id for ref in references_in(step.args)}
    if step.when:
        sources |= steps_in_condition(step.when)
    return sources


def dependencies(step: Step) -> set[str]:
    """Return the ids of the steps that must finish before `step` may start."""
    return data_sources(step) | set(step.after)


def _follow(outputs: Mapping[str, Any], ref: Reference) -> Any:
    if ref.step_id not in outputs:
        raise UnresolvedReference(f"step {ref.step_id!r} has no output")
    value = outputs[ref.step_id]
    for part in ref.path:
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            dotted = ".".join((ref.step_id, *ref.path))
            raise UnresolvedReference(f"output of {ref.step_id!r} has no field for ${{{dotted}}}")
    return value


def _as_text(value: Any) -> str:
    # Interpolated outputs read as JSON (true, null, {"a": 1}), never as Python reprs.
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def resolve(value: Any, outputs: Mapping[str, Any]) -> Any:
    """Replace references in `value` with outputs: a whole reference keeps its type."""
    if isinstance(value, str):
        whole = whole_reference(value)
        if whole is not None:
            return _follow(outputs, whole)
        return _REFERENCE.sub(
            lambda m: _as_text(_follow(outputs, next(references_in(m.group(0))))), value
        )
    if isinstance(value, Mapping):
        return {key: resolve(item, outputs) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [resolve(item, outputs) for item in value]
    return value
