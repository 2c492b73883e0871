"""A token pasted into a person's comment is recorded as `[redacted]`, whoever's it is.

Only the deciding reviewer's own token was known as a secret: alice rejecting with bob's token
in her comment left it whole in the goal's reason (which the intake token reads), the decision's
span, serve's log line and the audit log, and an intake-token holder had a reviewer's token.
Any reviewer's token (known by the hash the reviewers file keeps) and the intake tokens, current
and previous, are taken out of the comment before it is recorded, logged or traced.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr

from plangate.client import Client
from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.logs import JsonFormatter
from plangate.reviewers import Reviewers, add_reviewer
from plangate.server import create_app
from plangate.span_redaction import redacted_span
from tests.conftest import SEED_GOAL
from tests.fleet import serving_app
from tests.span_recording import recording_spans
from tests.support import HELD, audit_entries, eventually, only_plan, running_pipeline, write_yaml

REPO = str(Path(__file__).resolve().parents[1])
INTAKE = "intake-now-" + "n" * 32
INTAKE_BEFORE = "intake-before-" + "b" * 32


class Team:
    """A reviewers file with alice (finance) and bob (no roles), and their tokens."""

    def __init__(self, folder: Path) -> None:
        self.file = folder / "reviewers.yaml"
        self.alice = add_reviewer(self.file, "alice", ["finance"])
        self.bob = add_reviewer(self.file, "bob", [])


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recording_spans() as exporter:
        yield exporter


@pytest.fixture
def finance_pipeline(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    """A pipeline whose policy holds the seed goal's plan for the role finance."""
    rule = {
        "name": "hold-pages-for-finance",
        "match": 'plan.steps.exists(s, s.tool == "notify_oncall")',
        "action": "hold",
        "reason": "paging costs money; finance decides",
        "requires_role": "finance",
    }
    policy = write_yaml(tmp_path / "policy.yaml", {"mode": "enforce", "rules": [rule]})
    with running_pipeline(settings, policy_file=policy) as pipeline:
        yield pipeline


def held(pipeline: Pipeline) -> tuple[str, str]:
    """Submit the seed goal and wait until its plan is held; return the goal's and plan's ids."""
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD)
    return goal_id, only_plan(pipeline.store, goal_id).plan_id


def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `plangate ARGS` in a process of its own, with no PLANGATE_* settings but `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PLANGATE_", "OTEL_"))}
    return subprocess.run(
        [sys.executable, "-m", "plangate", *args],
        capture_output=True,
        text=True,
        env=clean | {"PYTHONPATH": REPO, "XDG_DATA_HOME": str(tmp_path / "xdg"), **env},
        timeout=60,
        check=False,
    )


@contextmanager
def json_lines(logger_name: str) -> Iterator[io.StringIO]:
    """Collect `logger_name`'s info lines as serve writes them (JSON)."""
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def read(lines: io.StringIO, containing: str) -> list[dict[str, object]]:
    return [json.loads(text) for text in lines.getvalue().splitlines() if containing in text]


def decision_spans(spans: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == "review decision"]


@contextmanager
def team_serving(settings: Settings, team: Team) -> Iterator[str]:
    """Run serve with alice and bob as reviewers and both intake tokens; yield its URL."""
    served = settings.model_copy(
        update={
            "reviewers_file": team.file,
            "intake_token": SecretStr(INTAKE),
            "intake_token_previous": SecretStr(INTAKE_BEFORE),
        }
    )
    with (
        Client(served) as client,
        serving_app(
            create_app(served, client=client, reviewers=Reviewers.from_file(team.file))
        ) as url,
    ):
        yield url


def everything_recorded(pipeline: Pipeline, goal_id: str) -> str:
    """The goal's audit entries as the export has them (kind, actor, data), as one text."""
    entries = audit_entries(pipeline.store, goal_id)
    return json.dumps([[entry.kind, entry.actor, entry.data] for entry in entries])


def test_a_reviewer_or_intake_token_in_a_rejection_through_serve_is_recorded_redacted(
    pipeline: Pipeline, settings: Settings, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    """Given the seed goal held, and serve with alice and bob and two intake tokens,
    When alice rejects it with bob's token and both intake tokens in her comment,
    Then the goal read with the intake token, the decision's span, serve's log line of the move
    and the audit log all say the comment with `[redacted]` for each, and no token.
    """
    team = Team(tmp_path)
    goal_id, plan_id = held(pipeline)
    comment = f"see {team.bob}, also {INTAKE} and {INTAKE_BEFORE}."
    with (
        team_serving(settings, team) as url,
        json_lines("plangate.store.goals") as lines,
    ):
        alice = {"Authorization": f"Bearer {team.alice}"}
        review = f"{url}/api/v1/reviews/{plan_id}"
        shown = httpx.get(review, headers=alice, timeout=30).json()
        body = {"comment": comment, "plan_hash": shown["plan_hash"]}
        rejected = httpx.post(f"{review}/reject", json=body, headers=alice, timeout=30)
        assert rejected.status_code == 200, rejected.text
        intake = {"Authorization": f"Bearer {INTAKE}"}
        goal = httpx.get(f"{url}/api/v1/goals/{goal_id}", headers=intake, timeout=30)
        [span] = eventually(lambda: decision_spans(spans), what="the review's span")
        [line] = eventually(lambda: read(lines, "held -> rejected"), what="the move's log line")

    said = "see [redacted], also [redacted] and [redacted]."
    assert goal.status_code == 200, goal.text
    assert said in goal.json()["reason"]
    assert (redacted_span(span).attributes or {})["plangate.decision.reason"] == said
    assert said in str(line["message"])
    recorded = everything_recorded(pipeline, goal_id)
    assert "see [redacted" in recorded  # the move's reason, redacted before it was audited
    for token in (team.bob, INTAKE, INTAKE_BEFORE):
        assert token not in goal.text + json.dumps(line) + recorded


def test_a_cancel_through_serve_keeps_its_reason_but_not_a_reviewers_token(
    pipeline: Pipeline, settings: Settings, tmp_path: Path
) -> None:
    """Given the seed goal held, and serve with alice and bob,
    When alice cancels it saying why, with bob's token pasted in,
    Then the cancel is done, and the goal's reason and its audit entry keep her words with
    `[redacted]` for the token.
    """
    team = Team(tmp_path)
    goal_id, _ = held(pipeline)
    with team_serving(settings, team) as url:
        alice = {"Authorization": f"Bearer {team.alice}"}
        said = {"reason": f"withdrawn; bob's token is {team.bob}"}
        cancelled = httpx.post(
            f"{url}/api/v1/goals/{goal_id}/cancel", json=said, headers=alice, timeout=30
        )
        goal = httpx.get(f"{url}/api/v1/goals/{goal_id}", headers=alice, timeout=30)

    assert cancelled.status_code == 200, cancelled.text
    assert goal.json()["status"] == "cancelled"
    assert "withdrawn; bob's token is [redacted]" in goal.json()["reason"]
    assert team.bob not in goal.text + everything_recorded(pipeline, goal_id)


def test_on_the_store_a_decision_and_a_refusal_record_no_other_reviewers_token(
    finance_pipeline: Pipeline, tmp_path: Path
) -> None:
    """Given a plan held for finance, and the CLI on the store with alice (finance) and bob,
    When bob's reject, refused for the role, quotes alice's token, and alice's reject quotes
    bob's (each process its own, as a team runs it),
    Then both are recorded, the refusal and the rejection, with `[redacted]` for the token,
    and `plangate status` shows no token.
    """
    team = Team(tmp_path / "team")
    goal_id, plan_id = held(finance_pipeline)
    env = {
        "PLANGATE_DATA_DIR": str(finance_pipeline.settings.data_dir),
        "PLANGATE_BROKER_URL": "memory://",
        "PLANGATE_REVIEWERS_FILE": str(team.file),
    }
    reject = ("review", "reject", plan_id, "--comment")

    bob = cli(
        tmp_path, *reject, f"alice said {team.alice}", PLANGATE_REVIEWER_TOKEN=team.bob, **env
    )
    alice = cli(tmp_path, *reject, f"see {team.bob}", PLANGATE_REVIEWER_TOKEN=team.alice, **env)
    status = cli(tmp_path, "status", goal_id, **env)

    assert bob.returncode == 2
    assert alice.returncode == 0, alice.stderr
    recorded = everything_recorded(finance_pipeline, goal_id)
    assert "alice said [redacted]" in recorded  # the refusal's comment
    assert "see [redacted" in recorded
    assert status.returncode == 0, status.stderr
    assert "see [redacted]" in status.stdout
    for token in (team.alice, team.bob):
        assert token not in recorded + status.stdout + alice.stdout + alice.stderr
