"""JSON Schema export: the contract as other languages read it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from schemas import (
    ROUTES,
    ExecutionPaused,
    GoalSubmitted,
    Plan,
    PlanProposed,
    Step,
    encode_message,
    plan_hash,
)
from schemas.export import EXPORTED, export_json_schemas

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"


@pytest.fixture
def exported(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Every exported schema, written to a fresh directory and read back, by name."""
    paths = export_json_schemas(tmp_path / "schemas")
    return {path.name.removesuffix(".schema.json"): json.loads(path.read_text()) for path in paths}


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema)


def sample_plan() -> Plan:
    return Plan(
        plan_id="plan-1",
        goal_id="goal-1",
        revision=1,
        steps=(Step(id="count", tool="ticket_count"),),
    )


def test_a_schema_file_is_written_for_every_exported_model(tmp_path: Path) -> None:
    paths = export_json_schemas(tmp_path / "out")

    assert sorted(path.name for path in paths) == sorted(f"{n}.schema.json" for n in EXPORTED)
    assert all(path.parent == tmp_path / "out" and path.is_file() for path in paths)


def test_every_routed_message_type_has_its_own_schema(
    exported: dict[str, dict[str, Any]],
) -> None:
    assert set(ROUTES) <= set(exported)
    assert {"plan.preview_requested", "plan.previewed", "execution.paused"} <= set(exported)


def test_a_model_shared_by_several_types_allows_only_its_file_s_type(
    exported: dict[str, dict[str, Any]],
) -> None:
    """plan.held, .denied, .rejected and .expired share a model; each file takes one type."""
    errors = [
        e.message for e in validator(exported["plan.held"]).iter_errors({"type": "plan.denied"})
    ]

    assert "'plan.held' was expected" in errors
    assert exported["plan.decided"]["properties"]["type"]["enum"] == [
        "plan.held",
        "plan.denied",
        "plan.rejected",
        "plan.expired",
    ]


def test_a_paused_run_validates_against_its_exported_schema(
    exported: dict[str, dict[str, Any]],
) -> None:
    paused = ExecutionPaused(goal_id="goal-1", plan_id="plan-1", reason="did it send?")

    validator(exported["execution.paused"]).validate(json.loads(encode_message(paused)))


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_each_exported_file_is_a_valid_draft_2020_12_schema(
    exported: dict[str, dict[str, Any]], name: str
) -> None:
    schema = exported[name]

    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == DRAFT_2020_12
    assert schema["$id"].endswith(f"/{name}.schema.json")


def test_goal_submitted_requires_its_text_and_goal_id(exported: dict[str, dict[str, Any]]) -> None:
    required = exported["goal.submitted"]["required"]

    assert {"text", "goal_id"} <= set(required)


def test_messages_require_the_fields_the_decoder_insists_on(
    exported: dict[str, dict[str, Any]],
) -> None:
    """`decode_message` refuses a body without schema_version or type, so the schema must too."""
    goal = json.loads(encode_message(GoalSubmitted(goal_id="goal-1", text="check")))
    del goal["schema_version"]

    errors = [e.message for e in validator(exported["goal.submitted"]).iter_errors(goal)]

    assert errors == ["'schema_version' is a required property"]


def test_an_encoded_message_validates_against_its_exported_schema(
    exported: dict[str, dict[str, Any]],
) -> None:
    """Given a plan.proposed as the Python side sends it, Then another language may check it."""
    plan = sample_plan()
    message = PlanProposed(goal_id="goal-1", plan=plan, plan_hash=plan_hash(plan), planner="x")

    validator(exported["plan.proposed"]).validate(json.loads(encode_message(message)))


def test_export_is_deterministic(tmp_path: Path) -> None:
    first = [path.read_bytes() for path in export_json_schemas(tmp_path / "a")]
    second = [path.read_bytes() for path in export_json_schemas(tmp_path / "b")]

    assert first == second
