"""What the audit log records of the policy's decisions: its text, the approval it issued."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import text

from approval_gate.policy import Policy
from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.signing_keys import load_signer
from plangate.store import Store, audit, audit_policies
from plangate.store.audit_entries import export as export_entries
from plangate.store.audit_policies import PolicyText, text_digest
from tests.conftest import SEED_GOAL
from tests.support import plangate_in, running_pipeline, stored_approval, write_yaml

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

        entries = list(export_entries(pipeline.store, goal_ids=[goal_id]))
        [approved] = [entry["data"] for entry in entries if entry["kind"] == "goal.approved"]
        [running] = [entry["data"] for entry in entries if entry["kind"] == "goal.running"]
        issued = stored_approval(pipeline.store, approved["plan_id"]).approval

    assert approved["decided_by"] == "policy"
    assert approved["approval_id"] == running["approval_id"]
    assert approved["key_id"] == load_signer(settings).key_id
    assert [signature.keyid for signature in issued.signatures] == [approved["key_id"]]


POLICY_TEXT = """\
# v2: reviewed by compliance 2026-12
mode: enforce
rules:
  - name: all
    match: 'true'
    action: approve
    reason: every plan runs unattended in this test
"""


def adopted_entries(pipeline: Pipeline) -> list[dict[str, Any]]:
    return [entry for entry in export_entries(pipeline.store) if entry["kind"] == "policy.adopted"]


def test_the_text_of_the_policy_decided_under_is_recorded_once_and_shown_by_its_version(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a policy file the gate decides two goals under,
    When the audit log is exported and `plangate policy show VERSION` is asked,
    Then the export holds the file's text once, in an entry of no goal that verifies with the
    rest, and `policy show` prints it (with -o, byte for byte: `policy check` confirms the
    version). Decisions recorded only the version: with the file gone, what a rule said under
    it could not be recovered.
    """
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_TEXT, encoding="utf-8")
    version = Policy.load(policy).version
    with running_pipeline(settings, policy_file=policy) as pipeline:
        for amount in (1, 2):
            goal_id = pipeline.submit(f"{SEED_GOAL} ({amount})").goal_id
            assert pipeline.wait_for(goal_id, timeout=10).status == "completed"
        [adopted] = adopted_entries(pipeline)
        report = audit.verify(pipeline.store)
    policy.unlink()  # months later: nobody kept the file

    assert adopted["goal_id"] is None
    assert adopted["data"]["version"] == version
    assert adopted["data"]["text"] == POLICY_TEXT
    assert report.ok, report.problem
    shown = plangate_in(settings.data_dir, "policy", "show", version)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == POLICY_TEXT
    assert version in shown.stderr
    kept = tmp_path / "recovered.yaml"
    written = plangate_in(
        settings.data_dir, "policy", "show", version.removeprefix("sha256:"), "-o", str(kept)
    )
    assert written.returncode == 0, written.stderr
    checked = plangate_in(settings.data_dir, "policy", "check", str(kept))
    assert f"version {version}" in checked.stdout
    # Its first 8 digits, as other ids are given short (it was refused as unknown).
    short = plangate_in(settings.data_dir, "policy", "show", version.removeprefix("sha256:")[:8])
    assert (short.returncode, short.stdout) == (0, POLICY_TEXT), short.stderr


def test_a_version_no_gate_decided_under_is_refused_naming_the_versions_recorded(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a store whose gate decided under one policy,
    When `plangate policy show` is asked for another version,
    Then it exits 2 saying no text is recorded under it, and names the version that is.
    """
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_TEXT, encoding="utf-8")
    with running_pipeline(settings, policy_file=policy) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        assert pipeline.wait_for(goal_id, timeout=10).status == "completed"

    shown = plangate_in(settings.data_dir, "policy", "show", "sha256:0123456789abcdef")

    assert shown.returncode == 2
    assert shown.stdout == ""
    assert "no policy text is recorded under version 'sha256:0123456789abcdef'" in shown.stderr
    assert Policy.load(policy).version in shown.stderr


def test_each_version_is_recorded_once_per_store_across_gate_restarts(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a gate that decided under policy A, restarted under B, then under A again,
    When each decides a goal,
    Then the log holds A's text and B's, once each, in the order first decided under: a gate
    looks in the store before it records, not only in its own memory.
    """
    first = tmp_path / "a.yaml"
    first.write_text(POLICY_TEXT, encoding="utf-8")
    second = tmp_path / "b.yaml"
    second.write_text(POLICY_TEXT.replace("v2", "v3"), encoding="utf-8")
    for path in (first, second, first):
        with running_pipeline(settings, policy_file=path) as pipeline:
            goal_id = pipeline.submit(SEED_GOAL).goal_id
            assert pipeline.wait_for(goal_id, timeout=10).status == "completed"
            adopted = adopted_entries(pipeline)

    assert [entry["data"]["text"] for entry in adopted] == [
        POLICY_TEXT,
        POLICY_TEXT.replace("v2", "v3"),
    ]
    assert [entry["data"]["version"] for entry in adopted] == [
        Policy.load(first).version,
        Policy.load(second).version,
    ]


def test_a_policy_text_rewritten_in_the_store_breaks_verification(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a gate that decided under a policy whose text the log recorded,
    When someone with the database rewrites that text (a rule made to say what it did not),
    Then `audit verify` names the entry of the system chain that no longer holds (exit 1),
    and `policy show` says the text was changed after it was recorded and exits 1, writing
    nothing with -o (it blamed redaction, though the text holds none, and exited 0).
    """
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_TEXT, encoding="utf-8")
    with running_pipeline(settings, policy_file=policy, tampers=True) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        assert pipeline.wait_for(goal_id, timeout=10).status == "completed"
        [adopted] = adopted_entries(pipeline)
        forged = {**adopted["data"], "text": POLICY_TEXT.replace("'true'", "'false'")}
        with pipeline.store.engine.begin() as connection:
            connection.execute(
                text("UPDATE audit_log SET data = :data WHERE seq = :seq"),
                {"data": json.dumps(forged), "seq": adopted["seq"]},
            )

    verified = plangate_in(settings.data_dir, "audit", "verify")
    shown = plangate_in(settings.data_dir, "policy", "show", adopted["data"]["version"])
    kept = tmp_path / "recovered.yaml"
    written = plangate_in(
        settings.data_dir, "policy", "show", adopted["data"]["version"], "-o", str(kept)
    )

    assert verified.returncode == 1, verified.stdout
    assert f"audit log broken at entry {adopted['seq']}" in verified.stderr
    assert "(entry 1 of the system chain, policy.adopted)" in verified.stderr
    said = " ".join(shown.stderr.split())
    assert "so it was changed after it was recorded: treat the audit log as tampered" in said
    assert "redacted" not in said
    # Exit 1: a script keeps nothing from it (it wrote the forged text with -o and exit 0).
    assert (shown.returncode, written.returncode) == (1, 1)
    assert not kept.exists()


def test_a_version_recorded_twice_is_one_entry_and_read_back_as_written(store: Store) -> None:
    """Given a store (SQLite, and PostgreSQL where one can be started),
    When two gates record the same policy's text, and then another text under the same
    version (16 hex digits can collide),
    Then the log holds the first text once and the other too, each read back as written.
    """
    policy = Policy.from_text(POLICY_TEXT, source="policy.yaml")
    first = PolicyText(policy.version, policy.digest, policy.text, policy.source)
    other = PolicyText(policy.version, text_digest("mode: shadow\n"), "mode: shadow\n", "b.yaml")

    for attempt in (first, first, other):
        with store.session() as session:
            audit_policies.record(session, attempt)

    recorded = audit_policies.recorded(store)
    assert [(found.version, found.text, found.source) for found in recorded] == [
        (policy.version, POLICY_TEXT, "policy.yaml"),
        (policy.version, "mode: shadow\n", "b.yaml"),
    ]
    assert all(found.as_written for found in recorded)
    assert audit.verify(store).ok
