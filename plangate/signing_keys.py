"""Where the keys live: the gate's private key, and the public keys executors trust.

The gate signs with PLANGATE_SIGNING_KEY_FILE, or with a key it makes once in its data folder
and trusts in the trusted keys folder (`<data_dir>/keys/trusted`, or
PLANGATE_TRUSTED_KEYS_DIR); executors read that folder again when it changes. What is said at
start (a key not trusted, a retired key still in the folder, a new key beside others) is said
here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from plangate.config import Settings
from plangate.errors import ConfigError
from plangate.file_watch import FileWatch
from plangate.signing import SIGNING_KEY_NAME, Signer, TrustedKeys, key_id
from plangate.small_files import read_bytes

log = logging.getLogger(__name__)


def trusted_keys_dir(settings: Settings) -> Path:
    """Return the trusted keys folder: `trusted_keys_dir`, else `<data_dir>/keys/trusted`."""
    return settings.trusted_keys_dir or settings.data_dir / "keys" / "trusted"


def load_or_create_signer(settings: Settings) -> Signer:
    """Load the signing key; the default one is created and its public key trusted on first use.

    A key given in PLANGATE_SIGNING_KEY_FILE is the operator's to trust: it is not written to
    the trusted keys folder, but a gate whose own folder lacks it says so at start (after a
    rotation, executors refused every approval and nothing said why).
    """
    path = settings.signing_key_file
    if path is not None:
        if not path.is_file():
            hint = "create the key there, or unset it to use a generated key"
            raise ConfigError(f"PLANGATE_SIGNING_KEY_FILE: {path} does not exist; {hint}")
        signer = Signer(_read_private_key(path))
        try:
            trusted = {key_id(key) for key in _read_public_keys(trusted_keys_dir(settings))}
        except ConfigError:  # a bad file there is the executors' to report, not the gate's
            trusted = {signer.key_id}
        if signer.key_id not in trusted:
            log.warning(
                "the signing key %s is not in the trusted keys folder %s: executors refuse "
                "what it signs until its public key is in theirs (openssl pkey -in %s -pubout)",
                signer.key_id,
                trusted_keys_dir(settings),
                path,
            )
        _warn_of_a_retired_key(settings, signer)
        return signer
    path = settings.data_dir / "keys" / SIGNING_KEY_NAME
    made = not path.exists()
    if made:
        _create_private_key(path)
    signer = Signer(_read_private_key(path))
    if made:
        _say_new_key(settings, signer, path)
    _publish_once(signer, path, trusted_keys_dir(settings))
    return signer


def _publish_once(signer: Signer, path: Path, folder: Path) -> None:
    """Trust the key made here in `folder`, once: never again after its file was removed there.

    Published on every start, a key an operator revoked (its .pub removed) was trusted again by
    the next restart of the gate, and every executor took it back in silence. The folders it
    was published to are noted beside the key (a crash before the note publishes it again).
    """
    noted = path.with_name(path.name + ".published")
    try:
        published = set(noted.read_text(encoding="utf-8").splitlines()) if noted.exists() else set()
    except OSError:
        published = set()
    where = str(folder.resolve())
    target = folder / (signer.key_id.replace(":", "_") + ".pub")
    if where not in published:
        _publish_public_key(signer.public_key, folder)
        noted.write_text("\n".join(sorted(published | {where})) + "\n", encoding="utf-8")
    elif not target.exists():
        log.warning(
            "the signing key %s (%s) was removed from the trusted keys folder %s, revoked: it is "
            "not trusted again; executors refuse what it signs. Move it out of the data folder "
            "and give this gate another key (PLANGATE_SIGNING_KEY_FILE)",
            signer.key_id,
            path,
            folder,
        )


def _say_new_key(settings: Settings, signer: Signer, path: Path) -> None:
    """Say that a new key was made, louder where others are trusted already.

    A gate that lost its PLANGATE_SIGNING_KEY_FILE (or its data folder) made a key in silence,
    and every executor trusted it at once: a key the operator never chose signed approvals.
    """
    folder = trusted_keys_dir(settings)
    try:
        others = sorted({key_id(key) for key in _read_public_keys(folder)} - {signer.key_id})
    except ConfigError:  # a bad file there is the executors' to report, not the gate's
        others = []
    if not others:
        log.info("made a new signing key %s at %s", signer.key_id, path)
        return
    log.warning(
        "made a new signing key %s at %s, none being in this data folder, and trusted it in %s, "
        "which holds %d other key(s) (%s): if this gate should sign with one of them (its "
        "PLANGATE_SIGNING_KEY_FILE or data folder lost), set PLANGATE_SIGNING_KEY_FILE to it and "
        "move this new key out of the data folder; a gate replica with a key of its own is fine",
        signer.key_id,
        path,
        folder,
        len(others),
        ", ".join(others[:3]) + (" ..." if len(others) > 3 else ""),
    )


_RETIRED: set[str] = set()  # retired keys this process has warned of


def _warn_of_a_retired_key(settings: Settings, signer: Signer) -> None:
    """Say so when the data folder still holds the key the gate made before a rotation.

    Commands run in the folder without PLANGATE_SIGNING_KEY_FILE (`audit checkpoint`, `audit
    export --sign`) would sign with it; a rotation after a leak leaves the leaked key in use.
    """
    old = settings.data_dir / "keys" / SIGNING_KEY_NAME
    try:
        retired = Signer(_read_private_key(old)) if old.is_file() else None
    except ConfigError:
        return
    if retired is not None and retired.key_id != signer.key_id and retired.key_id not in _RETIRED:
        _RETIRED.add(retired.key_id)  # the gate loads its key for each of its parts: once
        log.warning(
            "the data folder still holds the signing key %s (%s), which this gate no longer "
            "signs with: move it out of the folder (keep its public key where approvals and "
            "audit exports are checked)",
            retired.key_id,
            old,
        )


def load_signer(settings: Settings) -> Signer:
    """Load the gate's signing key where it is; never make one (a new key proves nothing)."""
    path = settings.signing_key_file or settings.data_dir / "keys" / SIGNING_KEY_NAME
    if not path.is_file():
        hint = (
            "run this where the gate's key is (its PLANGATE_DATA_DIR or PLANGATE_SIGNING_KEY_FILE)"
        )
        raise ConfigError(f"no signing key at {path}; {hint}")
    return Signer(_read_private_key(path))


# deploy/kubernetes/secret.yaml's placeholder keys say this where the key would be.
_PLACEHOLDER = b"REPLACE WITH THE OUTPUT OF"


def _placeholder(path: Path, data: bytes, what: str) -> None:
    if _PLACEHOLDER in data:  # said as an unreadable PEM, it named no cause (InvalidByte(22))
        raise ConfigError(
            f"{what} {path} is still deploy/'s placeholder: make the key pair "
            "(`openssl genpkey -algorithm ed25519 -out signing.key`, then `openssl pkey -in "
            "signing.key -pubout -out gate.pub`) and put it in the secret (deploy/README.md)"
        )


def read_public_key(path: Path) -> Ed25519PublicKey:
    """Read one PEM Ed25519 public key (a `*.pub` of the trusted keys folder)."""
    try:
        data = read_bytes(path)
        _placeholder(path, data, "key file")
        key = serialization.load_pem_public_key(data)
    except (OSError, ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"key file {path} is unreadable: {exc}; fix or remove it") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"key file {path} is not an Ed25519 public key; fix or remove it")
    return key


def load_trusted_keys(settings: Settings) -> TrustedKeys:
    """Load every `*.pub` (PEM Ed25519 public key) in the trusted keys folder."""
    directory = trusted_keys_dir(settings)
    # A folder not made yet on a volume that is there (the gate makes it as it starts; an
    # executor may start first) is empty, read again for each key not known: it is no error.
    # Not `not exists()`: a gate making the folder between two looks made it "no folder".
    placed = directory.is_dir() or (directory.parent.is_dir() and not directory.is_file())
    if not placed and settings.trusted_keys_dir is not None:
        raise ConfigError(f"PLANGATE_TRUSTED_KEYS_DIR names {directory}, which is no folder")
    return TrustedKeys(
        _read_public_keys(directory),
        reload=lambda: _read_public_keys(directory),
        folder=directory,
    )


def _read_public_keys(directory: Path) -> list[Ed25519PublicKey]:
    if not directory.is_dir():
        return []
    try:  # not glob(), which takes a folder it may not read for an empty one
        names = sorted(path for path in directory.iterdir() if path.suffix == ".pub")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the trusted keys folder {directory} ({exc.strerror}): let this "
            "process's user read it, or set PLANGATE_TRUSTED_KEYS_DIR to one it can read"
        ) from exc
    return [read_public_key(path) for path in names]


def _create_private_key(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Written whole to a private temporary file, then linked into place: the link fails if
    # another process got there first (we then use its key), and no one reads half a key.
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "xb", opener=lambda name, flags: os.open(name, flags, 0o600)) as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):  # another process won; use its key
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _publish_public_key(public_key: Ed25519PublicKey, directory: Path) -> None:
    target = directory / (key_id(public_key).replace(":", "_") + ".pub")
    if target.exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Renamed into place so a reader never sees a half-written (malformed) key file.
    temporary = directory / f".{target.name}.{uuid.uuid4().hex}.tmp"
    temporary.write_bytes(pem)
    os.replace(temporary, target)


def _read_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = read_bytes(path)
        _placeholder(path, data, "signing key file")
        key = serialization.load_pem_private_key(data, password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"signing key file {path} is unreadable: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key file {path} is not an Ed25519 private key")
    return key


def own_key_watch(settings: Settings) -> Callable[[], None]:
    """Return what a gate's sweep calls to say when its own key leaves the trusted folder.

    Executors refuse what a key out of their folder signs; a gate whose key was removed there
    (a revocation, a slip) signed on, and only the executors' logs said why nothing ran. Said
    when the folder changes so; its state at start is said as the key is loaded.
    """
    signer = load_or_create_signer(settings)
    folder = trusted_keys_dir(settings)
    watch = FileWatch(folder)

    def look() -> None:
        if not watch.changed():
            return
        try:
            trusted = {key_id(key) for key in _read_public_keys(folder)}
        except ConfigError:  # a bad file there is the executors' to report
            return
        if signer.key_id not in trusted:
            log.warning(
                "this gate signs with %s, which the trusted keys folder %s no longer holds: "
                "executors refuse what it signs; put its .pub back, or give the gate a key "
                "that is there (PLANGATE_SIGNING_KEY_FILE)",
                signer.key_id,
                folder,
            )

    return look
