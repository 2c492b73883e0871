"""Signed approvals: DSSE envelopes, Ed25519, pinned key ids, expiry, the plan hash, key files."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from plangate.config import Settings
from plangate.errors import ApprovalInvalid, ConfigError
from plangate.signing import PAYLOAD_TYPE, Signer, TrustedKeys, approval_payload, key_id, pae
from plangate.signing_keys import load_or_create_signer, load_trusted_keys, own_key_watch
from schemas import Decision, Plan, Signature, SignedEnvelope, Step, canonical_json
from tests.support import outer_environment, plangate_in, write_private_key

PLAN = Plan(
    plan_id="p1",
    goal_id="g1",
    revision=1,
    steps=(Step(id="notify", tool="notify", args={"to": "ops", "text": "status"}),),
)
APPROVE = Decision(
    action="approve", decided_by="policy", rule="read-only", reason="ok", policy_version="v1"
)
HOUR = timedelta(hours=1)


@pytest.fixture
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


@pytest.fixture
def trusted(signer: Signer) -> TrustedKeys:
    return TrustedKeys([signer.public_key])


def settings_in(tmp_path: Path, trusted_keys_dir: Path | None = None) -> Settings:
    return Settings(data_dir=tmp_path, signing_key_file=None, trusted_keys_dir=trusted_keys_dir)


def reencoded(envelope: SignedEnvelope, payload: bytes) -> SignedEnvelope:
    return envelope.model_copy(update={"payload": base64.b64encode(payload).decode()})


def test_pae_matches_the_dsse_specification_example() -> None:
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_counts_bytes_not_characters() -> None:
    assert pae("t", "é".encode()) == b"DSSEv1 1 t 2 " + "é".encode()


def test_key_id_is_a_short_hash_of_the_public_key(signer: Signer) -> None:
    assert signer.key_id == key_id(signer.public_key)
    assert signer.key_id.startswith("ed25519:")
    assert len(signer.key_id) == len("ed25519:") + 16


def test_sign_and_verify_round_trip(signer: Signer, trusted: TrustedKeys) -> None:
    # Given an approval of a plan, signed
    approval = signer.approval(PLAN, APPROVE, HOUR)
    envelope = signer.sign(approval)
    # Then the envelope is DSSE over the approval's canonical JSON
    assert envelope.payload_type == PAYLOAD_TYPE
    assert base64.b64decode(envelope.payload) == approval_payload(approval)
    assert [s.keyid for s in envelope.signatures] == [signer.key_id]
    # And a holder of the public key gets the same approval back
    assert trusted.verify(envelope) == approval
    assert trusted.verify_for_plan(envelope, PLAN) == approval


def test_the_approval_records_the_plan_and_the_decision(signer: Signer) -> None:
    approval = signer.approval(PLAN, APPROVE, HOUR)
    assert (approval.plan_id, approval.goal_id, approval.revision) == ("p1", "g1", 1)
    assert (approval.decided_by, approval.rule, approval.policy_version) == (
        "policy",
        "read-only",
        "v1",
    )
    assert approval.expires_at - approval.issued_at == HOUR


def test_only_an_approve_decision_becomes_an_approval(signer: Signer) -> None:
    with pytest.raises(ValueError, match="hold"):
        signer.approval(PLAN, APPROVE.model_copy(update={"action": "hold"}), HOUR)


def test_a_payload_changed_by_one_byte_is_refused(signer: Signer, trusted: TrustedKeys) -> None:
    # Given a signed approval whose payload is altered after signing
    envelope = signer.sign(signer.approval(PLAN, APPROVE, HOUR))
    payload = base64.b64decode(envelope.payload).replace(b'"p1"', b'"p2"')
    # When it is verified
    with pytest.raises(ApprovalInvalid, match="does not match the payload"):
        trusted.verify(reencoded(envelope, payload))


def test_a_different_payload_type_is_refused(signer: Signer, trusted: TrustedKeys) -> None:
    envelope = signer.sign(signer.approval(PLAN, APPROVE, HOUR))
    with pytest.raises(ApprovalInvalid, match="payload type"):
        trusted.verify(envelope.model_copy(update={"payload_type": "application/json"}))


def test_a_signature_by_an_untrusted_key_is_refused(trusted: TrustedKeys) -> None:
    # Given an approval signed by a key the executor does not hold
    stranger = Signer(Ed25519PrivateKey.generate())
    envelope = stranger.sign(stranger.approval(PLAN, APPROVE, HOUR))
    # Then it is refused, saying what to do
    expected = (
        f"signed by unknown key {stranger.key_id}; if it is your gate's key, add its public key "
        "(from the gate's data folder) to the trusted keys folder; if no gate of yours has it, "
        "the message is forged: do not trust it"
    )
    with pytest.raises(ApprovalInvalid) as raised:
        trusted.verify(envelope)
    assert raised.value.reason == expected


def test_a_forged_signature_under_a_trusted_key_id_is_refused(
    signer: Signer, trusted: TrustedKeys
) -> None:
    # Given an envelope signed by a stranger but claiming the trusted key's id
    stranger = Signer(Ed25519PrivateKey.generate())
    forged = stranger.sign(stranger.approval(PLAN, APPROVE, HOUR))
    claimed = forged.signatures[0].model_copy(update={"keyid": signer.key_id})
    # Then the signature does not verify
    with pytest.raises(ApprovalInvalid, match="does not match the payload"):
        trusted.verify(forged.model_copy(update={"signatures": [claimed]}))


def test_an_approval_naming_another_key_than_its_signer_is_refused() -> None:
    # Given a trusted key that signs an approval naming another key id (Signer.sign refuses
    # to, so the envelope is made by hand)
    private_key = Ed25519PrivateKey.generate()
    trusted = TrustedKeys([private_key.public_key()])
    other = Signer(Ed25519PrivateKey.generate())
    payload = canonical_json(other.approval(PLAN, APPROVE, HOUR))
    sig = private_key.sign(pae(PAYLOAD_TYPE, payload))
    envelope = SignedEnvelope(
        payload_type=PAYLOAD_TYPE,
        payload=base64.b64encode(payload).decode(),
        signatures=[
            Signature(keyid=key_id(private_key.public_key()), sig=base64.b64encode(sig).decode())
        ],
    )
    # Then it is refused
    with pytest.raises(ApprovalInvalid, match="names key"):
        trusted.verify(envelope)


def test_signing_an_approval_that_names_another_key_is_an_error(signer: Signer) -> None:
    approval = signer.approval(PLAN, APPROVE, HOUR).model_copy(update={"key_id": "ed25519:0"})
    with pytest.raises(ValueError, match="names key"):
        signer.sign(approval)


def test_an_expired_approval_is_refused(signer: Signer, trusted: TrustedKeys) -> None:
    # Given an approval valid for an hour
    approval = signer.approval(PLAN, APPROVE, HOUR)
    envelope = signer.sign(approval)
    # Then it holds a moment before it expires, and is refused from then on
    assert trusted.verify(envelope, now=approval.expires_at - timedelta(seconds=1))
    with pytest.raises(ApprovalInvalid, match="expired at") as raised:
        trusted.verify(envelope, now=approval.expires_at)
    assert approval.expires_at.isoformat() in raised.value.reason


def test_a_plan_changed_after_approval_is_refused(signer: Signer, trusted: TrustedKeys) -> None:
    # Given an approved plan
    envelope = signer.sign(signer.approval(PLAN, APPROVE, HOUR))
    # When one argument of one step changes
    step = PLAN.steps[0].model_copy(update={"args": {"to": "everyone", "text": "status"}})
    changed = PLAN.model_copy(update={"steps": (step,)})
    # Then the approval does not hold for it
    with pytest.raises(ApprovalInvalid, match="the plan differs from the one approved"):
        trusted.verify_for_plan(envelope, changed)


def test_another_revision_of_the_plan_is_refused(signer: Signer, trusted: TrustedKeys) -> None:
    envelope = signer.sign(signer.approval(PLAN, APPROVE, HOUR))
    with pytest.raises(ApprovalInvalid, match="revision"):
        trusted.verify_for_plan(envelope, PLAN.model_copy(update={"revision": 2}))


def test_a_signed_payload_that_is_not_an_approval_is_refused() -> None:
    private_key = Ed25519PrivateKey.generate()
    payload = b'{"plan_id": "p1"}'
    sig = private_key.sign(pae(PAYLOAD_TYPE, payload))
    envelope = SignedEnvelope(
        payload_type=PAYLOAD_TYPE,
        payload=base64.b64encode(payload).decode(),
        signatures=[
            Signature(keyid=key_id(private_key.public_key()), sig=base64.b64encode(sig).decode())
        ],
    )
    with pytest.raises(ApprovalInvalid, match="not a valid approval"):
        TrustedKeys([private_key.public_key()]).verify(envelope)


# --- key files ------------------------------------------------------------------------------


def test_the_signing_key_is_created_once_and_private(tmp_path: Path) -> None:
    # Given an empty data folder
    settings = settings_in(tmp_path)
    # When the signer is loaded twice
    first = load_or_create_signer(settings)
    second = load_or_create_signer(settings)
    # Then one key was made, readable by its owner only, and reused
    key_file = tmp_path / "keys" / "approval-signing.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert second.key_id == first.key_id
    # And its public key is trusted, so approvals it signs verify
    public_file = tmp_path / "keys" / "trusted" / (first.key_id.replace(":", "_") + ".pub")
    assert public_file.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    trusted = load_trusted_keys(settings)
    assert list(trusted) == [first.key_id]
    assert trusted.verify(second.sign(second.approval(PLAN, APPROVE, HOUR)))


def test_concurrent_first_runs_make_one_key(tmp_path: Path) -> None:
    # Given eight threads that all start on an empty data folder at once
    settings = settings_in(tmp_path)
    barrier = threading.Barrier(8)
    key_ids: list[str] = []

    def start() -> None:
        barrier.wait()
        key_ids.append(load_or_create_signer(settings).key_id)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then they all use one key, and no temporary files are left behind
    assert len(key_ids) == 8
    assert len(set(key_ids)) == 1
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [
        "approval-signing.pem",
        "approval-signing.pem.published",
        "trusted",
    ]
    assert len(list((tmp_path / "keys" / "trusted").iterdir())) == 1


def test_a_configured_signing_key_file_must_exist(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, signing_key_file=tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="PLANGATE_SIGNING_KEY_FILE"):
        load_or_create_signer(settings)


def test_a_configured_signing_key_file_is_used(tmp_path: Path) -> None:
    made = load_or_create_signer(settings_in(tmp_path / "elsewhere"))
    key_file = tmp_path / "elsewhere" / "keys" / "approval-signing.pem"
    settings = Settings(data_dir=tmp_path / "data", signing_key_file=key_file)
    assert load_or_create_signer(settings).key_id == made.key_id


def test_a_malformed_trusted_key_file_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "trusted"
    folder.mkdir()
    (folder / "broken.pub").write_text("not a key")
    settings = Settings(data_dir=tmp_path, trusted_keys_dir=folder)
    with pytest.raises(ConfigError, match=r"broken\.pub"):
        load_trusted_keys(settings)


def test_no_trusted_keys_folder_trusts_no_one(tmp_path: Path) -> None:
    assert len(load_trusted_keys(settings_in(tmp_path))) == 0


def test_a_configured_trusted_keys_folder_must_be_on_a_folder_that_exists(tmp_path: Path) -> None:
    """A typo names no folder at all: refused. One not made yet on a volume that is there (the
    gate makes it as it starts) holds no key yet, and is read again for each unknown key."""
    nowhere = Settings(data_dir=tmp_path, trusted_keys_dir=tmp_path / "missing" / "trusted")
    with pytest.raises(ConfigError, match="PLANGATE_TRUSTED_KEYS_DIR"):
        load_trusted_keys(nowhere)

    not_yet = Settings(data_dir=tmp_path, trusted_keys_dir=tmp_path / "trusted")
    assert len(load_trusted_keys(not_yet)) == 0


def test_a_refusal_names_a_few_unknown_keys_once_each_not_every_one(
    signer: Signer, trusted: TrustedKeys
) -> None:
    # Given an approval whose signatures name the same unknown key twice and four more
    envelope = signer.sign(signer.approval(PLAN, APPROVE, HOUR))
    names = ["../../etc/passwd", "../../etc/passwd", "k2", "k3", "k4", "k5"]
    forged = envelope.model_copy(
        update={"signatures": [Signature(keyid=name, sig="c2ln") for name in names]}
    )
    # Then the reason names three, once each, and counts the rest
    with pytest.raises(ApprovalInvalid) as refused:
        trusted.verify(forged)
    assert str(refused.value).startswith(
        "approval refused: signed by unknown key ../../etc/passwd, k2, k3 and 2 more; "
        "if it is your gate's key"
    )


def test_an_envelope_of_thousands_of_signatures_is_refused_when_decoded() -> None:
    many = [Signature(keyid=f"k{n}", sig="c2ln").model_dump() for n in range(5000)]
    with pytest.raises(ValidationError, match="at most 8 items"):
        SignedEnvelope.model_validate({"payloadType": "x", "payload": "e30=", "signatures": many})


def test_a_rotated_key_the_gates_folder_does_not_trust_is_warned_of_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a gate that generated its key, then is pointed at a new key file (a rotation)
    whose public key nobody put in the trusted keys folder,
    When it starts again,
    Then it signs with the new key, and warns that executors refuse what it signs until they
    have its public key, saying how to make it (nothing said so; every approval was refused).
    A given key is the operator's to trust: it is not written to the folder.
    """
    first = load_or_create_signer(settings_in(tmp_path / "gate"))
    new_key = tmp_path / "rotated.pem"
    new_key.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    rotated = Settings(data_dir=tmp_path / "gate", signing_key_file=new_key)

    with caplog.at_level("WARNING", logger="plangate.signing_keys"):
        second = load_or_create_signer(rotated)

    assert second.key_id != first.key_id
    assert f"the signing key {second.key_id} is not in the trusted keys folder" in caplog.text
    assert f"openssl pkey -in {new_key} -pubout" in caplog.text
    assert set(load_trusted_keys(rotated)) == {first.key_id}


def test_a_given_key_the_gates_folder_trusts_starts_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    made = load_or_create_signer(settings_in(tmp_path / "gate"))
    key_file = tmp_path / "gate" / "keys" / "approval-signing.pem"

    with caplog.at_level("WARNING", logger="plangate.signing_keys"):
        signer = load_or_create_signer(
            Settings(data_dir=tmp_path / "gate", signing_key_file=key_file)
        )

    assert signer.key_id == made.key_id
    assert caplog.text == ""


@pytest.mark.redis
def test_an_executor_that_cannot_read_its_trusted_keys_folder_says_so_and_stops(
    tmp_path: Path, redis_url: str
) -> None:
    """Given a trusted keys folder holding the gate's key, that the executor's user may not read,
    When the executor starts,
    Then it exits 2 in one line saying it cannot read the folder: it said the folder held no
    key, went on consuming and answered ready, and approvals piled up unchecked.
    """
    folder = tmp_path / "trusted"
    folder.mkdir()
    public = Ed25519PrivateKey.generate().public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (folder / "gate.pub").write_bytes(pem)
    os.chown(folder, 65534, 65534)  # nobody's
    folder.chmod(0)
    # Root reads any folder: without the capabilities that let it, as the helper found it.
    unprivileged = (
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    )
    env = outer_environment() | {
        "PLANGATE_DATA_DIR": str(tmp_path / "data"),
        "PLANGATE_BROKER_URL": redis_url,
        "PLANGATE_TRUSTED_KEYS_DIR": str(folder),
    }
    upgraded = subprocess.run(
        [sys.executable, "-m", "plangate", "db", "upgrade"],
        env=env,
        capture_output=True,
        check=False,
    )
    assert upgraded.returncode == 0, upgraded.stderr
    try:
        started = subprocess.run(
            [*unprivileged, sys.executable, "-m", "plangate", "worker", "executor"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        folder.chmod(0o700)

    assert started.returncode == 2, started.stderr
    assert f"cannot read the trusted keys folder {folder} (Permission denied)" in started.stderr


def test_a_gate_pointed_at_a_new_key_warns_while_its_folder_holds_the_old_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a rotation the gate's data folder still held the key it made at first, and
    `audit checkpoint` and `audit export --sign` run there signed with it: the key a rotation
    after a leak meant to retire. The gate says so at each start until it is moved out."""
    first = load_or_create_signer(settings_in(tmp_path / "gate"))
    new_key = tmp_path / "rotated.pem"
    write_private_key(new_key)
    rotated = Settings(data_dir=tmp_path / "gate", signing_key_file=new_key)

    with caplog.at_level("WARNING", logger="plangate.signing_keys"):
        load_or_create_signer(rotated)
    said = caplog.text
    caplog.clear()
    (tmp_path / "gate" / "keys" / "approval-signing.pem").rename(tmp_path / "old.pem")
    with caplog.at_level("WARNING", logger="plangate.signing_keys"):
        load_or_create_signer(rotated)

    assert f"the data folder still holds the signing key {first.key_id}" in said
    assert "move it out of the folder" in said
    assert "still holds" not in caplog.text


def test_a_gate_making_a_key_beside_others_already_trusted_says_how_to_use_one_of_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a trusted keys folder that holds another gate's key (this gate's
    PLANGATE_SIGNING_KEY_FILE lost in a redeploy), When the gate starts with an empty data
    folder, Then it makes a key and says so as a warning naming the keys already there and
    PLANGATE_SIGNING_KEY_FILE (it did so in silence, and every executor trusted the key);
    alone in the folder, a new key is said at info."""
    shared = tmp_path / "trusted"
    first = load_or_create_signer(settings_in(tmp_path / "first", trusted_keys_dir=shared))
    with caplog.at_level("INFO", logger="plangate.signing_keys"):
        second = load_or_create_signer(settings_in(tmp_path / "second", trusted_keys_dir=shared))
        load_or_create_signer(settings_in(tmp_path / "second", trusted_keys_dir=shared))

    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert f"made a new signing key {second.key_id}" in warnings[0]
    assert f"which holds 1 other key(s) ({first.key_id})" in warnings[0]
    assert "set PLANGATE_SIGNING_KEY_FILE to it" in warnings[0]


def test_a_key_revoked_from_the_trusted_folder_is_not_trusted_again_when_the_gate_restarts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a gate whose key it made is trusted in a shared folder,
    When the operator removes that .pub (a revocation) and the gate starts again,
    Then the .pub is not written back (it was, at every start: every executor trusted the
    revoked key again), and the gate warns that executors refuse what it signs;
    Given a trusted keys folder the gate never published to (moved to a shared volume),
    Then its key is published there.
    """
    shared = tmp_path / "trusted"
    settings = settings_in(tmp_path / "gate", trusted_keys_dir=shared)
    signer = load_or_create_signer(settings)
    (published,) = shared.glob("*.pub")
    published.unlink()

    with caplog.at_level("WARNING", logger="plangate.signing_keys"):
        again = load_or_create_signer(settings)
    moved = tmp_path / "volume" / "trusted"
    load_or_create_signer(settings_in(tmp_path / "gate", trusted_keys_dir=moved))

    assert again.key_id == signer.key_id
    assert list(shared.glob("*.pub")) == []
    assert f"the signing key {signer.key_id}" in caplog.text
    assert "was removed from the trusted keys folder" in caplog.text
    assert "it is not trusted again" in caplog.text
    assert [p.name for p in moved.glob("*.pub")] == [published.name]


def test_a_gate_says_when_its_own_key_leaves_the_trusted_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a gate's key trusted in the shared folder, When its .pub is removed there (the gate
    running), Then the gate's next sweep warns that executors refuse what it signs, once:
    it signed on in silence, and only the executors' logs said why nothing ran."""
    shared = tmp_path / "trusted"
    settings = settings_in(tmp_path / "gate", trusted_keys_dir=shared)
    look = own_key_watch(settings)
    with caplog.at_level("WARNING", logger="plangate.signing_keys"):
        look()
        quiet = caplog.text
        (published,) = shared.glob("*.pub")
        published.unlink()
        look()
        look()

    assert quiet == ""
    assert caplog.text.count("which the trusted keys folder") == 1
    assert "executors refuse what it signs; put its .pub back" in caplog.text


def test_a_gate_that_refuses_its_policy_makes_and_publishes_no_signing_key(tmp_path: Path) -> None:
    """Given a fresh data folder and trusted keys folder, and a policy file with a rule that
    does not compile,
    When `plangate worker gate` starts,
    Then it exits 2 naming the rule, and leaves no key in either folder: it made a key and
    published its .pub to the folder executors read before it read its policy.
    """
    data, shared = tmp_path / "gate", tmp_path / "trusted"
    shared.mkdir()
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "rules:\n  - {name: half-typed, match: 'plan.steps.all(s,', action: deny, reason: r}\n"
    )
    env = {
        "PLANGATE_BROKER_URL": "memory://",
        "PLANGATE_POLICY_FILE": str(policy),
        "PLANGATE_TRUSTED_KEYS_DIR": str(shared),
    }
    assert plangate_in(data, "db", "upgrade").returncode == 0

    started = plangate_in(data, "worker", "gate", **env)

    assert started.returncode == 2, started.stderr
    assert "rule 'half-typed'" in started.stderr
    assert not (data / "keys").exists()
    assert list(shared.iterdir()) == []
