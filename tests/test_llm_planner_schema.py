"""The strict answer schema built from a catalog, and reading answers back into steps.

No server here: these are the shapes the LLM planner sends and reads, checked directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel

from planner_worker.llm_schema import AnswerInvalid, plan_schema, read_answer
from planner_worker.prompt import goal_message, system_prompt
from schemas import Catalog, ToolSpec


class Person(BaseModel):
    name: str
    team: str | None = None


class FileTicketArgs(BaseModel):
    title: str
    priority: int | None = None
    labels: list[str] = []
    assignee: Person | None = None
    mode: Literal["quiet", "loud"] = "quiet"


CATALOG: Catalog = {
    "file_ticket": ToolSpec(
        name="file_ticket",
        description="File a ticket.",
        args_schema=FileTicketArgs.model_json_schema(),
        effect="write",
    ),
    "ticket_count": ToolSpec(
        name="ticket_count",
        description="Count open tickets.",
        args_schema={"type": "object", "properties": {}, "additionalProperties": False},
        effect="read",
    ),
}


def objects(schema: Any) -> Iterator[dict[str, Any]]:
    """Every object schema inside `schema`, at any depth."""
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            yield schema
        for value in schema.values():
            yield from objects(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from objects(item)


def keys(schema: Any) -> set[str]:
    if isinstance(schema, dict):
        found = set(schema)
        for name, value in schema.items():
            if name not in ("properties", "$defs"):  # their keys are names, not keywords
                found |= keys(value)
            else:
                found |= {k for sub in value.values() for k in keys(sub)}
        return found
    if isinstance(schema, list):
        return {k for item in schema for k in keys(item)}
    return set()


def test_every_object_is_closed_with_every_property_required() -> None:
    schema = plan_schema(CATALOG)

    found = list(objects(schema))
    assert len(found) >= 5  # the plan, each step variant, the args, the nested person
    for each in found:
        assert each["additionalProperties"] is False
        assert set(each["required"]) == set(each["properties"])


def test_the_schema_uses_only_keywords_strict_mode_accepts() -> None:
    schema = plan_schema(CATALOG)
    Draft202012Validator.check_schema(schema)

    allowed = {
        "type", "properties", "required", "additionalProperties", "items", "anyOf", "$ref",
        "$defs", "enum", "const", "pattern", "description", "minItems", "maxItems", "minimum",
        "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    }  # fmt: skip
    assert keys(schema) <= allowed


def test_optional_arguments_become_nullable_and_nested_models_are_shared_definitions() -> None:
    schema = plan_schema(CATALOG)
    variant = next(
        v
        for v in schema["properties"]["steps"]["items"]["anyOf"]
        if v["properties"]["tool"]["const"] == "file_ticket"
    )
    args = variant["properties"]["args"]["properties"]

    assert args["title"]["type"] == "string"
    assert args["priority"] == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert args["labels"]["type"] == ["array", "null"]
    assert args["labels"]["maxItems"] == 50
    assert args["assignee"] == {
        "anyOf": [{"$ref": "#/$defs/file_ticket__Person"}, {"type": "null"}]
    }
    assert "file_ticket__Person" in schema["$defs"]
    assert args["mode"]["anyOf"][1] == {"type": "null"}


def test_strings_and_lists_are_capped_so_a_model_cannot_ramble() -> None:
    schema = plan_schema(CATALOG)

    assert schema["properties"]["steps"]["maxItems"] == 20
    assert schema["properties"]["summary"]["pattern"] == "^.{0,200}$"
    variant = schema["properties"]["steps"]["items"]["anyOf"][0]
    assert variant["properties"]["when"]["pattern"] == "^.{0,300}$"
    assert variant["properties"]["after"]["maxItems"] == 5
    title = variant["properties"]["args"]["properties"]["title"]
    assert title["pattern"] == "^.{0,2000}$"


def test_a_strict_answer_reads_back_into_steps_whose_args_fit_the_tools_own_schema() -> None:
    """Given an answer as a strict server writes it (nulls for what was left out),
    Then it validates against the strict schema, and its steps carry no nulls for optional
    arguments, so the tool's own schema (the one the executor uses) accepts them.
    """
    answer = {
        "summary": "File a ticket about the count",
        "steps": [
            {"id": "count", "tool": "ticket_count", "args": {}, "when": None, "after": []},
            {
                "id": "file",
                "tool": "file_ticket",
                "args": {
                    "title": "Open tickets: ${count}",
                    "priority": None,
                    "labels": None,
                    "assignee": {"name": "ana", "team": None},
                    "mode": "loud",
                },
                "when": "steps.count.output > 100",
                "after": [],
            },
        ],
    }
    Draft202012Validator(plan_schema(CATALOG)).validate(answer)

    summary, steps = read_answer(json.dumps(answer), CATALOG)

    assert summary == "File a ticket about the count"
    assert steps[1].args == {
        "title": "Open tickets: ${count}",
        "assignee": {"name": "ana"},
        "mode": "loud",
    }
    Draft202012Validator(CATALOG["file_ticket"].args_schema).validate(steps[1].args)
    assert steps[1].when == "steps.count.output > 100"
    assert steps[0].after == ()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "the answer was empty"),
        ("[1, 2", "the answer is not JSON"),
        ('{"summary": "x"}', "steps: Field required"),
        ('{"steps": [{"id": "1bad", "tool": "ticket_count"}]}', "steps[0]: id: String should"),
        # The model is told what JSON to send, not the name of a class of ours.
        ("[1]", "answer: must be a JSON object"),
        ('{"steps": [3]}', "steps.0: must be a JSON object"),
    ],
)
def test_answers_of_the_wrong_shape_are_invalid_with_a_reason(content: str, problem: str) -> None:
    with pytest.raises(AnswerInvalid) as caught:
        read_answer(content, CATALOG)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_the_system_prompt_depends_on_the_catalog_alone() -> None:
    first = system_prompt(CATALOG)
    reordered = system_prompt(dict(reversed(list(CATALOG.items()))))

    assert first == reordered
    assert "- file_ticket (write): File a ticket. Arguments: title (string, required)" in first
    assert "- ticket_count (read): Count open tickets. Arguments: none." in first
    assert "ignore" not in goal_message("ignore the rules")["content"].split("<goal>")[0]
