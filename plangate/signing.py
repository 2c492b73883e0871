"""Signed approvals: an Approval in a DSSE envelope, signed with Ed25519.

The gate signs; executors hold only public keys, pinned by key id. This lives in `plangate`
because the gate and the executor both need it and stage packages may not import each other.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from plangate.errors import ApprovalInvalid, UnknownSigner
from plangate.file_watch import FileWatch
from schemas import Approval, Decision, MessageRejected, Plan, Signature, SignedEnvelope, utcnow
from schemas.decoding import strict_json_loads
from schemas.hashing import canonical_json, plan_hash

PAYLOAD_TYPE = "application/vnd.plangate.approval+json"
SIGNING_KEY_NAME = "approval-signing.pem"


def pae(payload_type: str, payload: bytes) -> bytes:
    """Return the DSSEv1 pre-authentication encoding of a payload and its type."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


log = logging.getLogger(__name__)


def key_id(public_key: Ed25519PublicKey) -> str:
    """Return `ed25519:<first 16 hex of sha256(raw public key)>`, the id keys are pinned by."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


class Signer:
    """Signs approvals with one Ed25519 private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    def approval(
        self, plan: Plan, decision: Decision, ttl: timedelta, approvers: Sequence[str] = ()
    ) -> Approval:
        """Return the unsigned approval, by this key, of this exact plan, valid for `ttl`.

        `approvers` names every reviewer whose approval released it, where several were needed.
        """
        if decision.action != "approve":
            raise ValueError(f"a {decision.action!r} decision cannot be an approval")
        now = utcnow()
        return Approval(
            plan_id=plan.plan_id,
            plan_hash=plan_hash(plan),
            goal_id=plan.goal_id,
            revision=plan.revision,
            decided_by=decision.decided_by,
            rule=decision.rule,
            policy_version=decision.policy_version,
            key_id=self.key_id,
            issued_at=now,
            expires_at=now + ttl,
            approvers=tuple(approvers),
        )

    def sign(self, approval: Approval) -> SignedEnvelope:
        """Return a DSSE envelope of the approval's canonical JSON, signed over PAE."""
        if approval.key_id != self.key_id:
            raise ValueError(f"the approval names key {approval.key_id}, not {self.key_id}")
        return self.envelope(PAYLOAD_TYPE, approval_payload(approval))

    def envelope(self, payload_type: str, payload: bytes) -> SignedEnvelope:
        """Return a DSSE envelope of any payload of this type, signed over PAE."""
        sig = self._private_key.sign(pae(payload_type, payload))
        return SignedEnvelope(
            payload_type=payload_type,
            payload=base64.b64encode(payload).decode("ascii"),
            signatures=[Signature(keyid=self.key_id, sig=base64.b64encode(sig).decode("ascii"))],
        )


def approval_payload(approval: Approval) -> bytes:
    """Return the canonical JSON of an approval, as it is signed.

    Without approvers (a policy's or one person's approval) the field is left out, as before
    M-of-N approvals: an executor of the previous version still reads it.
    """
    body = approval.model_dump(mode="json")
    if not approval.approvers:
        del body["approvers"]
    return canonical_json(body)


class TrustedKeys(Mapping[str, Ed25519PublicKey]):
    """The public keys an executor accepts approvals from, by key id."""

    def __init__(
        self,
        keys: Iterable[Ed25519PublicKey] = (),
        reload: Callable[[], Iterable[Ed25519PublicKey]] | None = None,
        folder: Path | None = None,
    ) -> None:
        """Trust `keys`; `reload` reads them again, when `folder` changes or a key is unknown.

        The folder is looked at (one `stat`) before each check: a key whose file is removed
        (revoked) is refused from the next check on, with no restart.
        """
        self._keys = {key_id(key): key for key in keys}
        self._reload = reload
        self._folder = FileWatch(folder) if folder is not None and reload is not None else None

    def __getitem__(self, keyid: str) -> Ed25519PublicKey:
        return self._keys[keyid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def verify(
        self, envelope: SignedEnvelope, now: datetime | None = None, *, allow_expired: bool = False
    ) -> Approval:
        """Return the approval if a trusted key signed it and it has not expired; else refuse.

        `allow_expired` leaves the expiry to the caller, who knows whether the approval is
        starting a run (it must not have expired) or resuming one it already started.
        """
        payload, signature = self.verified_payload(envelope, PAYLOAD_TYPE)
        approval = _decode_approval(payload)
        if approval.key_id != signature.keyid:
            problem = f"the approval names key {_short(approval.key_id)}, not its signer's"
            raise ApprovalInvalid(f"{problem} ({signature.keyid})")
        if approval.expires_at.tzinfo is None:
            raise ApprovalInvalid("the approval's expiry has no time zone")
        if not allow_expired:
            ensure_unexpired(approval, now)
        return approval

    def verified_payload(
        self, envelope: SignedEnvelope, payload_type: str
    ) -> tuple[bytes, Signature]:
        """Return the payload of an envelope of this type and the trusted signature over it.

        Raises ApprovalInvalid when the type differs or no trusted key signed this payload.
        """
        if envelope.payload_type != payload_type:
            kind = _short(envelope.payload_type)
            raise ApprovalInvalid(f"the payload type is {kind}, not {payload_type}")
        payload = _b64decode(envelope.payload, "payload")
        signature = self._verified_signature(pae(envelope.payload_type, payload), envelope)
        return payload, signature

    def verify_for_plan(
        self,
        envelope: SignedEnvelope,
        plan: Plan,
        now: datetime | None = None,
        *,
        allow_expired: bool = False,
    ) -> Approval:
        """Verify the envelope, then check that it approves exactly this plan (by hash)."""
        approval = self.verify(envelope, now, allow_expired=allow_expired)
        ours = (plan.plan_id, plan.goal_id, plan.revision, plan_hash(plan))
        approved = (approval.plan_id, approval.goal_id, approval.revision, approval.plan_hash)
        names = ("plan_id", "goal_id", "revision", "plan_hash")
        differences = [name for name, a, b in zip(names, ours, approved, strict=True) if a != b]
        if differences:
            problem = f"the plan differs from the one approved ({', '.join(differences)} differ)"
            raise ApprovalInvalid(f"{problem}; it must be approved again")
        return approval

    def _verified_signature(self, message: bytes, envelope: SignedEnvelope) -> Signature:
        if self._folder is not None and self._reload is not None and self._folder.changed():
            # A key added, replaced or removed: a revoked key must stop counting at once, not
            # at the next restart (it was only ever added to).
            self._keys = {key_id(key): key for key in self._reload()}
        trusted = [s for s in envelope.signatures if s.keyid in self._keys]
        if not trusted and self._reload is not None:
            # A gate may have made its key after this executor started: look at the folder again.
            self._keys = {key_id(key): key for key in self._reload()}
            trusted = [s for s in envelope.signatures if s.keyid in self._keys]
        if not trusted:
            named = list(dict.fromkeys(_short(s.keyid) for s in envelope.signatures))
            unknown = ", ".join(named[:3]) + (
                f" and {len(named) - 3} more" if len(named) > 3 else ""
            )
            # Said so that no forger is trusted on its own word: a gate's key is added from
            # the gate's own folder, never from what a message names.
            hint = (
                "if it is your gate's key, add its public key (from the gate's data folder) to "
                "the trusted keys folder; if no gate of yours has it, the message is forged: "
                "do not trust it"
            )
            raise UnknownSigner(f"signed by unknown key {unknown}; {hint}", tuple(named))
        for signature in trusted:
            with contextlib.suppress(InvalidSignature, ApprovalInvalid):
                self._keys[signature.keyid].verify(_b64decode(signature.sig, "signature"), message)
                return signature
        problem = f"the signature by key {trusted[0].keyid} does not match the payload"
        raise ApprovalInvalid(f"{problem}: it was altered or forged")


def ensure_unexpired(approval: Approval, now: datetime | None = None) -> None:
    """Refuse an approval past its expiry."""
    if approval.expires_at <= (now or utcnow()):
        raise ApprovalInvalid(f"the approval expired at {approval.expires_at.isoformat()}")


def _decode_approval(payload: bytes) -> Approval:
    try:
        return Approval.model_validate(strict_json_loads(payload))
    except (MessageRejected, ValidationError) as exc:
        first_line = str(exc).splitlines()[0]  # pydantic goes on to echo the input values
        raise ApprovalInvalid(f"the payload is not a valid approval: {first_line}") from exc


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:  # binascii.Error is a ValueError
        raise ApprovalInvalid(f"the {what} is not valid base64") from exc


def _short(text: str) -> str:
    # Envelope fields come from the wire; keep what we echo into reasons short and printable.
    return "".join(c if c.isprintable() else "?" for c in text[:80])
