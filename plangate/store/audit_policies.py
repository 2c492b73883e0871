"""The policies the gate decided under: each version's text, recorded once in the audit log.

A decision records its policy's version, a digest of the file: alone it only confirms a file
someone kept. So the text is recorded too, once per store, when a gate first decides under
that version: a `policy.adopted` entry in the system chain (it concerns no goal), hashed,
sealed by checkpoints and exported like every other entry. `plangate policy show VERSION`
reads it back. A policy file holds at most 4 MiB (`plangate.small_files`), and a version is
recorded once, not with each decision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Text, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session

from plangate.errors import AuditBroken
from plangate.store import audit
from plangate.store.engine import Store
from plangate.store.locks import lock_names
from plangate.store.models import AuditRow
from schemas.hashing import sha256_hex

log = logging.getLogger(__name__)

KIND = "policy.adopted"
_LOCK = "plangate.audit.policy_adopted"  # two gates adopting one version: one entry
_ADOPTED = (AuditRow.chain == audit.SYSTEM_CHAIN, AuditRow.kind == KIND)


def text_digest(text: str) -> str:
    """Return the digest of a policy's text: of the file's bytes, whose first 16 digits name it."""
    return "sha256:" + sha256_hex(text.encode("utf-8"))


@dataclass(frozen=True)
class RecordedPolicy:
    """A policy's text as the audit log recorded it, with the version it was decided under."""

    version: str
    sha256: str  # of the file's bytes, as the gate read them
    text: str
    source: str  # where the gate read it: a path, or the packaged default
    at: str
    actor: str

    @property
    def as_written(self) -> bool:
        """Return whether the text is the file's, byte for byte (a secret in it is redacted)."""
        return text_digest(self.text) == self.sha256


@dataclass(frozen=True)
class PolicyText:
    """A policy the gate decides under, as it read it: what `policy.adopted` records."""

    version: str
    digest: str  # `text_digest(text)`, computed once where the policy is loaded
    text: str
    source: str


def record(session: Session, policy: PolicyText, actor: str = "gate") -> bool:
    """Record a policy's text in the caller's transaction unless the log holds it already.

    Returns whether it was recorded now. Looked up by the digest of the whole text, not the
    version: two texts whose versions (16 hex digits) collide are both recorded.
    """
    lock_names(session, [_LOCK])
    known = session.scalar(
        select(AuditRow.seq)
        .where(*_ADOPTED, AuditRow.data["sha256"].as_string() == policy.digest)
        .limit(1)
    )
    if known is not None:
        return False
    data = {
        "version": policy.version,
        "sha256": policy.digest,
        "source": policy.source,
        "text": policy.text,
    }
    audit.append(session, KIND, actor=actor, data=data)
    return True


def recorded(store: Store) -> list[RecordedPolicy]:
    """Return every policy text the log records, in the order they were adopted."""
    query = (
        select(AuditRow.seq, AuditRow.at, AuditRow.actor, sql_cast(AuditRow.data, Text))
        .where(*_ADOPTED)
        .order_by(AuditRow.seq)
    )
    with store.reading() as session:
        rows = list(session.execute(query))
    return [_read(seq, at, actor, text) for seq, at, actor, text in rows]


def _read(seq: int, at: str, actor: str, text: str | None) -> RecordedPolicy:
    data = audit.stored_data(seq, text)
    fields = ("version", "sha256", "source", "text")
    if not isinstance(data, dict) or not all(isinstance(data.get(name), str) for name in fields):
        raise AuditBroken(
            f"audit entry {seq} ({KIND}) is not what a gate writes: the log was altered; "
            "`plangate audit verify` names the first broken link"
        )
    version, digest, source, policy = (data[name] for name in fields)
    return RecordedPolicy(version, digest, policy, source, at=at, actor=actor)


class PolicyTexts:
    """Records each policy's text once: the store is asked once per version a process meets."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._known: set[str] = set()

    def adopt(self, policy: PolicyText) -> None:
        """Make sure the log holds this policy's text before anything is decided under it."""
        if policy.digest in self._known:  # every decision passes here: no hashing
            return
        with self._store.session() as session:
            recorded_now = record(session, policy)
        self._known.add(policy.digest)  # once committed: a failed transaction recorded nothing
        if recorded_now:
            log.info(
                "recorded the text of policy version %s (%s) in the audit log",
                policy.version,
                policy.source,
            )
