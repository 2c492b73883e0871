"""What a remote party wrote is redacted as its errors are: content, and quotes cut short."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from plangate.config import Settings
from plangate.printable import printable
from plangate.redaction import REDACTED, quoted, redact, redact_json, register_secret
from plangate.store import StepRunRow
from plangate.store import audit as audit_log
from plangate.tools import ToolRegistry, tool
from tests.support import audit_entries, running_pipeline, write_playbook, write_yaml


def test_a_secret_in_json_content_is_redacted_in_values_and_keys_and_nothing_else_changes() -> None:
    """Given a registered secret with a non-ASCII letter and a quote, and content quoting it
    (as a value, inside a longer string, as a key) beside content that does not,
    When the content is redacted,
    Then each quote is `[redacted]`, and content without a secret is returned as it was.
    """
    secret = 'pässwörd"x1-redact-json'
    register_secret(secret)
    content = {"a": secret, "b": [f"Bearer {secret}", 3], secret: True, "n": None}
    clean = {"a": "fine", "b": [1, 2.5, {"c": "ok"}]}

    assert redact_json(content) == {
        "a": REDACTED,
        "b": [f"Bearer {REDACTED}", 3],
        REDACTED: True,
        "n": None,
    }
    assert redact_json(clean) is clean


def test_a_quoted_text_is_redacted_before_it_is_cut() -> None:
    """Given a secret that straddles the cut, Then no prefix of it is left in the quote."""
    secret = "sk-quoted-cut-0123456789abcdef"
    register_secret(secret)

    said = quoted("x" * 280 + secret, 300)

    assert secret[:8] not in said
    assert len(said) <= 300


def test_invisible_characters_are_shown_where_a_person_reads_remote_text() -> None:
    """Given a secret with a zero-width space inside (redaction cannot know it), an escape,
    a bidirectional override and a BOM,
    Then the terminal shows each as its escape: the text does not read as something it is not.
    """
    shown = printable("tok-SUPER\u200bSECRET \x1b[2J \u202eevil \ufeffx\u00ady")

    assert shown == "tok-SUPER\\u200bSECRET \\x1b[2J \\u202eevil \\ufeffx\\xady"


DATABASE_PASSWORD = "hunter2-never-registered-9c1e"
BEARER = "bearer-never-registered-41f7a9"
SERVICE_PASSWORD = "svc-pw-never-registered-77d2"
APPROVE_ALL = {"rules": [{"name": "all", "match": "true", "action": "approve", "reason": "test"}]}


@tool(effect="read")
def crm_lookup() -> dict[str, str]:
    """Fail as a tool does that quotes its own connection string in its error."""
    raise RuntimeError(
        f"cannot reach postgres://acme:{DATABASE_PASSWORD}@db.internal/acme (sent "
        f'Authorization: Bearer {BEARER}, password={SERVICE_PASSWORD}, {{"token": "{BEARER}"}})'
    )


def test_a_password_in_a_url_a_tool_error_quotes_is_redacted_though_nothing_registered_it(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a tool whose error quotes a database URL with a password no setting names,
    When its goal runs and fails,
    Then the goal's reason, the step's error, the audit log and the logs say
    `acme:[redacted]@`, the chain still verifies, and the traceback is in the debug log alone.
    """
    caplog.set_level(logging.DEBUG, logger="plangate.tools")
    steps = [{"id": "crm", "tool": "crm_lookup"}]
    with running_pipeline(
        settings,
        registry=ToolRegistry([crm_lookup]),
        playbook_file=write_playbook(tmp_path, "crm", steps),
        policy_file=write_yaml(tmp_path / "policy.yaml", APPROVE_ALL),
    ) as pipeline:
        goal_id = pipeline.submit("crm").goal_id
        goal = pipeline.wait_for(goal_id, timeout=20)
        entries = json.dumps([entry.data for entry in audit_entries(pipeline.store, goal_id)])
        with pipeline.store.reading() as session:
            errors = [row.error for row in session.query(StepRunRow).all()]
        intact = audit_log.verify(pipeline.store).ok

    assert goal.status == "failed"
    assert "postgres://acme:[redacted]@db.internal/acme" in (goal.status_reason or "")
    assert errors
    assert all(DATABASE_PASSWORD not in (error or "") for error in errors)
    assert "acme:[redacted]@" in entries
    assert DATABASE_PASSWORD not in entries
    assert DATABASE_PASSWORD not in caplog.text
    for secret in (BEARER, SERVICE_PASSWORD):  # by their shape: nothing registered them
        assert secret not in (goal.status_reason or "") + entries + caplog.text
    said = 'Bearer [redacted], password=[redacted], {"token": "[redacted]"}'
    assert said in (goal.status_reason or "")
    assert "Traceback" in caplog.text
    assert ", in crm_lookup\n    raise RuntimeError(\n" in caplog.text
    assert "Traceback" not in entries
    assert intact


def test_content_that_flows_on_keeps_values_only_their_names_call_secret() -> None:
    """A tool's output or a model's plan is read by later steps: only the secrets plangate
    knows, and URLs' passwords, are taken out of it, not values whose names say token."""
    output = {"token": "abcdef123456", "note": "password=abcdef12", "auth": "Bearer abcdefghij"}

    assert redact_json(output) == output
    assert redact("password=abcdef12") == "password=[redacted]"


def test_a_url_s_user_name_and_a_password_equal_to_it_are_left_as_written() -> None:
    assert redact("postgresql://plangate:plangate@db/plangate") == (
        "postgresql://plangate:plangate@db/plangate"
    )
    assert redact("see https://alice@example.com/x and http://h/a:b@c") == (
        "see https://alice@example.com/x and http://h/a:b@c"
    )
    assert redact_json({"dsn": "redis://:s3cret-pass@cache:6379/0"}) == {
        "dsn": "redis://:[redacted]@cache:6379/0"
    }
