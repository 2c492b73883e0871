"""Secrets a remote party echoes are redacted where they arrive, and the fleet still runs the plan.

Run as a team runs it: planner, gate and executor are worker processes on Redis, each with a
data folder of its own; the gate's public key reaches the executor only through the folder
`deploy/` shares; the model's API key is in the planner's environment alone, a tool's token in
the executor's alone. A redacted plan must still hash, be signed by the gate and be verified by
the executor; no secret may reach the store, a tool or a log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from plangate.store import GoalRow, StepRunRow, open_store
from tests.fleet import FAST_SWEEPS, Fleet
from tests.openai_stub import OpenAIStub, plan_reply, running_stub
from tests.test_forged_approvals import poll

pytestmark = [pytest.mark.redis, pytest.mark.timeout(150)]
API_KEY = "sk-fleet-redaction-5e8c2b7a41"
TOOL_TOKEN = "status-token-9d3f6a0c2e71"
APPROVE_ALL = Path(__file__).parent.parent / "bench" / "approve_all.yaml"


@pytest.fixture
def model() -> Iterator[OpenAIStub]:
    with running_stub() as server:
        yield server


def test_a_plan_and_an_output_quoting_secrets_run_redacted_across_the_fleet(
    tmp_path: Path, redis_url: str, model: OpenAIStub
) -> None:
    """Given a model server that writes the planner's API key into a plan (its summary and a
    write's argument), and a read whose output quotes a token of the executor's environment,
    When the goal runs through planner, gate and executor processes sharing only the gate's
    public key,
    Then the goal completes: the redacted plan was hashed, signed and verified across processes;
    the write received `[redacted]`; the stored output has `[redacted]`; and neither secret is
    in the database, the notifications written or any worker's log.
    """
    steps = [
        {"id": "status", "tool": "service_status"},
        {"id": "tell", "tool": "notify_oncall", "args": {"message": f"key={API_KEY}"}},
    ]
    model.script(plan_reply(steps, summary=f"Authorization: Bearer {API_KEY}"))
    keys = tmp_path / "keys"
    keys.mkdir()
    fleet = Fleet(
        broker_url=redis_url, database_url=f"sqlite:///{tmp_path / 'plangate.db'}", folder=tmp_path
    )
    fleet.extra_env.update(
        FAST_SWEEPS, PLANGATE_TOOLS="plangate.demo.tools,tests.echo_secret_tools"
    )
    assert fleet.plangate("db", "upgrade").returncode == 0
    fleet.start(
        "executor",
        PLANGATE_DATA_DIR=str(tmp_path / "executor-data"),
        PLANGATE_TRUSTED_KEYS_DIR=str(keys),
        STATUS_SERVICE_TOKEN=TOOL_TOKEN,
    )
    fleet.start(
        "planner",
        PLANGATE_DATA_DIR=str(tmp_path / "planner-data"),
        PLANGATE_PLANNER="openai",
        PLANGATE_PLANNER_MAX_RETRIES="0",
        OPENAI_BASE_URL=model.base_url,
        OPENAI_API_KEY=API_KEY,
    )
    fleet.start(
        "gate",
        PLANGATE_DATA_DIR=str(tmp_path / "gate-data"),
        PLANGATE_TRUSTED_KEYS_DIR=str(keys),
        PLANGATE_POLICY_FILE=str(APPROVE_ALL),
    )
    store = open_store(fleet.database_url)
    try:
        submitted = fleet.plangate("submit", "check the status service and tell on-call", "--json")
        assert submitted.returncode == 0, submitted.stderr
        goal_id = json.loads(submitted.stdout)["goal_id"]

        def status() -> str:
            with store.session() as session:
                return session.get_one(GoalRow, goal_id).status

        poll(lambda: status() in {"completed", "failed", "plan_failed"}, "the goal", fleet, 90)
        assert status() == "completed", fleet.logs()
        with store.session() as session:
            outputs = {
                row.step_id: row.output
                for row in session.query(StepRunRow).filter_by(goal_id=goal_id)
            }
    finally:
        store.close()
        fleet.stop_all()

    assert outputs["status"] == {"health": "ok", "called_with": "[redacted]"}
    notifications = (tmp_path / "notifications.jsonl").read_text()
    assert "key=[redacted]" in notifications
    for secret in (API_KEY, TOOL_TOKEN):
        # The database with its write-ahead log, and every log whole (`fleet.logs()` cuts).
        for path in [*tmp_path.glob("plangate.db*"), *tmp_path.glob("*.log")]:
            assert secret.encode() not in path.read_bytes(), f"{secret} in {path.name}"
        assert secret not in notifications
