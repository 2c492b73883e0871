"""Signed audit exports: a DSSE envelope over a manifest of the export, checked offline.

`plangate audit export --sign` writes `<export>.dsse.json` next to the export: a DSSE envelope
(standard field names, Ed25519 over PAE, signed by the gate's key) whose payload is a manifest
of the range, the count, the first and last entry hashes and the export file's SHA-256. An
auditor checks it with only the public key (`plangate audit verify --export FILE`): the
signature, the file's digest, and every entry's hash and link within the file. A file that is
not the one signed is read on, to say where it breaks (`plangate.export_breaks`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from plangate.errors import ApprovalInvalid, ConfigError, UnknownSigner
from plangate.export_breaks import first_break
from plangate.export_file import chain_problem, numbered_entries
from plangate.export_records import read_entry, records_path, records_problem
from plangate.signing import Signer, TrustedKeys
from plangate.store.audit_recorded import Recorded
from schemas import MessageRejected, SignedEnvelope, utcnow
from schemas.decoding import strict_json_loads
from schemas.hashing import canonical_json

MANIFEST_TYPE = "application/vnd.plangate.audit-manifest+json"
MANIFEST_SUFFIX = ".dsse.json"
_MANIFEST_LIMIT = 64 * 1024  # a manifest is a few hundred bytes: anything far larger is not one


@dataclass
class ExportSummary:
    """What an export holds, counted while it is written: the manifest's facts."""

    count: int = 0
    first: dict[str, Any] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)
    # What the exported entries say of each goal: the records written beside are only those
    # they vouch for (a plan proposed before --since, a step finished after, are not).
    recorded: dict[str, Recorded] = field(default_factory=dict)

    def counted(self, entries: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Pass the entries through, noting how many, the first and last, and their goals."""
        for entry in entries:
            if not self.count:
                self.first = entry
            self.count += 1
            self.last = entry
            if entry.get("goal_id"):
                read_entry(self.recorded, entry)
            yield entry


def manifest_path(export: Path) -> Path:
    """Return where the signed manifest of an export is written: next to it."""
    return export.with_name(export.name + MANIFEST_SUFFIX)


def sign_export(
    export: Path,
    summary: ExportSummary,
    signer: Signer,
    scope: Mapping[str, str | list[str] | None],
    records: Path | None = None,
) -> Path:
    """Write the signed manifest of a finished export file; return its path.

    `scope` says how the export was chosen (format, since, until, the goal or goals), for the
    auditor to read;
    `records`, the plans and step results written beside it (`plangate.export_records`).
    """
    manifest = {
        "file": export.name,
        "sha256": _sha256(export),
        "count": summary.count,
        "first_seq": summary.first.get("seq"),
        "last_seq": summary.last.get("seq"),
        "first_hash": summary.first.get("hash"),
        "last_hash": summary.last.get("hash"),
        "scope": dict(scope),
        "exported_at": utcnow().isoformat(),
    }
    if records is not None:  # signed with the entries
        manifest["records"] = {"file": records.name, "sha256": _sha256(records)}
    envelope = signer.envelope(MANIFEST_TYPE, canonical_json(manifest))
    target = manifest_path(export)
    target.write_text(envelope.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return target


@dataclass(frozen=True)
class ExportReport:
    """The result of checking a signed export: the signer and count, or the first problem."""

    entries: int = 0
    key_id: str = ""
    problem: str | None = None
    part: str | None = None  # what of the log the export holds, if not all of it
    records: Path | None = None  # the records checked with it, if its manifest signs some
    record_count: int | None = None  # how many records that file holds

    @property
    def ok(self) -> bool:
        """Return True when the signature, the digest and every entry hold."""
        return self.problem is None


def verify_export(
    export: Path, keys: TrustedKeys, manifest: Path | None = None, records: Path | None = None
) -> ExportReport:
    """Check an export against its signed manifest, offline, with only public keys.

    `records`: the records signed with it, if not beside it (`_records_file`).
    """
    manifest = manifest or manifest_path(export)
    try:
        facts, key_id = _signed_manifest(manifest, keys)
    except ApprovalInvalid as exc:  # its reason: a manifest is no approval
        return ExportReport(problem=f"the manifest {manifest.name}: {exc.reason}")
    if _sha256(export) != facts.get("sha256"):
        # Where it breaks, for the auditor to report which record changed.
        where = first_break(export, facts)
        return ExportReport(
            problem=f"{export.name} is not the file signed: its SHA-256 differs; {where}"
        )
    numbered = numbered_entries(export)
    entries = [entry for _, entry in numbered]
    problem = chain_problem(numbered)
    if problem is None:
        problem = _summary_problem(entries, facts)
    signed_records = facts.get("records")
    found: Path | None = None
    if problem is None and isinstance(signed_records, dict):
        found = _records_file(export, str(signed_records.get("file")), records)
        problem = _records_problem(found, entries, signed_records)
    elif records is not None:
        raise ConfigError(
            f"the manifest signs no records, so {records} cannot be checked; leave out --records"
        )
    # Counted, to be said: "export intact" left an auditor to guess the records were checked.
    count = None if found is None else len(found.read_text(encoding="utf-8").splitlines())
    part = _part(facts.get("scope"))
    return ExportReport(len(entries), key_id, problem, part, found, count)


def _records_file(export: Path, named: str, given: Path | None) -> Path:
    """Find the records signed with an export: as given, as signed, or by the export's name.

    Archived exports are renamed (by date, say), their records and manifest with them.
    Whichever file it is, its SHA-256 in the signed manifest is what proves it. None found is a
    check not made (exit 2), not a break: the auditor was not given them.
    """
    if given is not None:
        if not given.is_file():
            raise ConfigError(f"{given} is no file; name the records signed with the export")
        return given
    # Its own name first: a renamed copy kept beside the original is checked with its own
    # records, not the original's (a changed copy's records were left unread, said intact).
    for candidate in (records_path(export), export.parent / Path(named).name):
        if candidate.is_file():
            return candidate
    names = dict.fromkeys((Path(named).name, records_path(export).name))  # once if the same
    raise ConfigError(
        f"the manifest signs records ({Path(named).name}), and none are beside {export.name} "
        f"(as {' or '.join(names)}): pass --records FILE"
    )


def _records_problem(
    records: Path, entries: list[dict[str, Any]], signed: Mapping[str, Any]
) -> str | None:
    """Check the records signed with the export: the file signed, each record vouched for."""
    if _sha256(records) != signed.get("sha256"):
        return f"{records.name} is not the file signed: its SHA-256 differs"
    return records_problem(entries, records)


def _part(scope: object) -> str | None:
    """Say which part of the log a signed manifest's scope chose; None for the whole log."""
    if not isinstance(scope, dict):
        return None
    chosen = [
        f"{name} {scope[name]}"
        for name in ("goal", "since", "until")
        if isinstance(scope.get(name), str)
    ]
    goals = scope.get("goal")
    if isinstance(goals, list):  # an export of several goals
        chosen.insert(0, f"goals {', '.join(str(goal) for goal in goals)}")
    return " and ".join(chosen) or None


def _signed_manifest(path: Path, keys: TrustedKeys) -> tuple[dict[str, Any], str]:
    if not path.is_file():
        raise ConfigError(f"no signed manifest at {path}; export with --sign, or pass --manifest")
    raw = path.read_bytes()
    # What cannot be checked here (another file named, a key not given) is the caller's to
    # fix, exit 2, as the store's check says of a missing key: exit 1 says "tampered".
    if len(raw) > _MANIFEST_LIMIT:
        raise ConfigError(
            f"{path} is over {_MANIFEST_LIMIT // 1024} KiB: not a manifest that "
            "`plangate audit export --sign` writes; name the FILE.dsse.json beside the export"
        )
    try:
        envelope = SignedEnvelope.model_validate(strict_json_loads(raw))
    except (MessageRejected, ValidationError) as exc:
        first_line = str(exc).splitlines()[0]
        raise ConfigError(
            f"{path} is not a DSSE envelope ({first_line}); name the FILE.dsse.json that "
            "`plangate audit export --sign` wrote beside the export"
        ) from exc
    try:
        payload, signature = keys.verified_payload(envelope, MANIFEST_TYPE)
    except (MessageRejected, ValidationError) as exc:
        raise ApprovalInvalid(f"its signature cannot be read: {str(exc).splitlines()[0]}") from exc
    except UnknownSigner as exc:
        raise ConfigError(
            f"the manifest {path.name} cannot be checked here: {exc.reason} (or pass --key FILE)"
        ) from exc
    try:
        facts = strict_json_loads(payload)
    except MessageRejected as exc:
        first_line = str(exc).splitlines()[0]
        raise ApprovalInvalid(f"its payload is not a manifest: {first_line}") from exc
    if not isinstance(facts, dict):
        raise ApprovalInvalid("its payload is not a manifest")
    return facts, signature.keyid


def _summary_problem(entries: list[dict[str, Any]], facts: Mapping[str, Any]) -> str | None:
    if len(entries) != facts.get("count"):
        return f"the export holds {len(entries)} entries; the manifest says {facts.get('count')}"
    if entries and (entries[0]["hash"], entries[-1]["hash"]) != (
        facts.get("first_hash"),
        facts.get("last_hash"),
    ):
        return "the first or last entry is not the one the manifest names"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
