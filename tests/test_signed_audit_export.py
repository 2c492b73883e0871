"""Proof for auditors: a signed audit export checked offline, and approvals any DSSE tool reads.

The export runs through the real CLI against a real run's SQLite store; the check runs with
only the public key, in a folder apart from the data folder.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope as SslibEnvelope
from securesystemslib.signer import SSlibKey
from sqlalchemy import select, text

from plangate.embedded import Pipeline
from plangate.export_file import read_entries
from plangate.export_records import records_problem
from plangate.signing import PAYLOAD_TYPE
from plangate.signing_keys import read_public_key
from plangate.store import ApprovalRow
from tests.conftest import SEED_GOAL
from tests.support import HELD, audit_entries, only_plan
from tests.test_audit import LOGGED_ENTRIES, SEED_RUN_ENTRIES, completed_run, plangate_cli

__all__ = ["completed_run"]  # the fixture, shared with the audit log's own tests


def signed_export(pipeline: Pipeline, folder: Path) -> tuple[Path, Path, Path]:
    """Export the log with --sign; copy export, manifest and public key to an auditor's folder."""
    target = pipeline.settings.data_dir / "audit.jsonl"
    done = plangate_cli(pipeline.settings.data_dir, "audit", "export", "-o", str(target), "--sign")
    assert done.returncode == 0, done.stderr
    assert f"{LOGGED_ENTRIES} entries written" in done.stderr
    [public] = (pipeline.settings.data_dir / "keys" / "trusted").glob("*.pub")
    folder.mkdir()
    copies = [folder / path.name for path in (target, Path(f"{target}.dsse.json"), public)]
    for source, copy in zip((target, Path(f"{target}.dsse.json"), public), copies, strict=True):
        shutil.copy(source, copy)
    export, manifest, key = copies
    return export, manifest, key


def verify(data_dir: Path, export: Path, key: Path) -> tuple[int, str]:
    checked = plangate_cli(data_dir, "audit", "verify", "--export", str(export), "--key", str(key))
    return checked.returncode, checked.stdout + checked.stderr


def test_a_signed_export_verifies_offline_with_the_public_key_alone(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """Given a completed run exported with `--sign`,
    When an auditor runs `plangate audit verify --export` in an empty folder with the gate's
    public key,
    Then it passes, naming the count and the signing key; the manifest is a DSSE envelope with
    standard field names over the range, count, hashes and the file's SHA-256.
    """
    export, manifest, key = signed_export(pipeline, tmp_path / "auditor")

    code, said = verify(tmp_path / "empty", export, key)

    assert code == 0, said
    assert f"export intact: {LOGGED_ENTRIES} entries, signed by ed25519:" in said
    envelope = json.loads(manifest.read_text())
    assert set(envelope) == {"payloadType", "payload", "signatures"}
    facts = json.loads(base64.b64decode(envelope["payload"]))
    assert facts["count"] == LOGGED_ENTRIES
    assert (facts["first_seq"], facts["last_seq"]) == (1, LOGGED_ENTRIES)
    lines = export.read_text().splitlines()
    assert facts["first_hash"] == json.loads(lines[0])["hash"]
    assert facts["last_hash"] == json.loads(lines[-1])["hash"]


def test_one_changed_byte_in_the_export_or_the_manifest_fails_the_check(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """Given a signed export,
    When one byte of the export (an actor's name) or of the manifest's signed payload changes,
    Then `audit verify --export` exits 1 and says which: the digest, or the signature.
    """
    export, manifest, key = signed_export(pipeline, tmp_path / "auditor")
    original_export, original_manifest = export.read_bytes(), manifest.read_bytes()

    export.write_bytes(original_export.replace(b'"alice"', b'"alicf"', 1))
    export_code, export_said = verify(tmp_path, export, key)
    export.write_bytes(original_export)
    envelope = json.loads(original_manifest)
    payload = envelope["payload"]
    flipped = ("A" if payload[10] != "A" else "B").join((payload[:10], payload[11:]))
    manifest.write_text(json.dumps({**envelope, "payload": flipped}))
    manifest_code, manifest_said = verify(tmp_path, export, key)

    assert export_code == 1
    assert "audit.jsonl is not the file signed: its SHA-256 differs" in export_said
    assert manifest_code == 1
    assert "does not match the payload" in manifest_said


def test_a_changed_export_names_the_first_entry_that_breaks(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """It said only that the file's SHA-256 differs: an auditor could not report which record.

    Given a signed JSON lines export,
    When an actor is changed on one line, a line is deleted, a line is garbled, or only a
    blank line is added,
    Then each check still fails (exit 1, "export not verified"), and names where: the line and
    entry whose hash breaks, the entry missing from its chain, the line that is no JSON, or
    that the entries are those signed and only the layout differs.
    """
    export, _manifest, key = signed_export(pipeline, tmp_path / "auditor")
    original = export.read_text()
    lines = original.splitlines(keepends=True)
    approved = next(i for i, line in enumerate(lines) if '"alice"' in line)
    entry = json.loads(lines[approved])
    where = f"entry {entry['seq']} (entry {entry['chain_seq']} of goal {completed_run}'s chain"
    deleted = json.loads(lines[5])  # the sixth line: the seventh entry comes up to line 6
    edits = {
        "changed": "".join(
            [
                *lines[:approved],
                lines[approved].replace('"alice"', '"alicf"'),
                *lines[approved + 1 :],
            ]
        ),
        "deleted": "".join(lines[:5] + lines[6:]),
        "garbled": "".join([*lines[:3], lines[3][:40] + "\n", *lines[4:]]),
        "blank": original + "\n",
    }

    said = {}
    for name, text_ in edits.items():
        export.write_text(text_)
        code, output = verify(tmp_path, export, key)
        assert code == 1, (name, output)
        said[name] = " ".join(output.split())

    prefix = "export not verified: audit.jsonl is not the file signed: its SHA-256 differs; "
    assert all(output.startswith(prefix) for output in said.values()), said
    assert (
        f"line {approved + 1}, {where}, {entry['kind']}): its content does not match its hash"
    ) in said["changed"]
    assert (
        f"line 6, entry {deleted['seq'] + 1} (entry {deleted['chain_seq'] + 1} of goal "
        f"{completed_run}'s chain, "
    ) in said["deleted"]
    assert (
        f"entry {deleted['chain_seq']} of its chain, the one before it, is not in the file"
    ) in said["deleted"]
    assert "line 4: it is not JSON" in said["garbled"]
    assert (
        "its entries are those signed, each unchanged and in order; only its layout"
        in (said["blank"])
    )


def test_a_changed_csv_export_names_the_first_entry_that_breaks(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """Given a signed CSV export, when an actor's cell is changed, then the check fails
    naming that row's line and entry; with a row whose cells are cut short, that line; with a
    blank line added, that the entries are those signed."""
    data_dir = pipeline.settings.data_dir
    export = tmp_path / "audit.csv"
    done = plangate_cli(data_dir, "audit", "export", "--format", "csv", "-o", str(export), "--sign")
    assert done.returncode == 0, done.stderr
    [key] = (data_dir / "keys" / "trusted").glob("*.pub")
    lines = export.read_text().splitlines(keepends=True)
    row = next(i for i, line in enumerate(lines) if ",alice," in line)
    seq = int(lines[row].split(",")[0])

    export.write_text(
        "".join([*lines[:row], lines[row].replace(",alice,", ",mallory,"), *lines[row + 1 :]])
    )
    changed = verify(tmp_path, export, key)
    export.write_text("".join([*lines[:2], "3,cut short\r\n", *lines[3:]]))
    cut = verify(tmp_path, export, key)
    export.write_text("".join([*lines, "\r\n"]))
    blank = verify(tmp_path, export, key)

    assert changed[0] == 1, changed[1]
    said = " ".join(changed[1].split())
    assert f"its SHA-256 differs; line {row + 1}, entry {seq} (entry " in said
    assert "its content does not match its hash" in said
    assert cut[0] == 1, cut[1]
    assert "line 3: it does not read as an entry" in " ".join(cut[1].split())
    assert blank[0] == 1, blank[1]
    assert "its entries are those signed" in " ".join(blank[1].split())


def test_signing_needs_an_output_file(pipeline: Pipeline, completed_run: str) -> None:
    """`audit export --sign` to stdout has nowhere to put the signature: one line, exit 2."""
    refused = plangate_cli(pipeline.settings.data_dir, "audit", "export", "--sign")

    assert refused.returncode == 2
    assert "--sign needs --output FILE" in refused.stderr


def test_an_approval_envelope_verifies_with_an_independent_dsse_implementation(
    pipeline: Pipeline, completed_run: str
) -> None:
    """Given the signed approval of a completed run, as the store keeps it,
    When securesystemslib's DSSE implementation reads it and checks it with the gate's key,
    Then the signature holds and the payload is the approval of that plan.
    """
    with pipeline.store.session() as session:
        stored = session.execute(select(ApprovalRow)).scalars().one()
        envelope, plan_id = stored.envelope, stored.plan_id
    [public] = (pipeline.settings.data_dir / "keys" / "trusted").glob("*.pub")
    raw = read_public_key(public).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    keyid = envelope["signatures"][0]["keyid"]
    key = SSlibKey(keyid, "ed25519", "ed25519", {"public": raw.hex()})

    parsed = SslibEnvelope.from_dict(envelope)
    accepted = parsed.verify([key], threshold=1)

    assert envelope["payloadType"] == PAYLOAD_TYPE
    assert list(accepted) == [keyid]
    assert json.loads(parsed.pae().split(b" ", 4)[4])["plan_id"] == plan_id


def test_an_export_of_one_goal_verifies_as_a_part_of_the_log(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """Given an export of one goal's entries (`--goal`), signed,
    When an auditor verifies it,
    Then it passes saying it holds a part of the log, and which: it read "export intact", as
    the whole log would, and a one-goal file could pass for the record of everything.
    """
    data_dir = pipeline.settings.data_dir
    export = tmp_path / "one-goal.jsonl"
    done = plangate_cli(
        data_dir, "audit", "export", "--goal", completed_run, "-o", str(export), "--sign"
    )
    assert done.returncode == 0, done.stderr
    [key] = (data_dir / "keys" / "trusted").glob("*.pub")

    code, said = verify(tmp_path / "empty", export, key)

    assert code == 0, said
    assert f"(a part of the log: goal {completed_run})" in said


def test_an_export_of_several_goals_holds_every_goal_given_and_its_manifest_names_them(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """`--goal A --goal B` exported B's entries alone, without a word.

    Given three completed goals,
    When two of them are exported with `--goal` each (one by a short id), signed,
    Then the file holds every entry of both, in log order, and none of the third; the manifest
    names both goals, and the auditor's check passes saying the file holds those two goals; a
    second id that names no goal is refused (exit 2), and no file is written.
    """
    others = [pipeline.submit("how many tickets are open").goal_id for _ in range(2)]
    for goal_id in others:
        assert pipeline.wait_for(goal_id, timeout=10).status == "completed"
    data_dir = pipeline.settings.data_dir
    assert plangate_cli(data_dir, "audit", "checkpoint").returncode == 0
    export, refused_file = tmp_path / "two-goals.jsonl", tmp_path / "refused.jsonl"
    chosen = ["--goal", completed_run, "--goal", others[0][:8]]

    done = plangate_cli(data_dir, "audit", "export", *chosen, "-o", str(export), "--sign")
    [key] = (data_dir / "keys" / "trusted").glob("*.pub")
    code, said = verify(tmp_path / "empty", export, key)
    refused = plangate_cli(
        data_dir, "audit", "export", "--goal", completed_run, "--goal", "nosuch",
        "-o", str(refused_file),
    )  # fmt: skip
    to_stdout = plangate_cli(data_dir, "audit", "export", "--goal", completed_run, "--goal", "x")

    assert done.returncode == 0, done.stderr
    entries = read_entries(export)
    assert {entry["goal_id"] for entry in entries} == {completed_run, others[0]}
    assert sum(entry["goal_id"] == completed_run for entry in entries) == SEED_RUN_ENTRIES
    assert [entry["seq"] for entry in entries] == sorted(entry["seq"] for entry in entries)
    envelope = json.loads(Path(f"{export}.dsse.json").read_text())
    scope = json.loads(base64.b64decode(envelope["payload"]))["scope"]
    assert scope["goal"] == [completed_run, others[0]]
    assert code == 0, said
    assert f"(a part of the log: goals {completed_run}, {others[0]})" in said
    assert refused.returncode == 2
    assert "no audit entry of goal 'nosuch'" in refused.stderr
    assert not refused_file.exists()
    # To stdout, the first goal's entries were written before the refusal: a script's
    # redirected output held an export that looked whole.
    assert (to_stdout.returncode, to_stdout.stdout) == (2, "")


def test_an_export_that_cannot_be_checked_here_is_exit_2_not_a_break(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """Without the signing gate's key, or given another file as the manifest, nothing was
    checked: it said "export not verified", exit 1, which a script reads as tampering. Now it
    says what to give, exit 2, as the store's check does of a missing key."""
    export, _manifest, _key = signed_export(pipeline, tmp_path / "auditor")
    empty = tmp_path / "nobody"
    not_a_manifest = tmp_path / "notes.txt"
    not_a_manifest.write_text("these are my notes")

    without_key = plangate_cli(empty, "audit", "verify", "--export", str(export))
    wrong_file = plangate_cli(
        empty, "audit", "verify", "--export", str(export), "--manifest", str(not_a_manifest)
    )

    assert without_key.returncode == 2, without_key.stderr
    assert "cannot be checked here: signed by unknown key ed25519:" in without_key.stderr
    assert "--key FILE" in without_key.stderr
    assert wrong_file.returncode == 2, wrong_file.stderr
    assert "is not a DSSE envelope" in wrong_file.stderr


@pytest.mark.tampers
def test_a_store_that_does_not_verify_is_not_exported_signed(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """Entries removed from the end of a chain: `audit verify` failed, yet `export --sign`
    signed what was left with the gate's key, and the export then checked "intact" offline."""
    with pipeline.store.engine.begin() as connection:
        last = connection.execute(text("SELECT max(seq) FROM audit_log")).scalar_one()
        connection.execute(text("DELETE FROM audit_log WHERE seq = :seq"), {"seq": last})
    target = tmp_path / "audit.jsonl"

    done = plangate_cli(pipeline.settings.data_dir, "audit", "export", "-o", str(target), "--sign")

    assert done.returncode == 1, done.stderr
    said = " ".join(done.stderr.split())
    assert "audit log broken" in said
    assert "nothing exported: signed, it would vouch for a log that does not verify" in said
    assert not target.exists()
    assert not Path(f"{target}.dsse.json").exists()


def test_an_export_with_its_records_tells_an_auditor_what_ran_and_what_it_returned(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """The entries hold digests only: from an export an auditor could not read which tool
    calls with which arguments a plan held, nor what each returned. With --records, the plans
    and step results go beside it, signed with it, each held to the entry that hashed it."""
    target = tmp_path / "audit.jsonl"
    done = plangate_cli(
        pipeline.settings.data_dir, "audit", "export", "-o", str(target), "--sign", "--records"
    )
    assert done.returncode == 0, done.stderr
    records = tmp_path / "audit.jsonl.records.jsonl"
    [public] = (pipeline.settings.data_dir / "keys" / "trusted").glob("*.pub")
    read = [json.loads(line) for line in records.read_text().splitlines()]
    original = records.read_bytes()

    intact = plangate_cli(
        tmp_path / "auditor", "audit", "verify", "--export", str(target), "--key", str(public)
    )
    records.write_bytes(original.replace(b'"succeeded"', b'"failed"', 1))
    altered = plangate_cli(
        tmp_path / "auditor", "audit", "verify", "--export", str(target), "--key", str(public)
    )

    [plan] = [r for r in read if r["record"] == "plan"]
    notify = next(s for s in plan["body"]["steps"] if s["tool"] == "notify_oncall")
    assert "message" in notify["args"]
    steps = {r["step_id"]: r for r in read if r["record"] == "step"}
    assert set(steps) == {"count", "sla", "notify"}
    assert steps["count"]["status"] == "succeeded"
    assert steps["count"]["output"] is not None
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert altered.returncode == 1
    assert "audit.jsonl.records.jsonl is not the file signed" in altered.stderr


def test_verifying_an_export_says_its_records_were_checked_and_json_holds_what_it_has(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """Given an export written with --sign --records,
    When an auditor verifies it, as text and as --json, and again with its records gone,
    Then the text says how many records were checked, and in which file (it said "export
    intact: N entries" alone); --json gives that count and leaves out the store's `chains` and
    `checkpoints` (null, as if none were found); the records missing, the file they are looked
    for under is named once (it was named twice, "as X or X").
    """
    data_dir = pipeline.settings.data_dir
    target = tmp_path / "m12.jsonl"
    done = plangate_cli(data_dir, "audit", "export", "-o", str(target), "--sign", "--records")
    assert done.returncode == 0, done.stderr
    [key] = (data_dir / "keys" / "trusted").glob("*.pub")
    records = Path(f"{target}.records.jsonl")
    count = len(records.read_text().splitlines())
    args = ("audit", "verify", "--export", str(target), "--key", str(key))

    said = plangate_cli(tmp_path / "auditor", *args)
    as_json = plangate_cli(tmp_path / "auditor", *args, "--json")
    records.rename(tmp_path / "elsewhere.jsonl")
    missing = plangate_cli(tmp_path / "auditor", *args)

    assert said.returncode == 0, said.stderr
    assert said.stdout.strip().endswith(
        f"; its {count} records (m12.jsonl.records.jsonl) checked too"
    )
    verdict = json.loads(as_json.stdout)
    assert (verdict["verdict"], verdict["entries"]) == ("intact", LOGGED_ENTRIES)
    assert (verdict["records"], verdict["records_file"]) == (count, "m12.jsonl.records.jsonl")
    assert "chains" not in verdict
    assert "checkpoints" not in verdict
    assert missing.returncode == 2
    told = " ".join(missing.stderr.split())
    assert "(as m12.jsonl.records.jsonl): pass --records FILE" in told


def test_a_signed_export_renamed_with_its_records_and_manifest_still_verifies(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """Archived by date, a signed export with records failed as if tampered with (exit 1):
    its manifest names the records by the export's first name.

    Given an export written with --sign --records, its three files copied under a new name,
    When an auditor verifies the renamed export,
    Then it passes (the records, under the export's own name, are the file signed); with the
    records elsewhere, `--records FILE` finds them; with none given, it says the check cannot
    be made and what to pass (exit 2), not "not verified".
    """
    data_dir = pipeline.settings.data_dir
    target = data_dir / "all.jsonl"
    done = plangate_cli(data_dir, "audit", "export", "-o", str(target), "--sign", "--records")
    assert done.returncode == 0, done.stderr
    [key] = (data_dir / "keys" / "trusted").glob("*.pub")
    folder, kept = tmp_path / "archive", tmp_path / "kept"
    folder.mkdir()
    kept.mkdir()
    renamed = folder / "audit-2026-12-07.jsonl"
    for suffix in ("", ".dsse.json", ".records.jsonl"):
        shutil.copy(f"{target}{suffix}", f"{renamed}{suffix}")

    beside = verify(tmp_path / "empty", renamed, key)
    elsewhere = kept / "records.jsonl"
    Path(f"{renamed}.records.jsonl").rename(elsewhere)
    missing = verify(tmp_path / "empty", renamed, key)
    given = plangate_cli(
        tmp_path / "empty", "audit", "verify", "--export", str(renamed), "--key", str(key),
        "--records", str(elsewhere),
    )  # fmt: skip

    assert beside == (0, beside[1]), beside[1]
    assert f"export intact: {LOGGED_ENTRIES} entries" in beside[1]
    assert missing[0] == 2, missing[1]
    said = " ".join(missing[1].split())
    assert "the manifest signs records (all.jsonl.records.jsonl), and none are beside" in said
    assert "pass --records FILE" in said
    assert given.returncode == 0, given.stdout + given.stderr


def test_a_record_no_entry_vouches_for_is_named(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """Held to the entries: a step's output other than the one its entry hashed is named."""
    target = tmp_path / "audit.jsonl"
    done = plangate_cli(
        pipeline.settings.data_dir, "audit", "export", "-o", str(target), "--records"
    )
    assert done.returncode == 0, done.stderr
    records = tmp_path / "audit.jsonl.records.jsonl"
    lines = records.read_text().splitlines()
    changed = [json.loads(line) for line in lines]
    step = next(i for i, r in enumerate(changed) if r["record"] == "step")
    changed[step]["output"] = {"pages": 99}
    records.write_text("".join(json.dumps(r) + "\n" for r in changed))

    problem = records_problem(read_entries(target), records)

    assert problem is not None
    assert problem.startswith(f"record {step + 1} of audit.jsonl.records.jsonl (step ")
    assert problem.endswith("its output is not the one its entry recorded)")


def test_records_of_an_export_since_a_time_are_only_those_its_entries_vouch_for(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """Exported --since the approval, the plan (proposed before) had no entry in the export:
    its record made the signed export fail its own check, as if tampered with."""
    approved = next(
        e for e in audit_entries(pipeline.store, completed_run) if e.kind == "goal.approved"
    )
    target = tmp_path / "audit.jsonl"
    since = str(approved.at)
    done = plangate_cli(
        pipeline.settings.data_dir,
        "audit",
        "export",
        "-o",
        str(target),
        "--since",
        since,
        "--sign",
        "--records",
    )
    assert done.returncode == 0, done.stderr
    [public] = (pipeline.settings.data_dir / "keys" / "trusted").glob("*.pub")

    checked = plangate_cli(
        tmp_path / "auditor", "audit", "verify", "--export", str(target), "--key", str(public)
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    read = [json.loads(line) for line in Path(f"{target}.records.jsonl").read_text().splitlines()]
    assert [r["record"] for r in read] == ["step", "step", "step"]


def test_a_csv_cell_a_spreadsheet_would_run_is_quoted_and_the_signed_export_still_verifies(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """A reviewer's name is an audit entry's actor: `=cmd|'/c calc'!A1` (then a submitter's
    `submitted_by`) was written as it is into the CSV export, and a spreadsheet opening it ran
    the formula.

    Given a goal approved by `=cmd|'/c calc'!A1` and one by `'quoted`,
    When the log is exported as CSV, signed,
    Then no cell begins with `=` (it is written behind a quote, as OWASP advises), the
    auditor's check of the signed export passes, and the entries read back hold the names as
    they were submitted.
    """
    formula, quoted = "=cmd|'/c calc'!A1", "'quoted"
    for who in (formula, quoted):
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        pipeline.approve(only_plan(pipeline.store, goal_id).plan_id, who)
        assert pipeline.wait_for(goal_id, timeout=10).status == "completed"
    data_dir = pipeline.settings.data_dir
    assert plangate_cli(data_dir, "audit", "checkpoint").returncode == 0
    target = tmp_path / "audit.csv"

    done = plangate_cli(data_dir, "audit", "export", "--format", "csv", "-o", str(target), "--sign")
    [public] = (data_dir / "keys" / "trusted").glob("*.pub")
    code, said = verify(tmp_path / "empty", target, public)

    assert done.returncode == 0, done.stderr
    cells = [cell for line in target.read_text().splitlines() for cell in line.split(",")]
    assert not any(cell.startswith("=") for cell in cells)
    assert code == 0, said
    actors = {entry["actor"] for entry in read_entries(target)}
    assert {formula, quoted} <= actors


def test_a_renamed_copy_beside_its_original_is_checked_with_its_own_records(
    pipeline: Pipeline, completed_run: str, tmp_path: Path
) -> None:
    """Given a signed export with records, and a copy renamed beside it (a daily archive),
    When the copy's records are changed and the copy is verified,
    Then it is not verified, naming the copy's records: its manifest names the original's,
    which were checked instead, and the copy was said intact.
    """
    data_dir = pipeline.settings.data_dir
    original = tmp_path / "a.jsonl"
    done = plangate_cli(data_dir, "audit", "export", "-o", str(original), "--sign", "--records")
    assert done.returncode == 0, done.stderr
    [key] = (data_dir / "keys" / "trusted").glob("*.pub")
    copy = tmp_path / "audit-2026-12-07.jsonl"
    for suffix in ("", ".dsse.json", ".records.jsonl"):
        shutil.copy(f"{original}{suffix}", f"{copy}{suffix}")
    records = Path(f"{copy}.records.jsonl")
    records.write_text(records.read_text().replace('"record"', '"record" ', 1))

    code, said = verify(tmp_path / "empty", copy, key)

    assert code == 1, said
    assert "audit-2026-12-07.jsonl.records.jsonl is not the file signed" in said


def test_a_goals_submission_is_by_the_submitter_whatever_name_its_metadata_gives(
    pipeline: Pipeline,
) -> None:
    """Given a goal whose metadata says `submitted_by: alice` (anyone with the intake token, or
    the broker, may write it),
    When its submission is audited,
    Then the entry's actor is `submitter`, and `alice` is in its data as the submitter's word:
    the name stood as the actor, beside reviewers' authenticated ones, so an auditor's filter
    on `actor == "alice"` took entries alice never made (and `policy` ones the policy never).
    """
    goal_id = pipeline.submit("how many tickets are open", metadata={"submitted_by": "alice"})
    pipeline.wait_for(goal_id.goal_id, timeout=10)

    [entry] = [
        e for e in audit_entries(pipeline.store, goal_id.goal_id) if e.kind == "goal.submitted"
    ]
    assert entry.actor == "submitter"
    assert entry.data["metadata"]["submitted_by"] == "alice"


def test_the_export_s_help_says_the_order_the_file_is_in(tmp_path: Path) -> None:
    """`audit export --help` said "in chain order", and the file is in the order written (the
    log's `seq`), the goals' chains interleaved: an auditor read a chain as the lines before."""
    shown = plangate_cli(tmp_path, "audit", "export", "--help")

    said = " ".join(shown.stdout.replace("│", " ").split())
    assert shown.returncode == 0, shown.stderr
    assert "in chain order" not in said
    assert "Export every audit entry in the order written" in said
    assert "the goals' chains are interleaved" in said
