"""The offline playbook planner: goal patterns (regular expressions) mapped to plan templates.

Named groups of a pattern fill `{{name}}` placeholders in the template's summary and string
arguments. Goal text is untrusted: a value can never introduce a `${...}` step reference.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from plangate.config import Settings
from plangate.errors import ConfigError, PlanningFailed, describe
from plangate.small_files import read_text
from planner_worker.planner import Draft
from schemas import Catalog, GoalSubmitted, Step

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class PlaybookEntry(BaseModel):
    """One goal pattern and the plan it produces."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    pattern: str
    summary: str = ""
    steps: list[Step] = Field(min_length=1)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"pattern is not a valid regular expression: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _placeholders_are_groups(self) -> PlaybookEntry:
        # A placeholder no group fills became "" in every plan, without a word.
        groups = re.compile(self.pattern).groupindex
        used = _placeholders([self.summary, *(dict(step.args) for step in self.steps)])
        unknown = sorted(used - set(groups))
        if unknown:
            named = ", ".join(f"{{{{{name}}}}}" for name in unknown)
            known = ", ".join(f"(?P<{g}>...)" for g in groups) or "none"
            raise ValueError(
                f"no group of the pattern fills {named} (its named groups: {known}); "
                "name a group so, or remove the placeholder"
            )
        return self


class PlaybookFile(BaseModel):
    """A playbook file: entries tried in order, first match wins."""

    model_config = ConfigDict(extra="forbid")

    playbooks: list[PlaybookEntry]


def _placeholders(value: Any) -> set[str]:
    if isinstance(value, str):
        return set(_PLACEHOLDER.findall(value))
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return set().union(*(_placeholders(item) for item in items))


def _fill(value: Any, groups: dict[str, str]) -> Any:
    if isinstance(value, str):
        filled = _PLACEHOLDER.sub(lambda m: groups.get(m.group(1), ""), value)
        # Each value is defanged alone; joined to another, or to a `$` of the playbook's,
        # goal text could still spell `${...}` (`{{cur}}{{order}}` given `$` and `{note}`).
        if filled.count("${") > _PLACEHOLDER.sub("\x00", value).count("${"):
            raise PlanningFailed(
                [
                    "the goal's words would make a step reference (`${`) in a step's "
                    "arguments; say the goal without `$` and `{`"
                ]
            )
        return filled
    if isinstance(value, dict):
        return {key: _fill(item, groups) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, groups) for item in value]
    return value


def _numbers(step: Step, args: dict[str, Any], catalog: Catalog) -> dict[str, Any]:
    """Make a number of an argument that is one placeholder alone, where the tool takes one.

    A capture is text: `amount: "{{amt}}"` gave "50", refused as "not of type 'number'",
    and a playbook had no way to pass a number from the goal's words. Text that is no number
    stays text, and is refused so.
    """
    spec = catalog.get(step.tool)
    properties = (spec.args_schema or {}).get("properties", {}) if spec is not None else {}
    typed = dict(args)
    for name, template in step.args.items():
        declared = properties.get(name) if isinstance(properties, dict) else None
        wanted = declared.get("type") if isinstance(declared, dict) else None  # or `true`
        value = args.get(name)
        if not (isinstance(template, str) and _PLACEHOLDER.fullmatch(template)):
            continue
        if wanted == "integer" and isinstance(value, str) and re.fullmatch(r"-?\d{1,15}", value):
            typed[name] = int(value)
        elif wanted == "number" and isinstance(value, str) and _NUMBER.fullmatch(value):
            typed[name] = float(value) if "." in value else int(value)
    return typed


_NUMBER = re.compile(r"-?\d{1,15}(?:\.\d{1,15})?")


def _defang(text: str) -> str:
    """Keep goal text from forming a step reference once placed in an argument."""
    return text.replace("${", "$ {")


class PlaybookPlanner:
    """Plans by matching the goal against playbook patterns, in order."""

    def __init__(self, entries: list[PlaybookEntry], source: str) -> None:
        self.entries = entries
        self.source = source
        self._patterns = [re.compile(entry.pattern) for entry in entries]

    @classmethod
    def load(cls, path: Path | None = None) -> PlaybookPlanner:
        """Load a playbook file (default: the packaged playbook for the seed example)."""
        if path is None:
            text = resources.files("planner_worker").joinpath("default_playbook.yaml").read_text()
            source = (
                "a playbook file of your own (start from a copy of the built-in one: "
                "`plangate playbook show > playbook.yaml`) and set PLANGATE_PLAYBOOK_FILE to it"
            )
        else:
            try:
                text = read_text(path)
            except OSError as exc:
                raise ConfigError(f"cannot read playbook file {path}: {exc.strerror}") from exc
            source = str(path)
        try:
            parsed = PlaybookFile.model_validate(yaml.safe_load(text))
        except yaml.YAMLError as exc:
            raise ConfigError(f"playbook file {source} is not valid YAML: {exc}") from exc
        except ValidationError as exc:
            problem = describe(exc, PlaybookFile)
            raise ConfigError(f"playbook file {source} is invalid: {problem}") from exc
        except RecursionError:
            raise ConfigError(f"playbook file {source} is nested too deeply to read") from None
        return cls(parsed.playbooks, source)

    def draft(self, goal: GoalSubmitted, catalog: Catalog) -> Draft:
        """Return the plan of the first playbook whose pattern matches the goal."""
        for entry, pattern in zip(self.entries, self._patterns, strict=True):
            match = pattern.search(goal.text)
            if match is None:
                continue
            groups = {k: _defang(v) for k, v in match.groupdict().items() if v is not None}
            steps = tuple(
                step.model_copy(
                    update={"args": _numbers(step, _fill(dict(step.args), groups), catalog)}
                )
                for step in entry.steps
            )
            return Draft(_fill(entry.summary, groups), steps, f"playbook:{entry.name}")
        raise PlanningFailed(
            [
                f"no playbook matched the goal; add a pattern for it to {self.source} (a "
                "planner worker reads it at its start: restart it then); or configure an LLM "
                "planner (PLANGATE_PLANNER=openai)"
            ]
        )


def load_playbook_planner(settings: Settings) -> PlaybookPlanner:
    """Return the playbook planner configured by `PLANGATE_PLAYBOOK_FILE` (or the default)."""
    return PlaybookPlanner.load(settings.playbook_file)
