"""The append-only audit log: hash chains, so tampering shows, and no lock every writer shares.

Each goal's entries form a chain of their own (entries of no goal form the system chain): an
entry hashes the one before it in its chain, and appending locks only that chain's head. A
goal's transactions take turns anyway (its stages act one after another), so chains grow in
parallel and no transaction waits for another goal's. What a per-goal chain alone would miss,
a goal's whole chain deleted, the checkpoints catch (`plangate.store.audit_checkpoints`).

What an entry records is redacted before it is hashed and stored (`plangate.redaction`), and
text that cannot be encoded is replaced, so a secret never enters the log and no hash fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Row, Table, Text, bindparam, insert, select, tuple_, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session

from plangate.errors import AuditBroken
from plangate.printable import printable_line
from plangate.redaction import escape_marker, redact
from plangate.store.claims import insert_if_absent
from plangate.store.engine import Store
from plangate.store.hot_statements import HotStatement
from plangate.store.models import AuditChainRow, AuditRow
from schemas import canonical_json, utcnow
from schemas.decoding import storable_text, strict_json_loads
from schemas.errors import MessageRejected
from schemas.hashing import sha256_hex

if TYPE_CHECKING:
    from plangate.signing import TrustedKeys

GENESIS = "0" * 64
SYSTEM_CHAIN = "system"
# Every entry written before migration 0013 is in this one chain.
LEGACY_CHAIN = "global"

# Built once: statements made anew on every append took a third of its time. Every state
# change of every goal appends, so they run on SQLite's own cursor (`HotStatement`).
_CHAINS = cast(Table, AuditChainRow.__table__)
_HEAD = select(_CHAINS.c.seq, _CHAINS.c.hash).where(_CHAINS.c.chain == bindparam("chain"))
_LOCK_HEAD = HotStatement(_HEAD.with_for_update())
_ENTRY_COLUMNS = ("chain", "chain_seq", "at", "goal_id", "kind", "actor", "data", "prev_hash")
_INSERT_ENTRY = HotStatement(insert(cast(Table, AuditRow.__table__)), (*_ENTRY_COLUMNS, "hash"))
_MOVE_HEAD = HotStatement(
    update(_CHAINS)
    .where(_CHAINS.c.chain == bindparam("of_chain"))
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)


def chain_of(goal_id: str | None) -> str:
    """Return the chain an entry about this goal (or about no goal) extends."""
    return goal_id if goal_id is not None else SYSTEM_CHAIN


def entry_hash(
    prev_hash: str,
    seq: int,
    at: str,
    goal_id: str | None,
    kind: str,
    actor: str,
    data: dict[str, Any],
) -> str:
    """Return the hash that chains an entry to its predecessor (`seq`: its place in its chain)."""
    body = {"seq": seq, "at": at, "goal_id": goal_id, "kind": kind, "actor": actor, "data": data}
    return sha256_hex(prev_hash.encode("ascii") + canonical_json(body))


def append(
    session: Session,
    kind: str,
    *,
    actor: str,
    goal_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Append an entry in the caller's transaction (so it commits with the effect it records).

    Written with plain statements, not the ORM's unit of work: every state change of every
    goal passes here, and the ORM took three times as long.
    """
    chain = chain_of(goal_id)
    payload: dict[str, Any] = _outward(dict(data or {}))
    actor = _outward(actor)
    heads = _LOCK_HEAD.rows(session, {"chain": chain})
    if not heads:
        # A chain's first append creates its head, already pointing at this entry; of two first
        # appends only one can: the other inserts nothing, then waits on the lock and follows.
        entry = _entry(chain, 1, GENESIS, goal_id, kind, actor, payload)
        if insert_if_absent(
            session, AuditChainRow, {"chain": chain, "seq": 1, "hash": entry["hash"]}
        ):
            _INSERT_ENTRY.rows(session, entry)
            return
        heads = _LOCK_HEAD.rows(session, {"chain": chain})
    [(seq, prev_hash)] = heads
    entry = _entry(chain, int(seq) + 1, str(prev_hash), goal_id, kind, actor, payload)
    _INSERT_ENTRY.rows(session, entry)
    _MOVE_HEAD.rows(
        session, {"of_chain": chain, "new_seq": entry["chain_seq"], "new_hash": entry["hash"]}
    )


def _entry(
    chain: str,
    seq: int,
    prev_hash: str,
    goal_id: str | None,
    kind: str,
    actor: str,
    payload: dict[str, Any],
) -> dict[str, Any]:
    """Return the row of an entry that follows `prev_hash` as the `seq`th of its chain."""
    at = utcnow().isoformat()
    digest = entry_hash(prev_hash, seq, at, goal_id, kind, actor, payload)
    entry = {"chain": chain, "chain_seq": seq, "at": at, "goal_id": goal_id, "kind": kind}
    return entry | {"actor": actor, "data": payload, "prev_hash": prev_hash, "hash": digest}


def _outward(value: Any) -> Any:
    """Return `value` with every string (keys too) redacted and made storable."""
    if isinstance(value, str):
        return storable_text(redact(escape_marker(value)))
    if isinstance(value, dict):
        return {_outward(key): _outward(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_outward(item) for item in value]
    return value


@dataclass(frozen=True)
class AuditReport:
    """The result of checking the log: how many entries, and the first broken link if any.

    `broken_at` is the `seq` of the entry that does not hold (for a chain whose last entries
    were removed: of its last remaining entry, or None if none remains).
    """

    entries: int
    broken_at: int | None = None
    problem: str | None = None
    chains: int = 0
    checkpoints: int = 0
    unchecked: str | None = None  # a checkpoint whose signer is not trusted here, if any

    @property
    def ok(self) -> bool:
        """Return True when every link holds."""
        return self.problem is None


@dataclass(frozen=True)
class _Break:
    seq: int | None
    problem: str


def chain_name(chain: str) -> str:
    """Return how a person reads a chain's name: goal 1f3a…, the system chain, the legacy one."""
    if chain == SYSTEM_CHAIN:
        return "the system chain"
    if chain == LEGACY_CHAIN:
        return "the chain of entries before 0013"
    return f"goal {chain}'s chain"


def placed(store: Store, seq: int) -> str:
    """Say where entry `seq` sits: its place in its chain and its kind, as a person finds it.

    `seq` alone is a number no view shows; "entry 4 of goal 1f3a…'s chain (goal.approved)" is.
    """
    query = select(AuditRow.chain, AuditRow.chain_seq, AuditRow.kind).where(AuditRow.seq == seq)
    try:
        with store.reading() as session:
            found = session.execute(query).first()
    except (ValueError, TypeError):  # a column edited to what plangate never writes
        return ""
    if found is None:
        return ""
    chain, chain_seq, kind = found
    return f" (entry {chain_seq} of {chain_name(str(chain))}, {printable_line(str(kind))})"


def verify(
    store: Store,
    *,
    keys: TrustedKeys | None = None,
    batch: int = 2000,
    progress: Callable[[int, int], None] | None = None,
) -> AuditReport:
    """Check every chain from its start, and the checkpoints; report the first entry that fails.

    Chains are read one after another in their own order, a batch at a time: within a chain,
    entries commit in order (each append holds the chain's head), so a walk beside running
    writers never sees a gap that is not one. Each chain must reach the head recorded for it
    (read before the walk) and every head a checkpoint sealed. Of several breaks, the one
    earliest in the log is reported. With `keys`, every checkpoint must be signed by one.
    `progress` is told the entries walked so far, and how many the chains' heads count.
    """
    from plangate.store import audit_checkpoints

    sealed = audit_checkpoints.sealed_heads(store, keys)
    with store.reading() as session:
        heads = {
            row.chain: (row.seq, row.hash)
            for row in session.execute(select(AuditChainRow)).scalars()
        }
    expected = {chain: [head] for chain, head in heads.items()}
    for chain, head in sealed.heads.items():
        expected.setdefault(chain, []).extend([*sealed.earlier.get(chain, ()), head])
    breaks = [_Break(sealed.seq, sealed.problem)] if sealed.problem else []
    count, walked = 0, 0
    heads_count = sum(seq for seq, _ in heads.values())
    read = None if progress is None else lambda done: progress(done, max(done, heads_count))
    for chain, rows in _chains(store, batch, expected, read):
        walked += 1
        count += rows.count
        breaks.extend(rows.breaks)
        breaks.extend(_unreached(chain, rows, expected.pop(chain, [])))
    for chain, missing in expected.items():
        if any(seq > 0 for seq, _ in missing):
            breaks.append(_Break(None, f"every entry of {chain_name(chain)} was removed"))
    report = AuditReport(
        count, chains=walked, checkpoints=sealed.checkpoints, unchecked=sealed.unchecked
    )
    if not breaks:
        return report
    first = min(breaks, key=lambda found: (found.seq is None, found.seq or 0))
    return replace(report, broken_at=first.seq, problem=first.problem)


@dataclass
class _Walked:
    """One chain as read: how many entries, the recorded heads found, what did not hold."""

    wanted: set[int] = field(default_factory=set)
    found: dict[int, tuple[str, int]] = field(default_factory=dict)  # chain_seq: (hash, seq)
    breaks: list[_Break] = field(default_factory=list)
    count: int = 0
    last: tuple[int, str, int] = (0, GENESIS, 0)  # chain_seq, hash, seq


def _chains(
    store: Store,
    batch: int,
    expected: dict[str, list[tuple[int, str]]],
    read: Callable[[int], None] | None = None,
) -> Iterator[tuple[str, _Walked]]:
    """Yield each chain with its walk, reading the log in (chain, chain_seq) order.

    `read` is told how many entries were read so far, after each batch.
    """
    chain, walked = "", _Walked()
    after: tuple[str, int] = ("", 0)
    done = 0
    while True:
        query = (
            select(*AS_STORED)
            .where(tuple_(AuditRow.chain, AuditRow.chain_seq) > after)
            .order_by(AuditRow.chain, AuditRow.chain_seq)
            .limit(batch)
        )
        with store.reading() as session:
            rows = list(session.execute(query).all())
        done += len(rows)
        if read is not None:
            read(done)
        for row in rows:
            if row.chain != chain:
                if walked.count:
                    yield chain, walked
                wanted = {seq for seq, _ in expected.get(row.chain, ())}
                chain, walked = row.chain, _Walked(wanted)
            _walk(row, walked)
        if len(rows) < batch:
            if walked.count:
                yield chain, walked
            return
        after = (rows[-1].chain, rows[-1].chain_seq)


# An entry's columns with its data as the text stored: a hand-edited entry whose data is no
# JSON is then a broken link named like any other, not a traceback from the JSON column type.
_MAX_ENTRY_CHARS = 64 * 1024 * 1024  # far above any entry plangate writes; still a bound
AS_STORED = (
    *(getattr(AuditRow, name) for name in ("seq", "chain", "chain_seq", "at", "goal_id")),
    *(getattr(AuditRow, name) for name in ("kind", "actor", "prev_hash", "hash")),
    sql_cast(AuditRow.data, Text).label("data"),
)


def stored_data(seq: int, text: str | None) -> Any:
    """Return an entry's data read from its stored text; AuditBroken if it is no JSON.

    Read strictly (no NaN, no repeated key, bounded depth): what plangate wrote always is.
    """
    try:
        return (
            None
            if text is None
            else strict_json_loads(text, max_bytes=_MAX_ENTRY_CHARS, max_depth=256)
        )
    except MessageRejected:
        raise AuditBroken(
            f"audit entry {seq}'s content is not valid JSON: the log was altered; "
            "`plangate audit verify` names the first broken link"
        ) from None


def _hash_or_none(prev_hash: str, fields: tuple[Any, ...]) -> str | None:
    """Return an entry's hash; None if its fields cannot be hashed (they were altered)."""
    try:
        return entry_hash(prev_hash, *fields)
    except (ValueError, TypeError):
        return None


def _walk(row: Row[Any], walked: _Walked) -> None:
    prev_seq, prev_hash, _ = walked.last
    where = chain_name(row.chain)
    try:
        data = stored_data(row.seq, row.data)
        broken = None
    except AuditBroken:
        data, broken = None, "its content is not valid JSON"
    fields = (row.chain_seq, row.at, row.goal_id, row.kind, row.actor, data)
    if row.chain_seq != prev_seq + 1:
        walked.breaks.append(_Break(row.seq, f"entry {prev_seq + 1} of {where} is missing"))
    elif row.prev_hash != prev_hash:
        walked.breaks.append(_Break(row.seq, f"does not follow the entry before it in {where}"))
    elif broken is not None:
        walked.breaks.append(_Break(row.seq, broken))
    elif row.hash != _hash_or_none(prev_hash, fields):
        walked.breaks.append(_Break(row.seq, "its content does not match its hash"))
    if row.chain_seq in walked.wanted:
        walked.found[row.chain_seq] = (row.hash, row.seq)
    walked.count += 1
    walked.last = (row.chain_seq, row.hash, row.seq)


def _unreached(chain: str, walked: _Walked, heads: list[tuple[int, str]]) -> Iterator[_Break]:
    """Yield a break for each recorded head (the chain's own, or sealed) the chain lacks."""
    last_seq, _, last_entry = walked.last
    for seq, digest in heads:
        found = walked.found.get(seq)
        if found is None and seq > last_seq:
            yield _Break(
                last_entry,
                f"{chain_name(chain)} ends here, at entry {last_seq}, but its entry {seq} was "
                "recorded (by its head, or sealed by a checkpoint): entries were removed from it",
            )
        elif found is not None and found[0] != digest:
            yield _Break(
                found[1],
                f"is not the entry {seq} of {chain_name(chain)} that was recorded (by its "
                "head, or sealed by a checkpoint): it, or an entry before it, was changed since",
            )
