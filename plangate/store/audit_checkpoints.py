"""Checkpoints: periodic seals over every audit chain's head, chained to one another.

Per-goal chains show any edited, reordered or removed entry inside a chain, and a removed tail
against the chain's head row. What they cannot show is a goal's whole chain removed together
with its head row. A checkpoint records each chain's head (only those that moved since the
checkpoint before), a digest of all heads as of then, and the hash of the checkpoint before;
the gate's sweep writes one when anything moved and signs it with the gate's key, so a
checkpoint cannot be rewritten without the key. `plangate audit verify` replays them: every
sealed head must still be in the log.

One writer at a time (a named lock): checkpoints are rare, and a fork in their chain would be
a false alarm. They are off the hot path: appends never read or lock them.

A chain is sealed again only where it still holds the head sealed before: the sweep signed
whatever head it found, so a chain rewritten in SQL (its hashes recomputed, needing no key) was
sealed as it now read, and `verify` said intact one interval later. And `verify` holds each
chain to every head ever sealed, not only the newest: checkpoints a gate wrote over a rewrite
before this was so still show it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, select, tuple_
from sqlalchemy.orm import Session

from plangate.errors import AuditBroken, ConfigError
from plangate.store.engine import Store
from plangate.store.locks import lock_names
from plangate.store.models import (
    AuditChainRow,
    AuditCheckpointHeadRow,
    AuditCheckpointRow,
    AuditRow,
)
from schemas import canonical_json, utcnow
from schemas.hashing import sha256_hex

if TYPE_CHECKING:
    from plangate.signing import Signer, TrustedKeys

GENESIS = "0" * 64
CHECKPOINT_TYPE = "application/vnd.plangate.audit-checkpoint+json"
_WRITER_LOCK = "plangate.audit.checkpoint"

Heads = dict[str, tuple[int, str]]  # chain -> (its last entry's chain_seq, that entry's hash)


def heads_digest(heads: Mapping[str, tuple[int, str]]) -> str:
    """Return the digest of a set of chain heads: of their sorted, canonical list."""
    listed = [[chain, seq, digest] for chain, (seq, digest) in sorted(heads.items())]
    return sha256_hex(canonical_json(listed))


def checkpoint_hash(prev_hash: str, at: str, chains: int, entries: int, digest: str) -> str:
    """Return the hash that chains a checkpoint to the one before."""
    body = {"at": at, "chains": chains, "entries": entries, "heads_digest": digest}
    return sha256_hex(prev_hash.encode("ascii") + canonical_json(body))


@dataclass(frozen=True)
class Sealing:
    """What a sweep sealed: its checkpoint (None: nothing to seal), and the chains it refused."""

    checkpoint: AuditCheckpointRow | None
    refused: tuple[str, ...] = ()  # each a sentence: which chain, and what to do


def write(
    session: Session,
    signer: Signer | None = None,
    *,
    trusted: TrustedKeys | None = None,
    accept_rewritten: bool = False,
) -> Sealing:
    """Seal the chains' heads as they are now, in the caller's transaction.

    A chain that no longer holds the head sealed before is left out, its old seal kept (so
    `verify` keeps naming the break), and said in `refused`; unless `accept_rewritten`, after
    a person has looked. The newest checkpoint must be signed by `signer`'s key or one of
    `trusted` (the keys it signed with before a rotation). The checkpoint is None when no
    chain moved since the last one.
    """
    lock_names(session, [_WRITER_LOCK])
    last = session.execute(
        select(AuditCheckpointRow).order_by(AuditCheckpointRow.id.desc()).limit(1)
    ).scalar_one_or_none()
    sealed = _latest_sealed(session)
    if last is not None and not accept_rewritten:
        _refuse_changed_checkpoints(last, sealed, signer, trusted)
    now = {
        row.chain: (row.seq, row.hash) for row in session.execute(select(AuditChainRow)).scalars()
    }
    moved = {chain: head for chain, head in now.items() if sealed.get(chain) != head}
    refused = {} if accept_rewritten else _not_extending(session, sealed, moved)
    moved = {chain: head for chain, head in moved.items() if chain not in refused}
    # A chain gone whole, its head row too: said until restored; accepted, sealed as gone
    # (entry 0), so that it is said no more, while `verify` still names the seal before.
    gone = [chain for chain, (seq, _) in sealed.items() if chain not in now and seq > 0]
    if accept_rewritten:
        moved |= {chain: (0, GENESIS) for chain in gone}
    else:
        refused |= {chain: _gone(chain, sealed[chain][0]) for chain in gone}
    if not moved:
        return Sealing(None, tuple(refused.values()))
    heads = sealed | moved
    at = utcnow().isoformat()
    entries, digest = sum(seq for seq, _ in heads.values()), heads_digest(heads)
    prev_hash = last.hash if last is not None else GENESIS
    digest_of_all = checkpoint_hash(prev_hash, at, len(heads), entries, digest)
    checkpoint = AuditCheckpointRow(
        at=at,
        chains=len(heads),
        entries=entries,
        heads_digest=digest,
        prev_hash=prev_hash,
        hash=digest_of_all,
        signature=_signature(signer, digest_of_all),
    )
    session.add(checkpoint)
    session.flush()
    session.execute(
        insert(AuditCheckpointHeadRow),
        [
            {"checkpoint_id": checkpoint.id, "chain": chain, "seq": seq, "hash": digest}
            for chain, (seq, digest) in moved.items()
        ],
    )
    return Sealing(checkpoint, tuple(refused.values()))


def _refuse_changed_checkpoints(
    last: AuditCheckpointRow, sealed: Heads, signer: Signer | None, trusted: TrustedKeys | None
) -> None:
    """Raise AuditBroken unless the heads sealed add up to the newest checkpoint, as written.

    The newest checkpoint names every chain's head as of then; the heads the checkpoints
    hold must still be those (its digest), and it must be as it was signed. Head rows or
    middle checkpoints deleted let an older head stand in for a chain's sealed one, and the
    sweep sealed a rewrite over it, saying nothing, while `verify` said broken.
    """
    keys = None
    if signer is not None:
        from plangate.signing import TrustedKeys

        before = [trusted[key] for key in trusted] if trusted is not None else []
        keys = TrustedKeys([signer.public_key, *before])
    try:
        problem = _problem(last, last.prev_hash, sealed, keys)
    except _SignerUnknown as unknown:  # any key passed: a DBA's own one made it the base
        problem = str(unknown)
    if problem is not None:
        raise AuditBroken(
            f"{problem}: checkpoints or the heads they sealed were deleted or changed in the "
            "store, so nothing is sealed until a person has looked (sealing now would seal "
            "whatever was left); `plangate audit verify` names the break; restore the store, "
            "or, once a person has looked, `plangate audit checkpoint --accept-missing` seals "
            "afresh"
        )


def _gone(chain: str, seq: int) -> str:
    from plangate.store.audit import chain_name

    return (
        f"every entry of {chain_name(chain)} was removed, with its head row, since a checkpoint "
        f"sealed it at entry {seq}; its seal is kept (`plangate audit verify` names it). "
        "Restore it from a backup, or, once a person has looked, `plangate audit checkpoint "
        "--accept-missing` stops saying so"
    )


def _not_extending(session: Session, sealed: Heads, moved: Heads) -> dict[str, str]:
    """Return the moved chains that no longer hold their sealed head, each with what to say."""
    from plangate.store.audit import chain_name

    again = [(chain, sealed[chain]) for chain in moved if chain in sealed]
    found: dict[tuple[str, int], str] = {}
    for start in range(0, len(again), 500):  # one query a batch, within any driver's bound
        keys = [(chain, seq) for chain, (seq, _) in again[start : start + 500]]
        rows = session.execute(
            select(AuditRow.chain, AuditRow.chain_seq, AuditRow.hash).where(
                tuple_(AuditRow.chain, AuditRow.chain_seq).in_(keys)
            )
        )
        found |= {(chain, seq): digest for chain, seq, digest in rows}
    refused = {}
    for chain, (seq, digest) in again:
        if found.get((chain, seq)) != digest:
            refused[chain] = (
                f"{chain_name(chain)} no longer holds its entry {seq} as a checkpoint sealed it "
                f"(its head is now entry {moved[chain][0]}): it, or an entry before it, was "
                "changed or removed since, so the chain is not sealed again; `plangate audit "
                "verify --against` your last signed export "
                "shows what changed. Restore it from a backup, or, once a person has looked, "
                "`plangate audit checkpoint --accept-missing` seals it as it is now"
            )
    return refused


def _signature(signer: Signer | None, digest: str) -> dict[str, Any] | None:
    if signer is None:
        return None
    envelope = signer.envelope(CHECKPOINT_TYPE, digest.encode("ascii"))
    return envelope.model_dump(mode="json")


def _latest_sealed(session: Session) -> Heads:
    """Return each chain's head as the newest checkpoint naming it sealed it."""
    newest = (
        select(AuditCheckpointHeadRow.chain, func.max(AuditCheckpointHeadRow.checkpoint_id))
        .group_by(AuditCheckpointHeadRow.chain)
        .subquery()
    )
    rows = session.execute(
        select(
            AuditCheckpointHeadRow.chain, AuditCheckpointHeadRow.seq, AuditCheckpointHeadRow.hash
        ).join(
            newest,
            (AuditCheckpointHeadRow.chain == newest.c.chain)
            & (AuditCheckpointHeadRow.checkpoint_id == newest.c[1]),
        )
    )
    return {chain: (seq, digest) for chain, seq, digest in rows}


@dataclass
class Sealed:
    """The checkpoints replayed: each chain's newest sealed head, or the first that fails."""

    heads: Heads = field(default_factory=dict)
    # The heads sealed before each chain's newest: a chain must still hold them too.
    earlier: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    checkpoints: int = 0
    problem: str | None = None
    seq: int | None = None  # always None: a checkpoint is not an entry of the log
    # The first checkpoint signed by a key not trusted here: no break that can be told from
    # a key not given (`audit verify` exits 2 on it, once every other check holds).
    unchecked: str | None = None


def sealed_heads(store: Store, keys: TrustedKeys | None = None) -> Sealed:
    """Replay every checkpoint in order, checking its link, its hash, its digest.

    With `keys`, every checkpoint's signature is checked too (an unsigned one fails).
    """
    sealed = Sealed()
    prev_hash = GENESIS
    with store.reading() as session:
        checkpoints = session.execute(
            select(AuditCheckpointRow).order_by(AuditCheckpointRow.id)
        ).scalars()
        for checkpoint in checkpoints:
            moved = session.execute(
                select(AuditCheckpointHeadRow).where(
                    AuditCheckpointHeadRow.checkpoint_id == checkpoint.id
                )
            ).scalars()
            for row in moved:
                if (before := sealed.heads.get(row.chain)) not in (None, (row.seq, row.hash)):
                    sealed.earlier.setdefault(row.chain, []).append(before)
                sealed.heads[row.chain] = (row.seq, row.hash)
            sealed.checkpoints += 1
            try:
                sealed.problem = _problem(checkpoint, prev_hash, sealed.heads, keys)
            except _SignerUnknown as unknown:
                sealed.unchecked = sealed.unchecked or str(unknown)
            if sealed.problem is not None:
                return sealed
            prev_hash = checkpoint.hash
    return sealed


def _problem(
    checkpoint: AuditCheckpointRow, prev_hash: str, heads: Heads, keys: TrustedKeys | None
) -> str | None:
    name = f"checkpoint {checkpoint.id}"
    if checkpoint.prev_hash != prev_hash:
        return f"{name} does not follow the checkpoint before it"
    expected = checkpoint_hash(
        prev_hash, checkpoint.at, checkpoint.chains, checkpoint.entries, checkpoint.heads_digest
    )
    if checkpoint.hash != expected:
        return f"{name}'s content does not match its hash"
    if (len(heads), heads_digest(heads)) != (checkpoint.chains, checkpoint.heads_digest):
        return f"{name}'s chain heads were changed"
    if keys is None:
        return None
    if checkpoint.signature is None:
        # Every checkpoint a gate or `plangate audit checkpoint` writes is signed: one without a
        # signature is what a rewrite of the chains would leave, lacking the gate's key.
        return f"{name} is not signed, as every checkpoint plangate writes is"
    return _signature_problem(name, checkpoint, keys)


def _signature_problem(name: str, checkpoint: AuditCheckpointRow, keys: TrustedKeys) -> str | None:
    from plangate.errors import ApprovalInvalid, UnknownSigner
    from schemas import SignedEnvelope

    try:
        envelope = SignedEnvelope.model_validate(checkpoint.signature)
        payload, _ = keys.verified_payload(envelope, CHECKPOINT_TYPE)
    except UnknownSigner:
        # A key not given and a checkpoint re-signed by another look the same from here.
        signers = ", ".join(sorted({signature.keyid for signature in envelope.signatures}))
        raise _SignerUnknown(
            f"{name} is signed by {signers}, not by a key trusted here ({', '.join(keys)}): "
            "give the gate's public key of those (--key or PLANGATE_TRUSTED_KEYS_DIR, keeping "
            "every key it signed with before a rotation); if none of them is your gate's, the "
            "checkpoint was signed again by someone else: treat the log as broken"
        ) from None
    except ApprovalInvalid as exc:  # what the envelope's check says, not "approval refused"
        return f"{name}'s signature does not hold: {exc.reason}"
    except ValueError as exc:
        return f"{name}'s signature does not hold: {exc}"
    if payload != checkpoint.hash.encode("ascii"):
        return f"{name}'s signature is over another checkpoint"
    return None


@dataclass(frozen=True)
class Unsealed:
    """The entries no checkpoint seals yet: written after the newest one (at `since`)."""

    since: datetime
    entries: int


def unsealed(store: Store) -> Unsealed | None:
    """Return how many entries were written after the newest checkpoint; None if there is none.

    The newest checkpoints can be deleted without a trace (nothing after them names them):
    the window they leave is the time since the newest left. Said, so a reader can compare it
    with how often the gate writes one.
    """
    with store.reading() as session:
        newest = session.scalar(select(func.max(AuditCheckpointRow.at)))
        if newest is None:
            return None
        after = session.scalar(select(func.count()).where(AuditRow.at > newest))
    return Unsealed(datetime.fromisoformat(newest), int(after or 0))


class _SignerUnknown(Exception):
    """A checkpoint signed by a key not trusted here: not a break this check can tell."""


def refuse_a_rotated_key(session: Session, key_id: str, where: str) -> None:
    """Refuse to seal with the data folder's key when the newest checkpoint names another.

    After a rotation the gate signs with PLANGATE_SIGNING_KEY_FILE, but its data folder still
    holds the key it made at first: `audit checkpoint` and `audit export --sign` run there
    without the setting signed with the old key, maybe the leaked one the rotation retired.
    """
    recent = session.execute(
        select(AuditCheckpointRow.id, AuditCheckpointRow.signature)
        .order_by(AuditCheckpointRow.id.desc())
        .limit(50)
    )
    # The newest signed one (an unsigned one's JSON null passes IS NOT NULL on PostgreSQL).
    newest = next(((at, sig) for at, sig in recent if isinstance(sig, dict)), None)
    if newest is None:
        return
    signers = {
        str(signature.get("keyid"))
        for signature in newest[1].get("signatures") or []
        if isinstance(signature, dict)
    }
    if signers and key_id not in signers:
        raise ConfigError(
            f"the newest checkpoint ({newest[0]}) is signed by {', '.join(sorted(signers))}, "
            f"not by the key in {where} ({key_id}): the gate's key was rotated; run this with "
            "PLANGATE_SIGNING_KEY_FILE set to the key the gate signs with now, and move the old "
            "one out of the data folder (if you replaced that file by the new key, the gate's "
            "next checkpoint names it)"
        )
