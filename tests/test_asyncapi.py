"""The AsyncAPI document: every channel and message, valid for the official `@asyncapi/parser`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from plangate.bus.topology import STAGE_BINDINGS
from schemas import ROUTES, GoalSubmitted
from schemas.asyncapi import asyncapi_document
from schemas.routing import STAGES, Stage
from tests.servers import IN_CI

VALIDATOR = Path(__file__).resolve().parent.parent / "tools" / "asyncapi-validate"


@pytest.fixture(scope="session")
def asyncapi_validator() -> Path:
    """The validator folder with its npm packages installed (once, only when missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        message = "node and npm are needed to validate the AsyncAPI document"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    if not (VALIDATOR / "node_modules" / "@asyncapi" / "parser").is_dir():
        installed = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=VALIDATOR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert installed.returncode == 0, installed.stdout + installed.stderr
    return VALIDATOR


def write_document(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plangate", "schema", "asyncapi", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("PLANGATE_")},
    )


@pytest.mark.timeout(300)  # the first run in a fresh checkout installs the parser
@pytest.mark.parametrize("name", ["asyncapi.yaml", "asyncapi.json"])
def test_the_written_document_is_valid_asyncapi(
    tmp_path: Path, asyncapi_validator: Path, name: str
) -> None:
    """Given `plangate schema asyncapi FILE` (YAML or JSON),
    When the official parser reads the file,
    Then it exits 0 and reports no error.
    """
    path = tmp_path / name
    written = write_document(path)
    assert written.returncode == 0, written.stderr

    parsed = subprocess.run(
        ["node", str(asyncapi_validator / "validate.mjs"), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert parsed.returncode == 0, parsed.stdout + parsed.stderr
    assert "error:" not in parsed.stdout, parsed.stdout
    assert "valid AsyncAPI 3.0.0" in parsed.stdout


def test_the_validator_refuses_a_broken_document(tmp_path: Path, asyncapi_validator: Path) -> None:
    document = asyncapi_document()
    document["operations"]["plannerReceivesGoalSubmitted"]["action"] = "listen"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(document))

    parsed = subprocess.run(
        ["node", str(asyncapi_validator / "validate.mjs"), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert parsed.returncode == 1
    assert "error:" in parsed.stdout
    assert "operations.plannerReceivesGoalSubmitted.action" in parsed.stdout


def test_every_message_type_has_a_channel_addressed_by_its_routing_key() -> None:
    document = asyncapi_document()

    addresses = {channel["address"] for channel in document["channels"].values()}

    assert addresses == {*ROUTES, "dead.{queue}"}
    assert {m["name"] for m in document["components"]["messages"].values()} == {
        *ROUTES,
        "dead.letter",
    }
    for message in document["components"]["messages"].values():
        assert message["contentType"] == "application/json"
        headers = message["headers"]["$ref"].rsplit("/", 1)[1]
        assert document["components"]["schemas"][headers]["type"] == "object"
    headers_of = document["components"]["messages"]
    assert headers_of["goalSubmitted"]["headers"]["$ref"].endswith("/PublisherHeaders")
    assert headers_of["deadLetter"]["headers"]["$ref"].endswith("/DeadLetterHeaders")
    assert headers_of["planProposed"]["headers"]["$ref"].endswith("/Headers")


def addresses_of(document: dict[str, Any], party: str, action: str) -> set[str]:
    """The routing keys `party` (a stage, `person`, ...) sends or receives, by its operations."""
    verb = "Sends" if action == "send" else "Receives"
    channels = document["channels"]
    return {
        channels[operation["channel"]["$ref"].rsplit("/", 1)[1]]["address"]
        for key, operation in document["operations"].items()
        if key.startswith(f"{party}{verb}") and operation["action"] == action
    }


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_receives_exactly_what_its_queue_is_bound_to(stage: Stage) -> None:
    document = asyncapi_document()

    assert addresses_of(document, stage, "receive") == set(STAGE_BINDINGS[stage])


def test_previews_and_paused_runs_are_described_with_who_sends_and_receives_them() -> None:
    document = asyncapi_document()

    assert addresses_of(document, "gate", "send") >= {"plan.preview_requested"}
    assert addresses_of(document, "executor", "receive") >= {"plan.preview_requested"}
    assert addresses_of(document, "executor", "send") >= {"plan.previewed", "execution.paused"}
    paused = document["channels"]["executionPaused"]["description"]
    assert "Sent by executor; consumed by no stage (observers only)." in paused
    assert "Ends the goal." in document["channels"]["executionCompleted"]["description"]


def test_the_planner_receives_goals_and_sends_plans() -> None:
    operations = asyncapi_document()["operations"]

    receives = operations["plannerReceivesGoalSubmitted"]
    sends = operations["plannerSendsPlanProposed"]

    assert receives["action"] == "receive"
    assert receives["channel"] == {"$ref": "#/channels/goalSubmitted"}
    assert sends["action"] == "send"
    assert "plannerSendsPlanFailed" in operations


def payload_schema(document: dict[str, Any], ident: str) -> dict[str, Any]:
    """The message's payload as a standalone schema (its refs resolve in `components`)."""
    payload = document["components"]["messages"][ident]["payload"]
    return {**payload, "components": document["components"]}


def test_a_real_goal_matches_its_payload_schema_and_a_body_without_type_does_not() -> None:
    document = asyncapi_document()
    schema = payload_schema(document, "goalSubmitted")
    body = json.loads(GoalSubmitted(goal_id="g-1", text="count tickets").model_dump_json())

    jsonschema.Draft202012Validator(schema).validate(body)
    del body["type"]
    with pytest.raises(jsonschema.ValidationError, match="'type' is a required property"):
        jsonschema.Draft202012Validator(schema).validate(body)


def test_a_shared_model_pins_each_channel_s_type() -> None:
    document = asyncapi_document()
    schema = payload_schema(document, "planHeld")

    errors = list(jsonschema.Draft202012Validator(schema).iter_errors({"type": "plan.denied"}))

    assert any("'plan.held' was expected" in e.message for e in errors)


def test_the_yaml_and_json_files_hold_the_same_document(tmp_path: Path) -> None:
    assert write_document(tmp_path / "a.yaml").returncode == 0
    assert write_document(tmp_path / "a.json").returncode == 0

    from_yaml = yaml.safe_load((tmp_path / "a.yaml").read_text())
    from_json = json.loads((tmp_path / "a.json").read_text())

    assert from_yaml == from_json == json.loads(json.dumps(asyncapi_document()))
