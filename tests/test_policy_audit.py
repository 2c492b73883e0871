"""What the audit log records of the policy's decisions: the approval it issued."""

from __future__ import annotations

from pathlib import Path

from plangate.config import Settings
from plangate.signing_keys import load_signer
from plangate.store.audit_entries import export as export_entries
from tests.conftest import SEED_GOAL
from tests.support import running_pipeline, stored_approval, write_yaml

APPROVE_ALL = {"rules": [{"name": "all", "match": "true", "action": "approve", "reason": "tests"}]}


def test_a_policy_approval_s_entry_names_the_approval_the_run_used_and_its_signing_key(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a policy that approves every plan,
    When the seed goal runs to completion and its audit log is exported,
    Then the gate's `goal.approved` entry names the approval id the run's `goal.running` entry
    used and the key that signed it, so that an auditor links the decision to what ran. It
    named neither: only a reviewer's approval had an entry (`approval.signed`) that did.
    """
    policy = write_yaml(tmp_path / "policy.yaml", APPROVE_ALL)
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        assert pipeline.wait_for(goal_id, timeout=10).status == "completed"

        entries = list(export_entries(pipeline.store, goal_id=goal_id))
        [approved] = [entry["data"] for entry in entries if entry["kind"] == "goal.approved"]
        [running] = [entry["data"] for entry in entries if entry["kind"] == "goal.running"]
        issued = stored_approval(pipeline.store, approved["plan_id"]).approval

    assert approved["decided_by"] == "policy"
    assert approved["approval_id"] == running["approval_id"]
    assert approved["key_id"] == load_signer(settings).key_id
    assert [signature.keyid for signature in issued.signatures] == [approved["key_id"]]
