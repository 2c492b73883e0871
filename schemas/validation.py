"""The one plan validator. Planner, gate and executor all call `validate_plan`.

A plan that fails here never reaches the next stage: every problem is reported at once, each
naming the step it concerns, so a planner (or a person editing) can fix them all in one go.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

from jsonschema.protocols import Validator

from schemas.cel_check import ANY, MapOf, Shape, comprehension_problems, expression_problems
from schemas.cel_cost import regex_patterns
from schemas.errors import PlanInvalid, PlanProblem
from schemas.hashing import canonical_json
from schemas.instance_memo import InstanceMemo
from schemas.json_schema import errors_of, validator_for
from schemas.plan import Plan, Step
from schemas.references import Reference, dependencies, steps_in_condition, whole_reference
from schemas.tool_spec import ToolSpec

MAX_STEPS = 50
MAX_PLAN_BYTES = 256 * 1024
MAX_CONDITION_CHARS = 1000
# What a step's `when` may read: earlier steps' outputs and statuses (the executor's view).
CONDITION_VARIABLES: dict[str, Shape] = {"steps": MapOf({"output": ANY, "status": str})}

_JSON_TYPE_ACCEPTS = {"integer": {"integer", "number"}}


def validate_plan(plan: Plan, catalog: Mapping[str, ToolSpec]) -> None:
    """Raise PlanInvalid listing every problem of `plan` against `catalog`; return if valid."""
    problems = _check_size(plan)
    if any(p.code == "not_canonical" for p in problems):
        raise PlanInvalid(problems)  # it can be neither hashed nor approved; look no further
    ids = [step.id for step in plan.steps]
    seen: set[str] = set()
    for step_id in ids:
        if step_id in seen:
            problems.append(PlanProblem("duplicate_id", "the step id is used twice", step_id))
        seen.add(step_id)
    for step in plan.steps:
        problems += _check_step(step, plan, catalog, seen)
    problems += _check_acyclic(plan)
    if problems:
        raise PlanInvalid(problems)


def _check_size(plan: Plan) -> list[PlanProblem]:
    problems = []
    if not plan.steps:
        problems.append(PlanProblem("empty", "the plan has no steps"))
    if len(plan.steps) > MAX_STEPS:
        problems.append(
            PlanProblem("too_many_steps", f"{len(plan.steps)} steps; at most {MAX_STEPS} allowed")
        )
    try:
        size = len(canonical_json(plan))
    except (ValueError, RecursionError):
        return [*problems, _not_canonical(plan)]
    if size > MAX_PLAN_BYTES:
        problems.append(
            PlanProblem("too_large", f"{size} bytes of JSON; at most {MAX_PLAN_BYTES} allowed")
        )
    return problems


def _not_canonical(plan: Plan) -> PlanProblem:
    """Say which step has no RFC 8785 form (an integer beyond 2**53, nesting too deep)."""
    for step in plan.steps:
        try:
            canonical_json(step)
        except (ValueError, RecursionError) as exc:
            return PlanProblem("not_canonical", f"args have no canonical JSON form: {exc}", step.id)
    return PlanProblem("not_canonical", "the plan has no canonical JSON form (RFC 8785)")


def _check_step(
    step: Step, plan: Plan, catalog: Mapping[str, ToolSpec], ids: set[str]
) -> list[PlanProblem]:
    problems = []
    for dep in sorted(dependencies(step) - ids):
        problems.append(
            PlanProblem(
                "dangling_reference", f"refers to step {dep!r}, which the plan lacks", step.id
            )
        )
    if step.when is not None:
        problems += _check_condition(step)
    spec = catalog.get(step.tool)
    if spec is None:
        known = ", ".join(sorted(catalog)) or "none"
        problems.append(
            PlanProblem(
                "unknown_tool", f"tool {step.tool!r} is not in the catalog ({known})", step.id
            )
        )
        return problems
    return problems + _check_args(step, spec, plan, catalog)


def _check_condition(step: Step) -> list[PlanProblem]:
    assert step.when is not None
    if len(step.when) > MAX_CONDITION_CHARS:
        return [PlanProblem("bad_condition", "`when` is too long", step.id)]
    return [PlanProblem("bad_condition", said, step.id) for said in _condition_problems(step.when)]


MAX_CONDITION_REGEXES = 2


@lru_cache(maxsize=1024)
def _condition_problems(when: str) -> tuple[str, ...]:
    """Return what is wrong with a `when`: by its text alone, so each text is checked once."""
    problems = expression_problems(when, CONDITION_VARIABLES)
    if problems:
        return (f"`when` is not valid CEL: {'; '.join(problems)}",)
    if not steps_in_condition(when) and "steps" in when:
        return ("`when` must read outputs as steps.<id>",)
    patterns = regex_patterns(when).values()
    if len(patterns) > MAX_CONDITION_REGEXES:
        return (
            f"`when` calls matches() {len(patterns)} times; at most {MAX_CONDITION_REGEXES}: "
            "each call compiles its pattern (up to 50 ms), while the executor waits",
        )
    if None in patterns:
        return (
            "`when` may call matches() only with a pattern written in it: one made from an "
            "output lets that output choose what matches, and what the call costs",
        )
    costly = comprehension_problems(when, CONDITION_VARIABLES)
    if costly:
        return (
            f"`when` would cost more than the outputs it reads ({'; '.join(costly)}): "
            "a comprehension may read only its own item, hold no other, and call no regex",
        )
    return ()


# A tool's argument schema compiled once per spec (specs are frozen, and the catalog keeps
# one instance per published spec), not once per step of every plan.
_args_validator: InstanceMemo[ToolSpec, Validator] = InstanceMemo(
    lambda spec: validator_for(spec.args_schema, formats=True)
)


def _check_args(
    step: Step, spec: ToolSpec, plan: Plan, catalog: Mapping[str, ToolSpec]
) -> list[PlanProblem]:
    """Validate args against the tool's schema; referenced values are checked by type."""
    problems: list[PlanProblem] = []
    found = [hit for name, value in step.args.items() for hit in _whole_refs(value, (name,))]
    for path, ref in found:
        prop = _subschema(spec.args_schema, path)
        mismatch = _reference_type_mismatch(ref, prop, plan, catalog)
        if mismatch:
            where = ".".join(str(p) for p in path)
            problems.append(PlanProblem("bad_args", f"argument {where!r}: {mismatch}", step.id))
    validator = _args_validator(spec)
    for error in errors_of(validator, step.args):
        at = tuple(error.absolute_path)
        if any(at[: len(path)] == path for path, _ in found):
            continue  # about a reference itself (a string for now): its type was checked above
        where = ".".join(str(p) for p in at) or "args"
        problems.append(PlanProblem("bad_args", f"{where}: {error.message}", step.id))
    return problems


_Path = tuple[str | int, ...]


def _whole_refs(value: Any, path: _Path) -> Iterator[tuple[_Path, Reference]]:
    """Yield each whole reference inside an argument value, with where it sits."""
    ref = whole_reference(value)
    if ref is not None:
        yield path, ref
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _whole_refs(item, (*path, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _whole_refs(item, (*path, index))


def _subschema(schema: Any, path: _Path) -> Any:
    """Follow `properties` and `items` down `path`; None where the schema does not say."""
    for part in path:
        if not isinstance(schema, dict):
            return None
        if isinstance(part, int):
            schema = schema.get("items")
        else:
            properties = schema.get("properties")
            schema = properties.get(part) if isinstance(properties, dict) else None
    return schema


def _reference_type_mismatch(
    ref: Reference, prop: Any, plan: Plan, catalog: Mapping[str, ToolSpec]
) -> str | None:
    """Say why a referenced output cannot fill a property, when both types are known."""
    if not isinstance(prop, dict) or "type" not in prop:
        return None
    try:
        source = catalog.get(plan.step(ref.step_id).tool)
    except KeyError:
        return None
    schema = source.output_schema if source else None
    for part in ref.path:
        if not isinstance(schema, dict):
            return None
        schema = schema.get("properties", {}).get(part)
    if not isinstance(schema, dict) or not isinstance(schema.get("type"), str):
        return None
    produced: str = schema["type"]
    wanted = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
    if any(w in _JSON_TYPE_ACCEPTS.get(produced, {produced}) for w in wanted):
        return None
    return f"${{{'.'.join((ref.step_id, *ref.path))}}} gives {produced}, expected {prop['type']}"


def _check_acyclic(plan: Plan) -> list[PlanProblem]:
    """Find one cycle, if any. Iterative, so a long chain of steps cannot exhaust the stack."""
    graph: dict[str, set[str]] = {}
    for step in plan.steps:
        graph.setdefault(step.id, set()).update(dependencies(step))
    done: set[str] = set()
    for root in graph:
        if root in done:
            continue
        path = [root]  # the current chain of dependencies, root first
        stack = [iter(sorted(graph[root] & graph.keys()))]
        while stack:
            dep = next(stack[-1], None)
            if dep is None:
                done.add(path.pop())
                stack.pop()
            elif dep in path:
                loop = " -> ".join([*path[path.index(dep) :], dep])
                return [PlanProblem("cycle", f"its dependencies form a cycle: {loop}", dep)]
            elif dep not in done:
                path.append(dep)
                stack.append(iter(sorted(graph[dep] & graph.keys())))
    return []
