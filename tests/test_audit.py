"""The audit log is hash-chained: a real run verifies, and any edit or removal shows."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY
from sqlalchemy import func, select, text

from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.signing import Signer, TrustedKeys
from plangate.signing_keys import load_or_create_signer
from plangate.stages import build_sealing
from plangate.store import audit, audit_checkpoints
from plangate.store.audit_entries import export as export_entries
from plangate.store.models import AuditCheckpointRow
from tests.conftest import SEED_GOAL
from tests.support import (
    HELD,
    audit_entries,
    eventually,
    only_plan,
    plangate_in,
    plans_of,
    write_private_key,
)

# Rows and entries are changed behind plangate's back: its records check would rightly fail.
pytestmark = pytest.mark.tampers

# submitted, proposed, held, previewed, approved (by alice), signed (by the gate), running,
# three steps, completed: the seed goal's chain
SEED_RUN_ENTRIES = 11
# and the text of the policy the gate decided under, recorded before its first decision (in
# the system chain, after the goal's first two entries)
LOGGED_ENTRIES = SEED_RUN_ENTRIES + 1


@pytest.fixture
def completed_run(pipeline: Pipeline) -> str:
    """The seed goal, approved by alice and completed; returns its goal id."""
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=5)
    plan_id = only_plan(pipeline.store, goal_id).plan_id
    eventually(lambda: pipeline.review.get(plan_id).preview, what="the hold's dry run")
    pipeline.approve(plan_id, "alice")
    assert pipeline.wait_for(goal_id, timeout=5).status == "completed"
    return goal_id


def run_sql(pipeline: Pipeline, statement: str, **params: object) -> None:
    """Change the database behind plangate's back, as someone with file access could."""
    with pipeline.store.engine.begin() as connection:
        connection.execute(text(statement), params)


def remove_goal_rows(pipeline: Pipeline, goal_id: str) -> None:
    """Delete every row about a goal outside the audit log, as a thorough tamperer would."""
    by_plan = "plan_id IN (SELECT plan_id FROM plans WHERE goal_id = :goal)"
    for table in ("reviewer_approvals", "approval_uses"):
        run_sql(pipeline, f"DELETE FROM {table} WHERE {by_plan}", goal=goal_id)
    for table in ("step_runs", "plan_previews", "approvals", "holds", "decisions", "plans"):
        run_sql(pipeline, f"DELETE FROM {table} WHERE goal_id = :goal", goal=goal_id)
    run_sql(pipeline, "DELETE FROM goals WHERE id = :goal", goal=goal_id)


def seq_of(pipeline: Pipeline, goal_id: str, kind: str) -> int:
    return next(e.seq for e in audit_entries(pipeline.store, goal_id) if e.kind == kind)


def plangate_cli(
    data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed `plangate` command against one data folder."""
    script = Path(sys.executable).with_name("plangate")
    fallback = [sys.executable, "-c", "from plangate.cli.main import app; app()"]
    command = [str(script)] if script.exists() else fallback
    environ = {**os.environ, "PLANGATE_DATA_DIR": str(data_dir), **(env or {})}
    environ.pop("PLANGATE_DATABASE_URL", None)
    return subprocess.run(
        [*command, *args], env=environ, capture_output=True, text=True, timeout=30, check=False
    )


def test_audit_log_of_a_real_run_verifies(pipeline: Pipeline, completed_run: str) -> None:
    """Given the seed goal run to completion,
    When the audit chain is verified,
    Then every link holds, over all of the run's entries and the policy's text, in two chains.
    """
    report = audit.verify(pipeline.store)

    assert report.ok, report.problem
    assert (report.entries, report.chains) == (LOGGED_ENTRIES, 2)
    assert report.broken_at is None


def test_edited_audit_entry_is_reported_by_its_seq(pipeline: Pipeline, completed_run: str) -> None:
    """Given the seed goal's audit log,
    When the approval entry's data is rewritten in SQL to name mallory as the approver, not alice,
    Then verification fails at exactly that entry, saying its content does not match its hash.
    """
    approved = seq_of(pipeline, completed_run, "goal.approved")
    entry = next(e for e in audit_entries(pipeline.store, completed_run) if e.seq == approved)
    forged = {**entry.data, "decided_by": "mallory"}

    run_sql(
        pipeline,
        "UPDATE audit_log SET data = :data WHERE seq = :seq",
        data=json.dumps(forged),
        seq=approved,
    )

    report = audit.verify(pipeline.store)
    assert not report.ok
    assert report.broken_at == approved
    assert report.problem == "its content does not match its hash"


def test_deleted_last_audit_entry_is_detected(pipeline: Pipeline, completed_run: str) -> None:
    """Given the seed goal's audit log, ending with goal.completed,
    When that last entry is deleted in SQL,
    Then verification fails at the goal's (new) last entry, saying entries after it were
    removed from the goal's chain.
    """
    last = seq_of(pipeline, completed_run, "goal.completed")
    assert last == LOGGED_ENTRIES

    run_sql(pipeline, "DELETE FROM audit_log WHERE seq = :seq", seq=last)

    report = audit.verify(pipeline.store)
    assert not report.ok
    assert report.entries == LOGGED_ENTRIES - 1
    assert report.broken_at == last - 1
    assert report.problem == (
        f"goal {completed_run}'s chain ends here, at entry {SEED_RUN_ENTRIES - 1}, but its "
        f"entry {SEED_RUN_ENTRIES} was recorded (by its head, or sealed by a checkpoint): "
        "entries were removed from it"
    )


def test_deleted_middle_audit_entry_is_detected(pipeline: Pipeline, completed_run: str) -> None:
    """Given the seed goal's audit log,
    When the goal.held entry is deleted in SQL (hiding that policy held the plan),
    Then verification fails at the entry that took its place.
    """
    [held] = [e for e in audit_entries(pipeline.store, completed_run) if e.kind == "goal.held"]

    run_sql(pipeline, "DELETE FROM audit_log WHERE seq = :seq", seq=held.seq)

    report = audit.verify(pipeline.store)
    assert not report.ok
    assert report.broken_at == held.seq + 1
    assert report.problem == f"entry {held.chain_seq} of goal {completed_run}'s chain is missing"


def test_cli_audit_verify_exits_0_on_an_intact_log(pipeline: Pipeline, completed_run: str) -> None:
    """Given the seed goal's intact audit log in a data folder,
    When `plangate audit verify` runs with PLANGATE_DATA_DIR pointing at it,
    Then it exits 0 and says how many entries it checked.
    """
    result = plangate_cli(pipeline.settings.data_dir, "audit", "verify")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"audit log intact: {LOGGED_ENTRIES} entries in 2 chains"


def test_cli_audit_verify_exits_1_naming_the_broken_entry(
    pipeline: Pipeline, completed_run: str
) -> None:
    """Given the seed goal's audit log with one entry's data rewritten in SQL,
    When `plangate audit verify` runs against it,
    Then it exits 1, names the broken entry and what is wrong with it, and says what to do
    next (it stopped at where).
    """
    approved = seq_of(pipeline, completed_run, "goal.approved")
    run_sql(
        pipeline,
        "UPDATE audit_log SET data = :data WHERE seq = :seq",
        data=json.dumps({"decided_by": "mallory"}),
        seq=approved,
    )

    result = plangate_cli(pipeline.settings.data_dir, "audit", "verify")

    assert result.returncode == 1, result.stdout
    assert f"audit log broken at entry {approved}" in result.stderr
    assert "its content does not match its hash" in result.stderr
    said = " ".join(result.stderr.split())
    assert "what to do: `plangate audit verify --against FILE` with your last signed" in said


def test_audit_export_writes_every_entry_with_its_hashes_as_json_lines(
    pipeline: Pipeline, completed_run: str
) -> None:
    """Given a completed run, `plangate audit export` writes one JSON object per entry, in log
    order, each carrying its place in its chain (the goal's, or the system chain for the
    policy's text) and the hash of the entry before it."""
    exported = plangate_cli(pipeline.settings.data_dir, "audit", "export")

    assert exported.returncode == 0, exported.stderr
    entries = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [e["seq"] for e in entries] == list(range(1, LOGGED_ENTRIES + 1))
    goal = [e for e in entries if e["chain"] == completed_run]
    [adopted] = [e for e in entries if e["chain"] == "system"]
    assert (adopted["kind"], adopted["chain_seq"], adopted["goal_id"]) == (
        "policy.adopted",
        1,
        None,
    )
    assert [e["chain_seq"] for e in goal] == list(range(1, SEED_RUN_ENTRIES + 1))
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(goal))
    assert goal[0]["kind"] == "goal.submitted"


def test_audit_export_filters_by_goal_and_time_and_writes_csv(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    other = pipeline.submit("make me a sandwich").goal_id
    pipeline.wait_for(other, timeout=5)
    target = tmp_path / "audit.csv"

    only_ours = plangate_cli(
        pipeline.settings.data_dir,
        "audit",
        "export",
        "--goal",
        completed_run,
        "--format",
        "csv",
        "--output",
        str(target),
    )
    future = plangate_cli(pipeline.settings.data_dir, "audit", "export", "--since", "2999-01-01")

    assert only_ours.returncode == 0, only_ours.stderr
    rows = target.read_text().splitlines()
    assert rows[0] == "seq,chain,chain_seq,at,goal_id,kind,actor,data,prev_hash,hash"
    assert len(rows) == 1 + SEED_RUN_ENTRIES
    assert all(completed_run in row for row in rows[1:])
    assert future.returncode == 0
    assert future.stdout == ""


def checkpoint(pipeline: Pipeline, signer: Signer | None = None) -> None:
    """Seal the chains as the gate does: signed with its key."""
    signer = signer or load_or_create_signer(pipeline.settings)
    with pipeline.store.session() as session:
        assert audit_checkpoints.write(session, signer).checkpoint is not None


def test_a_goal_removed_whole_is_found_by_the_checkpoint_that_sealed_it(
    pipeline: Pipeline, completed_run: str
) -> None:
    """Given a completed run sealed by a checkpoint,
    When every entry of the goal and its chain's head are deleted in SQL (no link breaks: the
    goal's chain is simply gone),
    Then verification fails, saying every entry of the goal's chain was removed.
    """
    checkpoint(pipeline)
    assert audit.verify(pipeline.store).ok

    run_sql(pipeline, "DELETE FROM audit_log WHERE goal_id = :goal", goal=completed_run)
    run_sql(pipeline, "DELETE FROM audit_chains WHERE chain = :goal", goal=completed_run)

    report = audit.verify(pipeline.store)
    assert not report.ok
    assert report.problem == f"every entry of goal {completed_run}'s chain was removed"


def test_a_checkpoint_seals_only_what_moved_and_verifies_across_goals(
    pipeline: Pipeline, completed_run: str
) -> None:
    """Given a checkpoint over one run, a second goal run after it, and a second checkpoint,
    Then the second seals only the second goal's chain, both replay, and the log verifies over
    both chains; with nothing new, no third checkpoint is written.
    """
    checkpoint(pipeline)
    other = pipeline.submit("make me a sandwich").goal_id
    pipeline.wait_for(other, timeout=5)
    checkpoint(pipeline)

    with pipeline.store.session() as session:
        assert audit_checkpoints.write(session).checkpoint is None
        sealed = session.execute(text("SELECT checkpoint_id, chain FROM audit_checkpoint_heads"))
        assert sorted(sealed) == [(1, completed_run), (1, "system"), (2, other)]
    report = audit.verify(pipeline.store)
    assert report.ok, report.problem
    assert (report.chains, report.checkpoints) == (3, 2)


def test_a_rewritten_checkpoint_or_a_forged_signature_is_reported(
    pipeline: Pipeline, completed_run: str
) -> None:
    """Given a checkpoint signed with the gate's key,
    When its signature is checked with the gate's public key, it holds; when its digest of the
    heads is rewritten in SQL, verification names the checkpoint.
    """
    signer = load_or_create_signer(pipeline.settings)
    checkpoint(pipeline, signer)
    keys = TrustedKeys([signer.public_key])
    assert audit_checkpoints.sealed_heads(pipeline.store, keys).problem is None
    stranger = TrustedKeys([Ed25519PrivateKey.generate().public_key()])
    # Named as what it may be: another key given by mistake, or the checkpoint signed again.
    said = str(audit_checkpoints.sealed_heads(pipeline.store, stranger).unchecked)
    assert f"checkpoint 1 is signed by {signer.key_id}, not by a key trusted here" in said
    assert "approval" not in said

    run_sql(pipeline, "UPDATE audit_checkpoints SET heads_digest = :d", d="0" * 64)

    report = audit.verify(pipeline.store)
    assert not report.ok
    assert report.problem == "checkpoint 1's content does not match its hash"


def test_audit_export_of_a_goal_takes_its_short_id_and_refuses_one_that_names_nothing(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """An empty export of a goal read as "it has no entries"; an id that names none is exit 2."""
    data, target = pipeline.settings.data_dir, tmp_path / "none.jsonl"

    short = plangate_cli(data, "audit", "export", "--goal", completed_run[:8])
    unknown = plangate_cli(data, "audit", "export", "--goal", "nosuch", "--output", str(target))

    assert short.returncode == 0, short.stderr
    assert len(short.stdout.splitlines()) == SEED_RUN_ENTRIES
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("error: no audit entry of goal 'nosuch'; check the id")
    assert not target.exists()


def test_audit_export_into_a_folder_names_the_folder_given(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """`--output` naming a folder is one line naming that path, exit 2 (it named the export's
    hidden partial file, which the user never gave), and the folder is left as it was."""
    folder = tmp_path / "exports"
    folder.mkdir()

    written = plangate_cli(pipeline.settings.data_dir, "audit", "export", "--output", str(folder))

    assert written.returncode == 2
    assert written.stderr.startswith(f"error: cannot use {folder}: it is a folder"), written.stderr
    assert ".partial" not in written.stderr
    assert list(folder.iterdir()) == []


def test_audit_export_into_a_folder_that_does_not_exist_names_the_path_given(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """`--output` in a folder not made yet is one line naming the path given and its missing
    folder, exit 2 (it named `.a.jsonl.partial`, which the user never gave)."""
    target = tmp_path / "no" / "such" / "a.jsonl"

    written = plangate_cli(pipeline.settings.data_dir, "audit", "export", "--output", str(target))

    assert written.returncode == 2
    said = f"error: cannot use {target}: its folder does not exist"
    assert written.stderr.startswith(said), written.stderr
    assert ".partial" not in written.stderr


def test_a_goal_removed_whole_with_its_checkpoints_is_found_against_an_earlier_export(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """Given a completed run, sealed by a checkpoint and exported with --sign (the file kept
    away from the database),
    When the goal's entries, its chain's head and every checkpoint are deleted in SQL, and
    every row of the goal with them,
    Then the store alone still verifies (nothing left in it remembers the goal), but
    `plangate audit verify --against FILE` exits 1 naming the first entry the store lost.
    """
    checkpoint(pipeline)
    data, export = pipeline.settings.data_dir, tmp_path / "audit.jsonl"
    assert plangate_cli(data, "audit", "export", "--sign", "-o", str(export)).returncode == 0
    intact = plangate_cli(data, "audit", "verify", "--against", str(export))
    assert intact.returncode == 0, intact.stderr
    assert f"the store holds all {LOGGED_ENTRIES} entries of audit.jsonl" in intact.stdout
    # The export's own check said first, with its signer, as docs/how-to/operate.md shows.
    assert intact.stdout.startswith(f"export intact: {LOGGED_ENTRIES} entries, signed by ed25519:")

    run_sql(pipeline, "DELETE FROM audit_log WHERE goal_id = :goal", goal=completed_run)
    run_sql(pipeline, "DELETE FROM audit_chains WHERE chain = :goal", goal=completed_run)
    run_sql(pipeline, "DELETE FROM audit_checkpoint_heads")
    run_sql(pipeline, "DELETE FROM audit_checkpoints")
    remove_goal_rows(pipeline, completed_run)

    alone = plangate_cli(data, "audit", "verify")
    against = plangate_cli(data, "audit", "verify", "--against", str(export))

    assert alone.returncode == 0, alone.stderr  # the gap --against closes
    assert against.returncode == 1, against.stdout + against.stderr
    assert f"of goal {completed_run} (goal.submitted" in against.stderr
    assert "is no longer in the store as it was" in against.stderr


def test_verify_against_an_export_that_is_not_the_one_signed_checks_nothing_further(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """A file changed after it was signed is refused before the store is compared with it."""
    data, export = pipeline.settings.data_dir, tmp_path / "audit.jsonl"
    assert plangate_cli(data, "audit", "export", "--sign", "-o", str(export)).returncode == 0
    export.write_text(export.read_text().replace("alice", "mallory"))

    against = plangate_cli(data, "audit", "verify", "--against", str(export))

    assert against.returncode == 1
    assert "export not verified" in against.stderr
    assert "audit log intact" not in against.stdout


def test_verify_without_the_gates_public_key_says_what_to_set_not_that_the_log_broke(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """Given a log sealed by a signed checkpoint,
    When `audit verify` runs where no trusted key is (an operator's folder), Then it exits 2
    saying the signatures cannot be checked and what to set (it said "audit log broken at:
    checkpoint 1's signature does not hold: approval refused: signed by unknown key", exit 1);
    with the key's folder set, the log is intact.
    """
    checkpoint(pipeline)
    empty = tmp_path / "no-keys"
    empty.mkdir()
    env = {**os.environ, "PLANGATE_DATA_DIR": str(pipeline.settings.data_dir)}
    env.pop("PLANGATE_DATABASE_URL", None)

    def verify(keys: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "plangate", "audit", "verify"],
            env=env | {"PLANGATE_TRUSTED_KEYS_DIR": str(keys)},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    keyless = verify(empty)
    assert keyless.returncode == 2, keyless.stdout + keyless.stderr
    assert "the chains hold, but the 1 checkpoints' signatures cannot be checked" in keyless.stderr
    assert "set PLANGATE_TRUSTED_KEYS_DIR to the folder that holds it" in keyless.stderr
    trusted = verify(pipeline.settings.data_dir / "keys" / "trusted")
    assert trusted.returncode == 0, trusted.stderr
    assert "audit log intact" in trusted.stdout


def test_an_export_to_a_file_says_how_many_entries_and_since_takes_an_age(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """Written to a file, the export said nothing (it looked as if nothing happened); and
    `--since 2h`, as `goals list` takes it, was refused as no datetime."""
    target = tmp_path / "audit.jsonl"

    written = plangate_cli(pipeline.settings.data_dir, "audit", "export", "-o", str(target))
    recent = plangate_cli(pipeline.settings.data_dir, "audit", "export", "--since", "2h")
    wrong = plangate_cli(pipeline.settings.data_dir, "audit", "export", "--since", "yesterday")

    lines = target.read_text().splitlines()
    assert written.returncode == 0, written.stderr
    assert written.stderr.strip() == f"{len(lines)} entries written to {target}"
    assert recent.returncode == 0, recent.stderr
    assert recent.stdout.splitlines() == lines
    assert wrong.returncode == 2
    assert wrong.stderr.startswith("error: since 'yesterday' is neither an age (30m, 2h, 7d, 1w)")


@pytest.mark.parametrize(
    "edited", ["not json{", '{"a": NaN}', "[" * 100_000, '{"a": 1, "a": 2}'], ids=len
)
def test_an_entry_edited_into_no_json_is_named_by_verify_and_stops_export_in_one_line(
    pipeline: Pipeline, completed_run: str, edited: str
) -> None:
    """Given an entry whose stored data was overwritten by hand with text that is no JSON
    (or JSON plangate never writes: NaN, a repeated key, nesting a parser cannot follow),
    When the log is verified and exported from the command line,
    Then verify names that entry (exit 1), and export stops with one line naming it (exit 1):
    both printed a 67-line traceback from the JSON column's reader.
    """
    planned = seq_of(pipeline, completed_run, "goal.proposed")
    run_sql(
        pipeline, "UPDATE audit_log SET data = :data WHERE seq = :seq", data=edited, seq=planned
    )

    verified = plangate_cli(pipeline.settings.data_dir, "audit", "verify")
    exported = plangate_cli(pipeline.settings.data_dir, "audit", "export")

    assert verified.returncode == 1
    # Named where a person finds it too: its place in the goal's chain, and its kind.
    placed = f"(entry 2 of goal {completed_run}'s chain, goal.proposed)"
    said = " ".join(verified.stderr.split())
    assert f"broken at entry {planned} {placed}: its content is not valid JSON" in said
    assert exported.returncode == 1
    assert exported.stderr.splitlines() == [
        f"error: audit entry {planned}'s content is not valid JSON: the log was altered; "
        "`plangate audit verify` names the first broken link"
    ]


def test_a_store_missing_its_audit_table_is_one_line_and_exit_2(
    pipeline: Pipeline, completed_run: str
) -> None:
    run_sql(pipeline, "DROP TABLE audit_log")

    verified = plangate_cli(pipeline.settings.data_dir, "audit", "verify")

    assert verified.returncode == 2
    [line] = verified.stderr.splitlines()
    assert line.startswith("error: the store failed: no such table: audit_log;")
    assert "restore it from a backup" in line


def test_verify_of_a_log_no_checkpoint_seals_warns_that_removals_would_not_show(
    pipeline: Pipeline, completed_run: str
) -> None:
    """Given an intact log whose checkpoints are gone (none written yet, or all deleted),
    When it is verified,
    Then it passes (exit 0) but warns that a chain's removed end or a goal removed whole would
    not show, and how to check for them; it said only "intact".
    """
    run_sql(pipeline, "DELETE FROM audit_checkpoints")

    result = plangate_cli(pipeline.settings.data_dir, "audit", "verify")

    assert result.returncode == 0, result.stderr
    assert "no checkpoint seals these chains" in " ".join(result.stderr.split())
    assert "--against FILE" in result.stderr


def test_a_checkpoint_stripped_of_its_signature_does_not_seal_a_rewritten_log(
    pipeline: Pipeline, completed_run: str
) -> None:
    """Given a run sealed by a signed checkpoint,
    When an entry is rewritten and every hash after it recomputed (chain, head, checkpoint),
    with the checkpoint's signature set to NULL (which needs no key),
    Then `plangate audit verify` exits 1 naming the unsigned checkpoint; it said "intact", as
    an unsigned checkpoint's signature was not checked at all.
    """
    checkpoint(pipeline)
    run_sql(pipeline, "UPDATE audit_checkpoints SET signature = NULL")

    keys = TrustedKeys([load_or_create_signer(pipeline.settings).public_key])
    report = audit.verify(pipeline.store, keys=keys)
    verified = plangate_cli(pipeline.settings.data_dir, "audit", "verify")

    assert report.problem == "checkpoint 1 is not signed, as every checkpoint plangate writes is"
    assert verified.returncode == 1, verified.stderr
    assert "checkpoint 1 is not signed" in verified.stderr


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE audit_checkpoints SET signature = 'not json'",
        "UPDATE audit_chains SET seq = 'abc'",
    ],
    ids=["signature-not-json", "text-in-a-number"],
)
def test_a_row_holding_what_plangate_never_writes_is_a_broken_log_not_a_traceback(
    pipeline: Pipeline, completed_run: str, edit: str
) -> None:
    """Given a sealed run whose checkpoint's signature, or a chain's head, is edited in SQL to
    a value of another type,
    Then `plangate audit verify` exits 1 saying a row holds what plangate never writes; it
    printed a traceback (JSONDecodeError, TypeError).
    """
    checkpoint(pipeline)
    run_sql(pipeline, edit)

    verified = plangate_cli(pipeline.settings.data_dir, "audit", "verify")

    assert verified.returncode == 1, verified.stderr
    assert "audit log broken: a row holds what plangate never writes" in verified.stderr
    assert "Traceback" not in verified.stderr


def _plan_rewritten_with_its_hash(pipeline: Pipeline, goal_id: str) -> None:
    """Rewrite the plan's summary and store the hash of the new body beside it."""
    from plangate.store import PlanRow
    from schemas import Plan, plan_hash

    with pipeline.store.session() as session:
        plan = session.query(PlanRow).filter_by(goal_id=goal_id).one()
        body = {**plan.body, "summary": "Page nobody"}
        new_hash = plan_hash(Plan.model_validate(body))
    run_sql(
        pipeline,
        "UPDATE plans SET body = :body, plan_hash = :hash WHERE goal_id = :goal",
        body=json.dumps(body),
        hash=new_hash,
        goal=goal_id,
    )


# Rewrites that are not one SQL statement: the plan's body with its hash recomputed, and
# every row of the goal deleted (its log kept).
PLAN_AND_HASH, GOAL_ROWS = "plan and its hash", "goal rows"
ROWS_REWRITTEN = {
    "decider": (
        "UPDATE decisions SET decided_by = 'mallory' WHERE stage = 'human'",
        "decision to approve by 'mallory'",
    ),
    "action": (
        "UPDATE decisions SET action = 'reject' WHERE stage = 'human'",
        "a decision to reject by 'alice'",
    ),
    "approver": ("UPDATE reviewer_approvals SET reviewer = 'mallory'", "approval by 'mallory'"),
    "output": (
        """UPDATE step_runs SET output = '{"pages": 99}' WHERE step_id = 'count'""",
        "stored output is not the one",
    ),
    "status": ("UPDATE goals SET status = 'rejected'", "shows status 'rejected'"),
    "text": ("UPDATE goals SET text = 'Check nothing'", "text or metadata other than"),
    "plan body": (
        """UPDATE plans SET body = json_set(body, '$.summary', 'Page nobody')""",
        "does not hash to its plan hash",
    ),
    "plan and its hash": (PLAN_AND_HASH, "records no such plan with this hash"),
    # Times `status` shows (decided_at, a step's duration): backdated, they told another story.
    "decision time": (
        "UPDATE decisions SET created_at = '2026-01-01 00:00:00.000000' WHERE stage = 'human'",
        "decision made at 2026-01-01T00:00:00",
    ),
    "step end": (
        "UPDATE step_runs SET finished_at = '2026-01-01 00:00:00.000000' WHERE step_id = 'count'",
        "shows it ended at 2026-01-01T00:00:00",
    ),
}


@pytest.mark.parametrize(("statement", "said"), ROWS_REWRITTEN.values(), ids=ROWS_REWRITTEN)
def test_a_row_the_views_show_rewritten_outside_plangate_breaks_verification(
    pipeline: Pipeline, completed_run: str, statement: str, said: str
) -> None:
    """Given a completed run, approved by alice,
    When a row that `status`, `goals list` or the review shows is rewritten in SQL (who
    decided, who approved, a step's output, the goal's status or text, the plan's body, or
    the body with its hash recomputed),
    Then `plangate audit verify` exits 1 saying what disagrees with the log. The log held, so
    it said "intact" while `status` showed mallory's decision, a refund that never ran or a
    rejected goal as completed.
    """
    _rewrite(pipeline, completed_run, statement)

    assert_records_broken(pipeline, said)


def test_the_newest_checkpoint_deleted_is_said_as_entries_no_checkpoint_seals(
    pipeline: Pipeline, completed_run: str
) -> None:
    """Given a run sealed by checkpoint 1, a second run, and checkpoint 2 sealing both,
    When checkpoint 2 is deleted (nothing after it names it, so no link breaks),
    Then `audit verify` still holds, but warns that the second run's entries were written after
    the newest checkpoint and none seals them: it said nothing, and the tail of the second run
    could then be removed unseen.
    """
    checkpoint(pipeline)
    second = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(second, HELD, timeout=5)
    checkpoint(pipeline)
    run_sql(pipeline, "DELETE FROM audit_checkpoint_heads WHERE checkpoint_id = 2")
    run_sql(pipeline, "DELETE FROM audit_checkpoints WHERE id = 2")

    interval = {"PLANGATE_AUDIT_CHECKPOINT_SECONDS": "0.01"}  # the gate's, long past
    verified = plangate_cli(pipeline.settings.data_dir, "audit", "verify", env=interval)

    assert verified.returncode == 0, verified.stderr
    warning = " ".join(verified.stderr.split())
    assert "entries were written after the newest checkpoint" in warning
    assert "newer checkpoints were deleted" in warning


def delete_checkpoints_from(pipeline: Pipeline, first: int) -> None:
    """Delete checkpoint `first` and every newer one, as someone with SQL access could."""
    run_sql(pipeline, "DELETE FROM audit_checkpoint_heads WHERE checkpoint_id >= :id", id=first)
    run_sql(pipeline, "DELETE FROM audit_checkpoints WHERE id >= :id", id=first)


def test_a_sealer_seals_nothing_over_checkpoints_deleted_since_it_saw_them(
    pipeline: Pipeline, completed_run: str
) -> None:
    """Given two runs, each sealed by `plangate audit checkpoint` run in the gate's folder,
    When someone deletes checkpoint 2 (which unseals the second run: its entries could then be
    rewritten, their hashes recomputed, no key needed) and the sealer runs again,
    Then it seals nothing and exits 1 naming the missing checkpoint, and `audit verify` in that
    folder fails as well: the sealer sealed whatever was there with its own key, and verify
    said intact. Once a person has looked, --accept-missing seals again.
    """
    data_dir = pipeline.settings.data_dir
    assert plangate_cli(data_dir, "audit", "checkpoint").returncode == 0
    second = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(second, HELD, timeout=5)
    assert plangate_cli(data_dir, "audit", "checkpoint").returncode == 0
    delete_checkpoints_from(pipeline, 2)

    sealed = plangate_cli(data_dir, "audit", "checkpoint")
    verified = plangate_cli(data_dir, "audit", "verify")
    accepted = plangate_cli(data_dir, "audit", "checkpoint", "--accept-missing")

    said = " ".join(sealed.stderr.split())
    assert sealed.returncode == 1, sealed.stdout + sealed.stderr
    assert "audit checkpoint 2, which this data folder saw last in this store" in said
    assert "is gone from the store" in said
    assert "--accept-missing" in said
    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert "audit checkpoint 2" in verified.stderr
    assert "intact" not in verified.stdout
    assert accepted.returncode == 0, accepted.stderr
    assert "sealing afresh" in accepted.stderr


def test_a_folder_that_sealed_another_store_raises_no_alarm_over_this_one(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """Given a data folder whose embedded `plangate run` sealed its own SQLite file
    (checkpoint 1 of that store remembered), and the team's store sealed by its gate,
    When `audit verify` runs with that folder against the team's store, and then against its
    own file after that file's checkpoint was deleted,
    Then the team's store is intact: its checkpoint 1 is not the one this folder saw. (It
    said "broken ... seal again with --accept-missing", a false tamper alarm that taught
    people to silence the real one.) The folder's own store is still caught.
    """
    checkpoint(pipeline)
    folder = tmp_path / "ops-host"
    ran = plangate_cli(folder, "run", "how many tickets are open", "--yes")
    assert ran.returncode == 0, ran.stderr
    team = {"PLANGATE_DATABASE_URL": pipeline.settings.resolved_database_url()}
    gate_key = tmp_path / "gate.pub"
    public = load_or_create_signer(pipeline.settings).public_key
    pem, spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    gate_key.write_bytes(public.public_bytes(pem, spki))

    on_team_store = plangate_in(folder, "audit", "verify", "--key", str(gate_key), **team)
    run_sql_at(folder / "plangate.db", "DELETE FROM audit_checkpoint_heads")
    run_sql_at(folder / "plangate.db", "DELETE FROM audit_checkpoints")
    on_own_store = plangate_cli(folder, "audit", "verify")

    assert on_team_store.returncode == 0, on_team_store.stdout + on_team_store.stderr
    assert "audit log intact" in on_team_store.stdout
    assert on_own_store.returncode == 1, on_own_store.stdout + on_own_store.stderr
    assert "is gone from the store" in " ".join(on_own_store.stderr.split())


def test_a_memory_guards_its_store_under_another_spelling_of_its_url(
    pipeline: Pipeline, completed_run: str
) -> None:
    """Given a gate's folder that sealed its store (checkpoint 1 remembered under its URL),
    When checkpoint 1 is deleted and `audit verify` runs with the store's URL spelled another
    way (a host alias, a rotated user, another driver name: here a path through `..`),
    Then it still fails: a memory kept under the URL as written alone was forgotten by any
    change of settings, and the check was off without a word.
    """
    data_dir = pipeline.settings.data_dir
    assert plangate_cli(data_dir, "audit", "checkpoint").returncode == 0
    delete_checkpoints_from(pipeline, 1)
    database = Path(pipeline.settings.resolved_database_url().removeprefix("sqlite:///"))
    spelled = f"sqlite:///{database.parent}/../{database.parent.name}/{database.name}"

    verified = plangate_in(data_dir, "audit", "verify", PLANGATE_DATABASE_URL=spelled)

    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert "audit checkpoint 1" in verified.stderr


def test_a_memory_written_before_memories_named_their_store_still_guards(
    pipeline: Pipeline, completed_run: str
) -> None:
    """Given a gate's folder whose memory of checkpoint 1 was written by an older plangate
    (one file, naming no store), when checkpoint 1 is deleted, then `audit verify` in that
    folder still fails: an upgrade opens no window."""
    checkpoint(pipeline)
    with pipeline.store.reading() as session:
        newest = session.execute(select(AuditCheckpointRow.id, AuditCheckpointRow.hash)).one()
    older = pipeline.settings.data_dir / "audit-checkpoint.json"
    older.write_text(json.dumps({"id": newest.id, "hash": newest.hash}))
    delete_checkpoints_from(pipeline, 1)

    verified = plangate_cli(pipeline.settings.data_dir, "audit", "verify")

    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert "audit checkpoint 1" in verified.stderr


def run_sql_at(database: Path, statement: str) -> None:
    """Change a SQLite file behind plangate's back."""
    with sqlite3.connect(database) as connection:
        connection.execute(statement)


def test_a_gate_sweep_stops_sealing_and_says_why_when_a_checkpoint_it_saw_is_gone(
    pipeline: Pipeline, completed_run: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The gate's own sweep: it writes checkpoint 1 and remembers it; deleted, the next sweep
    writes none, logs why once, and says so on `plangate_audit_sealing_stopped`."""
    settings = pipeline.settings.model_copy(update={"audit_checkpoint_seconds": 0.0})
    seal = build_sealing(settings)
    seal(pipeline.store)
    delete_checkpoints_from(pipeline, 1)
    second = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(second, HELD, timeout=5)

    with caplog.at_level("ERROR"):
        seal(pipeline.store)

    with pipeline.store.reading() as session:
        assert session.scalar(select(func.count()).select_from(AuditCheckpointRow)) == 0
    [said] = [r.getMessage() for r in caplog.records if "audit checkpoint 1" in r.getMessage()]
    assert "is gone from the store" in said
    assert REGISTRY.get_sample_value("plangate_audit_sealing_stopped") == 1


ROWS_REMOVED_OR_RETOLD = {
    "person's decision removed": (
        "DELETE FROM decisions WHERE stage = 'human'",
        "records a decision to approve by 'alice', which the decisions table no longer shows",
    ),
    "step removed": (
        "DELETE FROM step_runs WHERE step_id = 'notify'",
        "step notify of plan",
    ),
    "step's tool": (
        "UPDATE step_runs SET tool = 'ticket_count' WHERE step_id = 'notify'",
        "shows the tool 'ticket_count', but its audit log recorded 'notify_oncall'",
    ),
    "step's error": (
        "UPDATE step_runs SET error = 'the customer asked to stop' WHERE step_id = 'notify'",
        "shows an error other than the one its audit entry recorded",
    ),
    "goal's rows removed": (GOAL_ROWS, "its audit log records its submission, but its row is gone"),
    "step added": (
        "INSERT INTO step_runs (plan_id, step_id, goal_id, tool, status, output, attempt, "
        "started_at) "
        "SELECT plan_id, 'forged', goal_id, 'ticket_count', 'succeeded', '99999', 1, "
        "CURRENT_TIMESTAMP FROM plans",
        "shows 'succeeded', but its audit log records no end of it",
    ),
    "plan's author": (
        "UPDATE plans SET planner = 'edit:alice'",
        "shows 'edit:alice' as its author, but the audit log records a planner's",
    ),
    # `status` and the review page then said the plan was held by a rule that never held it.
    "policy's rule": (
        "UPDATE decisions SET rule = 'approve-read-only' WHERE stage = 'policy'",
        "shows the policy's decision with the rule 'approve-read-only', but its audit log "
        "recorded 'hold-writes'",
    ),
    "policy's reason": (
        "UPDATE decisions SET reason = 'a routine page' WHERE stage = 'policy'",
        "shows the policy's decision with the reason 'a routine page'",
    ),
}


@pytest.mark.parametrize(
    ("statement", "said"), ROWS_REMOVED_OR_RETOLD.values(), ids=ROWS_REMOVED_OR_RETOLD
)
def test_a_row_removed_or_retold_that_the_log_records_otherwise_breaks_verification(
    pipeline: Pipeline, completed_run: str, statement: str, said: str
) -> None:
    """Given a completed run, approved by alice,
    When the row of her decision, of a step or of the goal is deleted, or a step's tool or
    error, or the plan's author, is rewritten in SQL,
    Then `plangate audit verify` exits 1 naming it: each was checked only from the rows to the
    log, so `status` showed the plan as held by the policy, a write that ran as not run, or
    another tool, another error, an author who never wrote it, and verify said intact.
    """
    _rewrite(pipeline, completed_run, statement)

    assert_records_broken(pipeline, said)


def _rewrite(pipeline: Pipeline, goal_id: str, statement: str) -> None:
    """Run one SQL statement, or one of the rewrites no single statement makes."""
    if statement == PLAN_AND_HASH:
        _plan_rewritten_with_its_hash(pipeline, goal_id)
    elif statement == GOAL_ROWS:
        remove_goal_rows(pipeline, goal_id)
    else:
        run_sql(pipeline, statement)


def assert_records_broken(pipeline: Pipeline, said: str) -> None:
    """`plangate audit verify` exits 1 with "records broken", saying `said`."""
    verified = plangate_cli(pipeline.settings.data_dir, "audit", "verify")

    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert "records broken" in verified.stderr
    assert said in " ".join(verified.stderr.split())


def test_an_earlier_revision_deleted_outside_plangate_breaks_verification(
    pipeline: Pipeline,
) -> None:
    """Given the seed plan held and edited by alice (revision 2 held),
    When revision 1 and its rows are deleted in SQL (the planner's draft, which she changed),
    Then `plangate audit verify` exits 1 naming the plan whose row is gone: `status` and the
    review page showed an edit of nothing, and verify said intact.
    """
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, {"held"})
    first = only_plan(pipeline.store, goal_id)
    steps = [step.model_dump(mode="json", exclude_defaults=True) for step in first.steps]
    pipeline.edit(first.plan_id, "alice", steps, summary="checked by alice")
    eventually(
        lambda: (
            len(plans_of(pipeline.store, goal_id)) == 2
            and pipeline.wait_for(goal_id, {"held"}).status == "held"
        ),
        what="revision 2 held",
    )
    assert plangate_cli(pipeline.settings.data_dir, "audit", "verify").returncode == 0

    for table in (
        "reviewer_approvals",
        "approval_uses",
        "step_runs",
        "plan_previews",
        "approvals",
        "holds",
        "decisions",
        "plans",
    ):
        run_sql(pipeline, f"DELETE FROM {table} WHERE plan_id = :plan", plan=first.plan_id)

    assert_records_broken(
        pipeline,
        f"plan {first.plan_id} of goal {goal_id}: its audit log records it, but its row is gone",
    )


# What a reviewer, the review page and an auditor read beside who decided: verify said intact.
PEOPLES_ROWS_RETOLD = {
    "person's comment": (
        "UPDATE decisions SET reason = 'CFO verbally approved' WHERE stage = 'human'",
        "shows alice's decision with the reason 'CFO verbally approved', but its audit log "
        "recorded",
    ),
    "person's roles": (
        """UPDATE decisions SET roles = '["finance"]' WHERE stage = 'human'""",
        "shows alice's decision with the roles ['finance'], but its audit log recorded []",
    ),
    "hold's roles": (
        """UPDATE holds SET required_roles = '["finance"]'""",
        "is shown held with required_roles ['finance'], but its audit log recorded []",
    ),
    "hold's approvals": (
        "UPDATE holds SET approvals_required = 2",
        "is shown held with approvals_required 2, but its audit log recorded 1",
    ),
    "signed approval removed": (
        "DELETE FROM approvals",
        "is gone: who signed it can no longer be shown",
    ),
    "reviewer's approval removed": (
        "DELETE FROM reviewer_approvals",
        "its audit log records 'alice''s approval, counted when the gate signed it",
    ),
}


@pytest.mark.parametrize(
    ("statement", "said"), PEOPLES_ROWS_RETOLD.values(), ids=PEOPLES_ROWS_RETOLD
)
def test_a_persons_comment_roles_hold_or_approval_retold_in_sql_breaks_verification(
    pipeline: Pipeline, completed_run: str, statement: str, said: str
) -> None:
    """Given a completed run, held and approved by alice,
    When her comment or roles, what the hold asked, the signed approval it ran with or her
    counted approval is rewritten or deleted in SQL,
    Then `plangate audit verify` exits 1 naming it: an auditor found `status` showing a comment
    she never wrote ("CFO verbally approved") and verify saying intact.
    """
    run_sql(pipeline, statement)

    assert_records_broken(pipeline, said)


def test_checkpoints_signed_by_a_key_not_given_cannot_be_checked_exit_2_not_a_break(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """Given checkpoints signed by the gate's key, When verify is given only another key (a
    rotation's new one, the old one left out), Then it exits 2 saying which key signed them
    and what to give, as the export's check does: it said `broken` (exit 1), where operate.md
    promises exit 2 for a check that cannot be made here."""
    data_dir = pipeline.settings.data_dir
    assert plangate_cli(data_dir, "audit", "checkpoint").returncode == 0
    other = another_public_key(tmp_path / "new.pub")

    verified = plangate_cli(data_dir, "audit", "verify", "--key", str(other))

    said = " ".join(verified.stderr.split())
    assert verified.returncode == 2, verified.stdout + verified.stderr
    assert not said.startswith("audit log broken")
    assert "checkpoint 1 is signed by ed25519:" in said
    assert "give the gate's public key" in said


def test_a_checkpoint_gone_is_named_before_a_row_rewritten_since(
    pipeline: Pipeline, completed_run: str
) -> None:
    """Given checkpoint 1 remembered by the gate's folder, When it is deleted and a goal's
    text rewritten in SQL, Then verify names the missing checkpoint: it said `records broken:
    the audit log holds, but ...`, which the missing checkpoint shows to be untrue."""
    data_dir = pipeline.settings.data_dir
    assert plangate_cli(data_dir, "audit", "checkpoint").returncode == 0
    delete_checkpoints_from(pipeline, 1)
    run_sql(pipeline, "UPDATE goals SET text = 'x'")

    verified = plangate_cli(data_dir, "audit", "verify")

    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert "audit checkpoint 1" in verified.stderr
    assert "the audit log holds" not in verified.stderr


def test_sealing_with_the_folders_first_key_after_a_rotation_is_refused(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """Given the gate rotated to a new key (its newest checkpoint signed by it), When `audit
    checkpoint` or `audit export --sign` runs in its data folder without
    PLANGATE_SIGNING_KEY_FILE, Then each refuses (exit 2) naming the rotation and the setting:
    they signed with the old key the folder still held. With the setting they sign."""
    data_dir = pipeline.settings.data_dir
    load_or_create_signer(pipeline.settings)  # the folder's first key
    new_key = tmp_path / "rotated.pem"
    new = write_private_key(new_key)
    checkpoint(pipeline, Signer(new))
    second = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(second, HELD, timeout=5)
    rotated = {"PLANGATE_SIGNING_KEY_FILE": str(new_key)}
    export = tmp_path / "audit.jsonl"

    sealed = plangate_cli(data_dir, "audit", "checkpoint")
    exported = plangate_cli(data_dir, "audit", "export", "-o", str(export), "--sign")
    sealed_with_it = plangate_cli(data_dir, "audit", "checkpoint", env=rotated)

    for refused in (sealed, exported):
        said = " ".join(refused.stderr.split())
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "the gate's key was rotated" in said
        assert "PLANGATE_SIGNING_KEY_FILE" in said
    assert not export.exists()
    assert sealed_with_it.returncode == 0, sealed_with_it.stderr


def test_each_step_entry_says_what_it_was_called_with_and_a_write_its_key(
    pipeline: Pipeline, completed_run: str
) -> None:
    """An auditor asked with which amount a refund ran: the log held the plan's `${total}`,
    and the value only where the tool echoed it. Each step's entry now holds its arguments with
    the references filled in, and a write's idempotency key."""
    ended = {
        entry["data"]["step_id"]: entry["data"]
        for entry in export_entries(pipeline.store, goal_ids=[completed_run])
        if entry["kind"] == "step.succeeded"
    }

    message = ended["notify"]["args"]["message"]
    assert "${" not in message
    assert str(ended["count"]["output_sha256"]).startswith("sha256:")
    assert isinstance(ended["notify"]["idempotency_key"], str)
    assert ended["count"]["args"] == {}
    assert "idempotency_key" not in ended["count"]


def test_arguments_too_large_to_keep_are_named_by_their_digest() -> None:
    from plangate.step_calls import ARGS_KEPT, called_with

    said = called_with({"body": "x" * (ARGS_KEPT + 1)}, "k-1")

    assert "args" not in said
    assert said["args_sha256"]
    assert said["idempotency_key"] == "k-1"


def test_an_export_until_a_time_holds_only_the_entries_before_it_and_says_so_signed(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """A quarter's export: `--since` was the only bound, so everything after the quarter came
    with it. `--until` ends it, and a signed manifest says which part it holds."""
    data_dir = pipeline.settings.data_dir
    assert plangate_cli(data_dir, "audit", "checkpoint").returncode == 0
    target = tmp_path / "q.jsonl"

    none = plangate_cli(data_dir, "audit", "export", "--until", "2000-01-01")
    every = plangate_cli(data_dir, "audit", "export", "--until", "2999-01-01")
    whole = plangate_cli(data_dir, "audit", "export")
    signed = plangate_cli(
        data_dir, "audit", "export", "--until", "2999-01-01", "-o", str(target), "--sign"
    )
    verified = plangate_cli(data_dir, "audit", "verify", "--export", str(target))

    assert none.returncode == 0, none.stderr
    assert none.stdout == ""
    assert every.stdout == whole.stdout
    assert signed.returncode == 0, signed.stderr
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "until 2999-01-01" in verified.stdout + verified.stderr


@pytest.mark.parametrize(
    "args",
    [
        {"customer": 2**60},
        {"ratio": float("nan")},
        {"deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
    ],
    ids=["integer past 2**53", "NaN", "deeper than kept"],
)
def test_arguments_the_entrys_hash_cannot_hold_are_named_by_their_digest(
    args: dict[str, object],
) -> None:
    """A write fed a read's id of 2**60 had its end's entry refused by RFC 8785 (which the
    entry's hash uses): the step stayed `running`, then `unknown`, for every such plan."""
    from plangate.step_calls import called_with
    from plangate.store.audit_records import output_digest
    from schemas import canonical_json

    said = called_with(args, "k-1")

    assert "args" not in said
    assert said["args_sha256"] == output_digest(args)
    canonical_json(said)  # the entry holding it can be hashed


def test_a_hold_and_an_approval_whose_role_holds_a_secret_verify_redacted_as_recorded(
    settings: Settings, tmp_path: Path
) -> None:
    """The log keeps every text redacted of the secrets its writer knew, a role's name too:
    a role holding one was recorded `ops-[redacted]`, and the check of the hold compared it
    with the row's `ops-zqsecret77` as unequal, calling a clean run tampered with."""
    from plangate.redaction import register_secret
    from tests.support import running_pipeline, write_yaml

    register_secret("zqsecret77")
    role = "ops-zqsecret77"
    policy = write_yaml(
        tmp_path / "policy.yaml",
        {"rules": [{"name": "ops", "match": "true", "action": "hold", "reason": "r",
                    "requires_role": role}]},
    )  # fmt: skip
    with running_pipeline(settings, policy_file=policy) as pipeline:  # checks the records
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        plan_id = only_plan(pipeline.store, goal_id).plan_id
        pipeline.approve(plan_id, "alice", roles=frozenset({role}))
        assert pipeline.wait_for(goal_id, timeout=5).status == "completed"
        held = [e for e in audit_entries(pipeline.store, goal_id) if e.kind == "goal.held"]
        assert held[0].data["required_roles"] == ["ops-[redacted]"]


def test_a_text_holding_the_redaction_marker_as_written_is_no_hole_for_a_rewrite(
    pipeline: Pipeline,
) -> None:
    """A goal's text holding `[redacted]` as its submitter wrote it was stored so in the log,
    where the marker stands for any secret: a DBA rewrote the text around it at will ("pay
    250000 USD now to account 99-mallory"), and verify said intact. Written so, it is kept
    apart from a redaction; the untouched goal verifies (the fixture checks it)."""
    goal_id = pipeline.submit("pay [redacted] to the vendor").goal_id
    pipeline.wait_for(goal_id, timeout=5)
    assert plangate_cli(pipeline.settings.data_dir, "audit", "verify").returncode == 0

    run_sql(
        pipeline,
        "UPDATE goals SET text = 'pay 250000 USD now to account 99-mallory to the vendor' "
        "WHERE id = :g",
        g=goal_id,
    )

    assert_records_broken(pipeline, "shows a text or metadata other than its submission recorded")


def test_a_reviewers_comment_holding_a_secret_is_stored_and_shown_redacted(
    pipeline: Pipeline,
) -> None:
    """A reviewer pasted a secret serve knows into a rejection: the log and the goal's reason
    held it redacted, the decision's row held it as written, and `status` and the API served
    it back."""
    from plangate.client import Client
    from plangate.redaction import register_secret

    register_secret("zq-comment-secret-4711")
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=5)
    plan_id = only_plan(pipeline.store, goal_id).plan_id

    pipeline.reject(plan_id, "bob", "the key is zq-comment-secret-4711, oops")

    with Client(pipeline.settings) as client:
        decision = client.status(goal_id).decision
    assert decision is not None
    assert decision["reason"] == "the key is [redacted], oops"


def test_a_window_ending_before_it_starts_is_refused_not_signed_empty(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    data_dir = pipeline.settings.data_dir
    target = tmp_path / "inverted.jsonl"

    exported = plangate_cli(
        data_dir, "audit", "export", "--since", "2026-12-06T20:39:00Z",
        "--until", "2026-12-06T20:38:00Z", "-o", str(target), "--sign",
    )  # fmt: skip
    listed = plangate_cli(data_dir, "goals", "list", "--since", "1h", "--until", "2h")

    for refused in (exported, listed):
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "is not before until" in refused.stderr
    assert not target.exists()


def test_a_goals_reason_rewritten_names_the_reason_recorded(
    pipeline: Pipeline, completed_run: str
) -> None:
    """It read "shows status 'completed' (all fine), but its audit log last moved it to
    'completed'": the same status, and not a word of what was recorded."""
    run_sql(pipeline, "UPDATE goals SET status_reason = 'all fine'")

    assert_records_broken(pipeline, "shows status 'completed' (all fine), but its audit log last")
    verified = plangate_cli(pipeline.settings.data_dir, "audit", "verify")
    assert "moved it to 'completed' (" in verified.stderr


def test_a_counted_approvals_roles_or_an_edits_reason_retold_breaks_verification(
    settings: Settings, tmp_path: Path
) -> None:
    """An auditor changed the roles alice's counted approval (one of two) was shown with, and
    the reason of an edit's record: verify said intact, and the export alone could not tell
    which roles she held when it counted."""
    from tests.support import running_pipeline, write_yaml

    policy = write_yaml(
        tmp_path / "policy.yaml",
        {"rules": [{"name": "two", "match": "true", "action": "hold", "reason": "r",
                    "approvals": 2}]},
    )  # fmt: skip
    with running_pipeline(settings, policy_file=policy, tampers=True) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        first = only_plan(pipeline.store, goal_id)
        steps = [step.model_dump(mode="json", exclude_defaults=True) for step in first.steps]
        pipeline.edit(first.plan_id, "carol", steps, comment="checked the team")
        eventually(lambda: len(plans_of(pipeline.store, goal_id)) == 2, what="revision 2")
        pipeline.wait_for(goal_id, HELD, timeout=5)
        second = plans_of(pipeline.store, goal_id)[1].plan_id
        pipeline.approve(second, "alice", roles=frozenset({"finance"}))
        pipeline.approve(second, "bob")
        assert pipeline.wait_for(goal_id, timeout=5).status == "completed"
        counted = [
            e for e in audit_entries(pipeline.store, goal_id) if e.kind == "plan.approval_counted"
        ]
        assert counted[0].data["roles"] == ["finance"]
        assert plangate_cli(pipeline.settings.data_dir, "audit", "verify").returncode == 0

        run_sql(
            pipeline,
            """UPDATE reviewer_approvals SET roles = '["admin"]' WHERE reviewer = 'alice'""",
        )
        assert_records_broken(pipeline, "shows 'alice''s approval with the roles ['admin']")
        run_sql(
            pipeline,
            """UPDATE reviewer_approvals SET roles = '["finance"]' WHERE reviewer = 'alice'""",
        )
        run_sql(
            pipeline,
            "UPDATE decisions SET reason = 'edited into revision 2: a typo' "
            "WHERE plan_id = :p AND stage = 'human'",
            p=first.plan_id,
        )
        assert_records_broken(pipeline, "shows carol's decision with the reason")


def another_public_key(path: Path) -> Path:
    """Write a public key the gate never had (a rotation's new one) to `path`."""
    key = Ed25519PrivateKey.generate().public_key()
    pem = serialization.Encoding.PEM
    path.write_bytes(key.public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def verified_as_json(data_dir: Path, *args: str) -> tuple[int, dict[str, object]]:
    """Run `plangate audit verify --json`; return its exit code and its one line of JSON."""
    result = plangate_cli(data_dir, "audit", "verify", "--json", *args)
    (line,) = result.stdout.splitlines()  # nothing else on stdout, for the monitor reading it
    return result.returncode, json.loads(line)


def test_verify_json_says_intact_with_what_it_checked(
    pipeline: Pipeline, completed_run: str
) -> None:
    """A monitor running `audit verify --json` on a schedule reads one object: the verdict,
    the counts, and any warning (here: no checkpoint yet), exit 0."""
    code, found = verified_as_json(pipeline.settings.data_dir)

    assert code == 0
    assert found["verdict"] == "intact"
    assert (found["entries"], found["chains"], found["checkpoints"]) == (LOGGED_ENTRIES, 2, 0)
    assert found["problem"] is None
    assert "no checkpoint seals these chains" in str(found["warnings"])


def test_verify_json_says_broken_naming_the_entry_and_exits_1(
    pipeline: Pipeline, completed_run: str
) -> None:
    approved = seq_of(pipeline, completed_run, "goal.approved")
    run_sql(
        pipeline,
        "UPDATE audit_log SET data = :data WHERE seq = :seq",
        data=json.dumps({"decided_by": "mallory"}),
        seq=approved,
    )

    code, found = verified_as_json(pipeline.settings.data_dir)

    assert code == 1
    assert found["verdict"] == "broken"
    assert f"audit log broken at entry {approved}" in str(found["problem"])
    assert "its content does not match its hash" in str(found["problem"])


def test_verify_json_says_a_check_it_cannot_make_and_exits_2(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    data_dir = pipeline.settings.data_dir
    assert plangate_cli(data_dir, "audit", "checkpoint").returncode == 0
    other = another_public_key(tmp_path / "new.pub")

    code, found = verified_as_json(data_dir, "--key", str(other))

    assert code == 2
    assert found["verdict"] == "cannot_check"
    assert "checkpoint 1 is signed by ed25519:" in str(found["problem"])


def test_verify_json_answers_in_json_when_the_export_named_is_missing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """A monitor whose export went missing read usage text it could not parse; and a log broken
    before anything was counted said `"entries": 0`, as of an empty log."""
    code, found = verified_as_json(
        pipeline.settings.data_dir, "--export", str(tmp_path / "gone.jsonl")
    )

    assert code == 2
    assert found["verdict"] == "cannot_check"
    assert "is no file" in str(found["problem"])
    assert found["entries"] is None


def test_a_goal_backdated_in_sql_breaks_verification(
    pipeline: Pipeline, completed_run: str
) -> None:
    """A DBA moved a goal's submission a month back: `goals list --since 1d` no longer listed
    it (a payment left the period), while `audit verify` said intact. Now it names the goal
    and the time its log records."""
    run_sql(pipeline, "UPDATE goals SET created_at = '2026-11-01 00:00:00.000000'")

    assert_records_broken(pipeline, f"goal {completed_run} shows it was submitted at 2026-11-01")
    verified = plangate_cli(pipeline.settings.data_dir, "audit", "verify")
    assert "but its audit log records its submission at" in verified.stderr


def test_an_export_and_its_records_are_readable_by_their_owner_alone(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """Under the usual umask (022) the export and its `.records.jsonl` (plans, arguments, tool
    outputs) were world-readable, while the store and the keys are the owner's alone."""
    target = tmp_path / "out" / "audit.jsonl"
    target.parent.mkdir()
    exported = plangate_cli(
        pipeline.settings.data_dir, "audit", "export", "-o", str(target), "--records"
    )

    assert exported.returncode == 0, exported.stderr
    for written in (target, target.with_name("audit.jsonl.records.jsonl")):
        assert written.stat().st_mode & 0o777 == 0o600, written


def plangate_cli_quick_progress(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `plangate` in its own process, saying progress from the first unit on, each time."""
    quick = "import plangate.cli.progress as p; p.QUIET_FOR = p.EVERY = 0.0\n"
    code = quick + "from plangate.cli.main import app; app()"
    environ = {**os.environ, "PLANGATE_DATA_DIR": str(data_dir)}
    environ.pop("PLANGATE_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_long_verify_or_export_says_how_far_it_got_on_stderr_and_keeps_stdout_for_the_result(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """Over a year of goals `audit verify` reads tens of millions of entries and said nothing
    until it ended, half an hour later: a slow check could not be told from a stuck one.

    Given work that lasts past the quiet time (here: from the first unit on),
    When `audit verify` and `audit export -o FILE` run with stderr not a terminal,
    Then stderr says how far each check got, stdout holds only the verdict; a monitor's
    `--json` run and an export to stdout get no progress lines.
    """
    data_dir = pipeline.settings.data_dir

    verified = plangate_cli_quick_progress(data_dir, "audit", "verify")
    as_json = plangate_cli_quick_progress(data_dir, "audit", "verify", "--json")
    exported = plangate_cli_quick_progress(data_dir, "audit", "export", "-o", str(tmp_path / "a"))
    to_stdout = plangate_cli_quick_progress(data_dir, "audit", "export")

    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.strip() == f"audit log intact: {LOGGED_ENTRIES} entries in 2 chains"
    entries = f"{LOGGED_ENTRIES} of {LOGGED_ENTRIES} entries (100 %)"
    assert f"checking chains: {entries}" in verified.stderr
    assert "checking records: 1 of 1 goals (100 %)" in verified.stderr
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["verdict"] == "intact"
    assert "checking" not in as_json.stderr
    assert exported.returncode == 0, exported.stderr
    assert f"exporting: {LOGGED_ENTRIES} entries" in exported.stderr
    assert "exporting" not in to_stdout.stderr
    assert len(to_stdout.stdout.splitlines()) == LOGGED_ENTRIES


def test_a_short_verify_says_nothing_but_its_verdict(
    pipeline: Pipeline, completed_run: str
) -> None:
    """Given a log checked well within the quiet time,
    When `plangate audit verify` runs,
    Then no progress is said of work that ends at once.
    """
    result = plangate_cli(pipeline.settings.data_dir, "audit", "verify")

    assert result.returncode == 0, result.stderr
    assert "checking" not in result.stderr


def test_verify_tells_its_progress_batch_by_batch_up_to_the_entries_the_heads_count(
    pipeline: Pipeline, completed_run: str
) -> None:
    """Given the seed goal's 11 entries and the policy's text read 5 at a time,
    When the log is verified with a progress callback,
    Then it is told after each batch how many were read, of the 12 the chains' heads count.
    """
    told: list[tuple[int, int]] = []

    report = audit.verify(pipeline.store, batch=5, progress=lambda *at: told.append(at))

    assert report.ok, report.problem
    assert told == [(5, 12), (10, 12), (12, 12)]
