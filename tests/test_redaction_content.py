"""What a remote party wrote is redacted as its errors are: content, and quotes cut short."""

from __future__ import annotations

from plangate.printable import printable
from plangate.redaction import REDACTED, quoted, redact_json, register_secret


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
