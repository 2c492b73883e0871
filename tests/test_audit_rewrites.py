"""A chain rewritten in SQL with its hashes recomputed, as a DBA needs no key to do.

Within a chain every link then holds; what shows the rewrite is the head a checkpoint sealed
before it. The gate's sweep must not seal the rewritten head (it did, and `verify` said intact
one interval later), and `verify` holds each chain to every head ever sealed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from plangate.embedded import Pipeline
from plangate.errors import AuditBroken
from plangate.signing import Signer, TrustedKeys
from plangate.signing_keys import load_or_create_signer
from plangate.stages import build_sealing
from plangate.store import Store, audit, audit_checkpoints, open_store
from plangate.store.models import AuditChainRow, AuditCheckpointRow, AuditRow
from tests.test_audit import checkpoint, completed_run, plangate_cli, run_sql

__all__ = ["completed_run"]  # the fixture, used by name

pytestmark = pytest.mark.tampers

STEP_KIND = "step.succeeded"


def rewrite_chain(pipeline: Pipeline | Store, goal_id: str, kind: str, **data: Any) -> None:
    """Change the first `kind` entry of a goal's chain, then recompute every hash from there
    on and the chain's head, as anyone with the database's credentials can."""
    store = pipeline.store if isinstance(pipeline, Pipeline) else pipeline
    with store.session() as session:
        rows = session.scalars(
            select(AuditRow).where(AuditRow.chain == goal_id).order_by(AuditRow.chain_seq)
        ).all()
        changed = next(row for row in rows if row.kind == kind)
        changed.data = {**changed.data, **data}
        prev = changed.prev_hash
        for row in rows[changed.chain_seq - 1 :]:
            row.prev_hash = prev
            row.hash = audit.entry_hash(
                prev, row.chain_seq, row.at, row.goal_id, row.kind, row.actor, row.data
            )
            prev = row.hash
        session.get_one(AuditChainRow, goal_id).hash = prev


def test_a_gate_sweep_does_not_seal_a_chain_rewritten_since_it_sealed_it(
    pipeline: Pipeline, completed_run: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a completed run sealed by the gate's sweep,
    When a DBA rewrites one of its step entries and recomputes the chain's hashes and head,
    Then the next sweep does not seal that chain: it logs which chain and what to do, and
    says so on `plangate_audit_sealing_stopped`; `verify` still names the rewritten entry
    (the sweep had sealed the new head, and `verify` said intact one interval later).
    """
    settings = pipeline.settings.model_copy(update={"audit_checkpoint_seconds": 0.0})
    seal = build_sealing(settings)
    seal(pipeline.store)
    rewrite_chain(pipeline, completed_run, STEP_KIND, output_sha256="0" * 64)

    with caplog.at_level("ERROR"):
        seal(pipeline.store)

    said = [r.getMessage() for r in caplog.records if completed_run in r.getMessage()]
    assert said, caplog.text
    assert f"goal {completed_run}'s chain no longer holds its entry" in said[0]
    assert "plangate audit checkpoint --accept-missing" in said[0]
    assert REGISTRY.get_sample_value("plangate_audit_sealing_stopped") == 1
    report = audit.verify(pipeline.store)
    assert not report.ok
    assert report.problem is not None
    assert f"of goal {completed_run}'s chain that was recorded (by its head, or sealed" in (
        report.problem
    )


def test_verify_holds_a_chain_to_every_head_sealed_not_only_the_newest(
    pipeline: Pipeline, completed_run: str
) -> None:
    """Given a completed run sealed by a checkpoint,
    When its chain is rewritten with its hashes recomputed, and a sealer that seals whatever
    it finds (a gate of an earlier version, or one told to accept) seals the rewritten head,
    Then `verify` still fails, naming the chain's entry that the first checkpoint sealed.
    """
    checkpoint(pipeline)
    rewrite_chain(pipeline, completed_run, STEP_KIND, output_sha256="0" * 64)
    signer = load_or_create_signer(pipeline.settings)
    with pipeline.store.session() as session:
        resealed = audit_checkpoints.write(session, signer, accept_rewritten=True)
    assert resealed.checkpoint is not None

    report = audit.verify(pipeline.store)

    assert not report.ok
    assert report.problem is not None
    assert "by its head, or sealed by a checkpoint" in report.problem


def test_a_chain_that_still_holds_its_sealed_head_is_sealed_again_as_it_grows(
    pipeline: Pipeline,
) -> None:
    """Given a goal's chain sealed by a checkpoint,
    When an entry is appended to it (as any later event of the goal is) and the sweep seals
    again, Then it seals the chain at its new head and refuses nothing: a chain that grew is
    no rewrite.
    """
    goal_id = pipeline.submit("make me a sandwich").goal_id
    pipeline.wait_for(goal_id, timeout=5)
    checkpoint(pipeline)
    with pipeline.store.session() as session:
        before = session.get_one(AuditChainRow, goal_id).seq

    with pipeline.store.session() as session:
        audit.append(session, "goal.noted", actor="ops", goal_id=goal_id, data={"n": 1})
        sealing = audit_checkpoints.write(session, load_or_create_signer(pipeline.settings))

    assert sealing.refused == ()
    assert sealing.checkpoint is not None
    with pipeline.store.reading() as session:
        assert session.get_one(AuditChainRow, goal_id).seq == before + 1
    assert audit.verify(pipeline.store).ok


def test_audit_checkpoint_refuses_a_rewritten_chain_then_seals_it_when_told_to_accept(
    pipeline: Pipeline, completed_run: str
) -> None:
    """Given a sealed run whose chain was then rewritten with its hashes recomputed,
    When an operator runs `plangate audit checkpoint`, Then it exits 1 saying the chain is
    not sealed and what to do; with --accept-missing it seals it, and `verify` still names
    the break (the first seal is kept).
    """
    checkpoint(pipeline)
    rewrite_chain(pipeline, completed_run, STEP_KIND, output_sha256="0" * 64)
    data_dir = pipeline.settings.data_dir

    refused = plangate_cli(data_dir, "audit", "checkpoint")
    accepted = plangate_cli(data_dir, "audit", "checkpoint", "--accept-missing")
    verified = plangate_cli(data_dir, "audit", "verify")

    assert refused.returncode == 1, refused.stderr
    assert "not sealed" in refused.stderr
    assert f"goal {completed_run}'s chain no longer holds its entry" in " ".join(
        refused.stderr.split()
    )
    assert accepted.returncode == 0, accepted.stderr
    assert verified.returncode == 1, verified.stderr


@pytest.mark.postgres
def test_on_postgresql_a_rewritten_chain_is_not_sealed_again(postgres_database_url: str) -> None:
    """The same on PostgreSQL (the sealed heads looked up in one query a batch)."""
    store = open_store(postgres_database_url)
    try:
        with store.session() as session:
            for n in range(3):
                audit.append(session, "goal.noted", actor="ops", goal_id="g1", data={"n": n})
        with store.session() as session:
            assert audit_checkpoints.write(session).checkpoint is not None
        rewrite_chain(store, "g1", "goal.noted", n=99)

        with store.session() as session:
            sealing = audit_checkpoints.write(session)

        assert sealing.checkpoint is None
        [said] = sealing.refused
        assert said.startswith("goal g1's chain no longer holds its entry 3 as a checkpoint")
        assert not audit.verify(store).ok
    finally:
        store.close()


def test_a_sweep_seals_nothing_once_a_checkpoints_sealed_heads_were_deleted(
    pipeline: Pipeline, completed_run: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a run sealed by the gate's sweep, its chain then rewritten (the sweep refusing it),
    When the DBA also deletes the checkpoint's head row for that chain (so that no seal of it
    seems to be left), Then the next sweep seals nothing, saying the checkpoints were changed,
    and `plangate_audit_sealing_stopped` is 1 (it sealed the rewrite, saying nothing, and the
    gauge read 0).
    """
    settings = pipeline.settings.model_copy(update={"audit_checkpoint_seconds": 0.0})
    seal = build_sealing(settings)
    seal(pipeline.store)
    rewrite_chain(pipeline, completed_run, STEP_KIND, output_sha256="0" * 64)
    run_sql(pipeline, "DELETE FROM audit_checkpoint_heads WHERE chain = :c", c=completed_run)

    with caplog.at_level("ERROR"):
        seal(pipeline.store)

    with pipeline.store.reading() as session:
        assert session.scalar(select(func.count()).select_from(AuditCheckpointRow)) == 1
    said = [r.getMessage() for r in caplog.records if "checkpoint 1" in r.getMessage()]
    assert said, caplog.text
    assert "were deleted or changed in the store, so nothing is sealed" in said[0]
    assert REGISTRY.get_sample_value("plangate_audit_sealing_stopped") == 1


def test_a_chain_removed_whole_is_said_at_each_sweep_until_accepted(
    pipeline: Pipeline, completed_run: str
) -> None:
    """Given a sealed run whose every entry and head row the DBA deletes,
    When the sweep seals, Then it names the chain as removed (it said nothing);
    When an operator accepts (--accept-missing), Then the next sweep says it no more, and
    `verify` still names the removal.
    """
    checkpoint(pipeline)
    run_sql(pipeline, "DELETE FROM audit_log WHERE chain = :c", c=completed_run)
    run_sql(pipeline, "DELETE FROM audit_chains WHERE chain = :c", c=completed_run)
    signer = load_or_create_signer(pipeline.settings)

    with pipeline.store.session() as session:
        refused = audit_checkpoints.write(session, signer).refused
    with pipeline.store.session() as session:
        accepted = audit_checkpoints.write(session, signer, accept_rewritten=True)
    with pipeline.store.session() as session:
        after = audit_checkpoints.write(session, signer)

    assert [said.split(",")[0] for said in refused] == [
        f"every entry of goal {completed_run}'s chain was removed"
    ]
    assert accepted.checkpoint is not None
    assert after.refused == ()
    report = audit.verify(pipeline.store)
    assert report.problem == f"every entry of goal {completed_run}'s chain was removed"


def test_verify_against_an_export_names_the_entry_rewritten_where_the_store_breaks_at_its_head(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """Given a sealed run exported with --sign, then its first step entry rewritten with the
    chain's hashes recomputed (the store's own check sees only the sealed head changed),
    When `plangate audit verify --against FILE` runs, Then it names the rewritten entry of the
    export, as the break's next step promises (it said the same break at the head again).
    """
    checkpoint(pipeline)
    data, export = pipeline.settings.data_dir, tmp_path / "audit.jsonl"
    assert plangate_cli(data, "audit", "export", "--sign", "-o", str(export)).returncode == 0
    rewrite_chain(pipeline, completed_run, STEP_KIND, output_sha256="0" * 64)
    with pipeline.store.reading() as session:
        step = session.scalars(
            select(AuditRow)
            .where(AuditRow.chain == completed_run, AuditRow.kind == STEP_KIND)
            .order_by(AuditRow.chain_seq)
        ).first()
    assert step is not None

    checked = plangate_cli(data, "audit", "verify", "--against", str(export))

    assert checked.returncode == 1, checked.stderr
    said = " ".join(checked.stderr.split())
    assert f"entry {step.seq} of goal {completed_run} (step.succeeded" in said
    assert "no longer in the store as it was" in said


def test_a_sweep_seals_nothing_over_a_checkpoint_signed_by_a_key_it_does_not_trust(
    pipeline: Pipeline, completed_run: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a run sealed by the gate's sweep, its chain then rewritten, and a checkpoint over
    the rewrite that a DBA signed with a key of their own (linked, hashed and digested right),
    When the sweep runs, Then it seals nothing, naming the checkpoint and its signer, and says
    so on `plangate_audit_sealing_stopped` (it took any signer as a key from before a rotation,
    and signed its own checkpoint over the forgery, saying nothing).
    """
    settings = pipeline.settings.model_copy(update={"audit_checkpoint_seconds": 0.0})
    seal = build_sealing(settings)
    seal(pipeline.store)
    rewrite_chain(pipeline, completed_run, STEP_KIND, output_sha256="0" * 64)
    stranger = Signer(Ed25519PrivateKey.generate())
    with pipeline.store.session() as session:
        forged = audit_checkpoints.write(session, stranger, accept_rewritten=True).checkpoint
        assert forged is not None
        forged_id = forged.id

    with caplog.at_level("ERROR"):
        seal(pipeline.store)

    with pipeline.store.reading() as session:
        newest = session.scalar(select(func.max(AuditCheckpointRow.id)))
    assert newest == forged_id
    said = [r.getMessage() for r in caplog.records if f"checkpoint {forged_id}" in r.getMessage()]
    assert said, caplog.text
    assert f"is signed by {stranger.key_id}, not by a key trusted here" in said[0]
    assert REGISTRY.get_sample_value("plangate_audit_sealing_stopped") == 1


def test_after_a_key_rotation_the_sweep_seals_over_a_checkpoint_of_the_key_before(
    pipeline: Pipeline, completed_run: str
) -> None:
    """Given a checkpoint signed with the gate's first key, and the gate rotated to a new key,
    When it seals with the first key's public key among its trusted keys (as the docs say to
    keep it), Then it seals; with the first key's public key not kept, it seals nothing."""
    first = Signer(Ed25519PrivateKey.generate())
    rotated = Signer(Ed25519PrivateKey.generate())
    with pipeline.store.session() as session:
        assert audit_checkpoints.write(session, first).checkpoint is not None
    with pipeline.store.session() as session:
        audit.append(session, "goal.noted", actor="ops", goal_id=completed_run, data={})

    with (
        pytest.raises(AuditBroken, match="not by a key trusted here"),
        pipeline.store.session() as session,
    ):
        audit_checkpoints.write(session, rotated, trusted=TrustedKeys([]))
    with pipeline.store.session() as session:
        kept = TrustedKeys([first.public_key])
        sealing = audit_checkpoints.write(session, rotated, trusted=kept)

    assert sealing.checkpoint is not None
    assert sealing.refused == ()
