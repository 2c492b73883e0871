"""A policy file as written: its structure, and how its bytes are read into it.

YAML's own traps are refused here, each naming the rule and its line where there is one: a
key given twice (the second silently replaced the first), a value repeated through an alias
(a file of 600 bytes walked for minutes), nesting too deep, and a file that is not UTF-8.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from plangate.config import MAX_TTL_SECONDS
from plangate.errors import PolicyError, own_words

Mode = Literal["enforce", "shadow"]
RuleAction = Literal["approve", "deny", "hold"]
MAX_MATCH_CHARS = 2000
# A running gate compiles a changed file inside a decision: 20,000 rules in 2.5 MB held one
# goal for 20 s. 1,000 rules compile in about half a second.
MAX_POLICY_BYTES = 1024 * 1024
MAX_RULES = 1000


class RuleSpec(BaseModel):
    """One rule as written in the policy file."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    match: str = Field(min_length=1, max_length=MAX_MATCH_CHARS)
    action: RuleAction
    reason: str = Field(min_length=1, max_length=1000)
    requires_role: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    # A year at most: past `timedelta`'s range the gate failed on the plan, which stayed
    # `proposed` (and a hold of centuries is no hold, only one nobody decides).
    hold_ttl_seconds: int | None = Field(default=None, gt=0, le=MAX_TTL_SECONDS)
    preview: bool = False
    # Four eyes: how many distinct reviewers (with `requires_role`) must approve the plan, and
    # whether the goal's submitter is barred from being one of them.
    approvals: int = Field(default=1, ge=1, le=10)
    approver_not_submitter: bool = False

    @model_validator(mode="after")
    def _people_need_a_hold(self) -> RuleSpec:
        # What a rule asks of people means nothing where no person decides: a `requires_role`
        # on an approve rule read as a guard, yet its plans ran unattended.
        asked = [
            name
            for name, given in (
                ("requires_role", self.requires_role is not None),
                ("hold_ttl_seconds", self.hold_ttl_seconds is not None),
                ("preview", self.preview),
                ("approvals", self.approvals > 1),
                ("approver_not_submitter", self.approver_not_submitter),
            )
            if given
        ]
        if asked and self.action != "hold":
            raise ValueError(
                f"{', '.join(asked)} {'apply' if len(asked) > 1 else 'applies'} to hold rules "
                f"only (no person decides what this rule does: {self.action}); make the action "
                "hold, or remove it"
            )
        return self


class PolicyCase(BaseModel):
    """One test in a policy file's `tests:`: a plan (or its steps) and the expected decision.

    `plangate policy test FILE` runs them all, so a policy change that breaks one fails CI.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=200)
    plan: dict[str, Any] | list[Any]  # a plan, or only its steps
    expect: RuleAction
    goal: str = ""
    metadata: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _steps_alone(cls, data: Any) -> Any:
        """Take `steps:` in place of `plan:`, as the docs say a test may give only its steps."""
        if isinstance(data, dict) and "steps" in data and "plan" not in data:
            data = {**data, "plan": {"steps": data["steps"]}}
            del data["steps"]
        return data


class PolicyFile(BaseModel):
    """The structure of a policy file: a mode, ordered rules with unique names, and tests."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    mode: Mode = "enforce"
    rules: list[RuleSpec] = Field(min_length=1)
    tests: list[PolicyCase] = Field(default_factory=list)

    @field_validator("rules")
    @classmethod
    def _rule_names_are_unique(cls, rules: list[RuleSpec]) -> list[RuleSpec]:
        _refuse_a_name_twice([rule.name for rule in rules], "rule", blame_the_rule=True)
        return rules

    @field_validator("tests")
    @classmethod
    def _test_names_are_unique(cls, tests: list[PolicyCase]) -> list[PolicyCase]:
        # `policy test` reports each by its name: two of one name read as one that ran twice.
        _refuse_a_name_twice([test.name for test in tests], "test", blame_the_rule=False)
        return tests


def _refuse_a_name_twice(names: list[str], kind: str, *, blame_the_rule: bool) -> None:
    """Raise pydantic's error for the first name that repeats one before it (if one does).

    Its `index` names the rule (and so its line) in the error; a test is no rule to blame.
    """
    twice = next((at for at, name in enumerate(names) if name in names[:at]), None)
    if twice is not None:
        context: dict[str, object] = {"name": names[twice]}
        if blame_the_rule:
            context["index"] = twice
        message = f"the {kind} name '{{name}}' is used twice; names must be unique"
        raise PydanticCustomError("duplicate_name", message, context)


def read_policy_file(data: bytes, source: str) -> tuple[PolicyFile, list[int]]:
    """Read and validate a policy file's bytes; return it and the line of each rule.

    PolicyError, naming the rule and its line where there is one, if it is not a policy.
    """
    if len(data) > MAX_POLICY_BYTES:
        raise too_large(source)
    try:
        text = data.decode("utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{source} is not UTF-8 text") from exc
    except RecursionError as exc:  # PyYAML recurses once per level of nesting
        raise PolicyError(f"{source} nests too deep to be a policy") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)  # most YAML errors say where they are
        problem = f"{source} is not valid YAML: {getattr(exc, 'problem', None) or exc}"
        raise PolicyError(problem, line=mark.line + 1 if mark else None) from exc
    if not isinstance(root, yaml.MappingNode) or not isinstance(raw, dict):
        raise PolicyError(f"{source} must be a YAML mapping with `mode` and `rules`", line=1)
    try:
        _refuse_repeated_keys(root, source)
    except RecursionError as exc:
        raise PolicyError(f"{source} nests too deep to be a policy") from exc
    rules = next((value for key, value in root.value if key.value == "rules"), None)
    nodes = rules.value if isinstance(rules, yaml.SequenceNode) else []
    if len(nodes) > MAX_RULES:
        raise PolicyError(
            f"{source} has {len(nodes)} rules; a policy may have at most {MAX_RULES} (each is "
            "tried on every plan): merge rules that differ in one value into one over a list "
            "(`s.tool in [...]`), or simplify them"
        )
    lines = [node.start_mark.line + 1 for node in nodes]
    try:
        return PolicyFile.model_validate(raw), lines
    except ValidationError as exc:
        raise _explain(exc, raw, lines, source, root) from exc


def too_large(source: str) -> PolicyError:
    """Return the refusal of a policy file over `MAX_POLICY_BYTES`."""
    return PolicyError(
        f"{source} holds more than {MAX_POLICY_BYTES // (1024 * 1024)} MiB, the most a policy "
        "file may (is it the file you meant?): simplify it (merge rules that differ in one "
        "value into one over a list, `s.tool in [...]`; fewer or shorter tests)"
    )


def _refuse_repeated_keys(node: yaml.Node, source: str, met: set[int] | None = None) -> None:
    # YAML lets a later key silently replace an earlier one: a second `match:` would hide the first.
    met = set() if met is None else met
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
        if id(node) in met:
            # An alias (`*a`) is the same node again: nine of them nested made a file of 600
            # bytes that every reader walked for minutes (the gate, at each reload).
            problem = f"{source} repeats a value through a YAML alias (*name); write it out"
            raise PolicyError(problem, line=node.start_mark.line + 1)
        met.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value in seen:
                problem = f"the key {key.value!r} appears twice (in {source})"
                raise PolicyError(problem, line=key.start_mark.line + 1)
            seen.add(key.value)
            _refuse_repeated_keys(value, source, met)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_repeated_keys(item, source, met)


def _explain(
    exc: ValidationError, raw: Any, lines: list[int], source: str, root: yaml.Node
) -> PolicyError:
    """Turn pydantic's errors into one PolicyError naming the first bad rule and its line.

    Elsewhere (a test, `mode`) the line of the value it is about.
    """
    errors = exc.errors()
    loc = errors[0]["loc"]
    index = loc[1] if len(loc) > 1 and loc[0] == "rules" else errors[0].get("ctx", {}).get("index")
    rule_name, line = None, _line_at(root, loc)
    if isinstance(index, int) and index < len(lines):
        rule = raw["rules"][index]
        name = rule.get("name") if isinstance(rule, dict) else None
        rule_name = str(name) if name else f"#{index + 1}"
        line = lines[index]
    problems = []
    for error in (e for e in errors if e["loc"][:2] == loc[:2]):  # one rule at a time
        about_one_rule = len(error["loc"]) > 1 or "index" in error.get("ctx", {})
        in_rule = error["loc"][:1] == ("rules",) and about_one_rule
        field_name = ".".join(str(part) for part in error["loc"][2 if in_rule else 0 :])
        said = own_words(error["msg"])
        problems.append(f"{field_name}: {said}" if field_name else said)
    return PolicyError(f"{'; '.join(problems)} (in {source})", rule_name, line)


def _line_at(node: yaml.Node, loc: tuple[int | str, ...]) -> int:
    """Return the 1-based line of the value at `loc` (as deep as the file has it)."""
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            found = node.value[part] if 0 <= part < len(node.value) else None
        else:
            found = None
        if found is None:
            break
        node = found
    return node.start_mark.line + 1
