"""The plan hash: what an approval signs, so it must depend on the plan and nothing else."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import Plan, canonical_json, plan_hash

SEED_MESSAGE = "Ticket count ${count} exceeded SLA ${sla}"


def seed_fields(message: str = SEED_MESSAGE, **changes: Any) -> dict[str, Any]:
    """The DESIGN.md plan as plain JSON-ready data."""
    return {
        "plan_id": "plan-1",
        "goal_id": "goal-1",
        "revision": 1,
        "summary": "Notify on-call if open tickets exceed the SLA",
        "steps": [
            {"id": "count", "tool": "ticket_count", "args": {}},
            {"id": "sla", "tool": "sla_threshold", "args": {}},
            {
                "id": "notify",
                "tool": "notify_oncall",
                "args": {"message": message, "channel": "#oncall"},
                "when": "steps.count.output > steps.sla.output",
            },
        ],
        **changes,
    }


def reordered(value: Any) -> Any:
    """The same JSON value with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {key: reordered(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(item) for item in value]
    return value


def from_json(text: str) -> Plan:
    return Plan.model_validate_json(text)


# --- plan_hash ---------------------------------------------------------------------------------


def test_plan_hash_is_sha256_prefixed_lowercase_hex() -> None:
    digest = plan_hash(Plan.model_validate(seed_fields()))

    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)


def test_plan_hash_is_the_sha256_of_the_canonical_json() -> None:
    plan = Plan.model_validate(seed_fields())

    assert plan_hash(plan) == "sha256:" + hashlib.sha256(canonical_json(plan)).hexdigest()


def test_plan_hash_ignores_key_order_and_whitespace_of_the_source_json() -> None:
    """Given one plan written compactly and written reordered and indented, Then one hash."""
    compact = json.dumps(seed_fields(), separators=(",", ":"))
    spaced = json.dumps(reordered(seed_fields()), indent=4)
    assert compact != spaced

    assert plan_hash(from_json(compact)) == plan_hash(from_json(spaced))


def test_plan_hash_ignores_how_the_plan_was_built() -> None:
    built = Plan.model_validate(seed_fields())

    assert plan_hash(built) == plan_hash(from_json(json.dumps(seed_fields())))


def test_plan_hash_changes_when_one_byte_of_an_argument_changes() -> None:
    edited = SEED_MESSAGE.replace("exceeded", "exceedeD")

    original = plan_hash(Plan.model_validate(seed_fields()))

    assert plan_hash(Plan.model_validate(seed_fields(edited))) != original


def test_plan_hash_changes_with_the_revision() -> None:
    """An approval of revision 1 must not cover revision 2, even with identical steps."""
    first = plan_hash(Plan.model_validate(seed_fields(revision=1)))

    assert plan_hash(Plan.model_validate(seed_fields(revision=2))) != first


# --- canonical_json: RFC 8785 ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param({"b": 1, "a": {"d": 2, "c": 3}}, b'{"a":{"c":3,"d":2},"b":1}', id="key-order"),
        pytest.param([1.0, 100, -0.0], b"[1,100,0]", id="integral-floats"),
        pytest.param(
            [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
            b"[333333333.3333333,1e+30,4.5,0.002,1e-27]",
            id="rfc8785-numbers",
        ),
        pytest.param([None, True, False], b"[null,true,false]", id="literals"),
        pytest.param(
            '\u20ac$\u000f\nA\'B"\\\\"/',
            '"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"'.encode(),
            id="rfc8785-string-escapes",
        ),
    ],
)
def test_canonical_json_matches_rfc8785(value: Any, expected: bytes) -> None:
    assert canonical_json(value) == expected


def test_canonical_json_sorts_keys_by_utf16_code_units() -> None:
    """RFC 8785 §3.2.3: an emoji (a surrogate pair) sorts before U+FB33, unlike by code point."""
    keys = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]

    text = canonical_json(dict.fromkeys(keys, 0)).decode()

    assert list(json.loads(text)) == [
        "\r",
        "1",
        "\u0080",
        "\u00f6",
        "\u20ac",
        "\U0001f600",
        "\ufb33",
    ]


def test_canonical_json_of_a_model_is_that_of_its_json_dump() -> None:
    plan = Plan.model_validate(seed_fields())

    assert canonical_json(plan) == canonical_json(plan.model_dump(mode="json"))


# Text from every corner that matters: escapes, control characters, DEL, non-ASCII, characters
# past U+FFFF (sorted differently by code point and by UTF-16 unit) and lone surrogates.
_TEXT = st.text(
    st.one_of(
        st.sampled_from(['"', "\\", "\b", "\f", "\n", "\r", "\t", "\x00", "\x1f", "\x7f", "é"]),
        st.characters(min_codepoint=0xE000, max_codepoint=0xFFFF),
        st.characters(min_codepoint=0x10000, max_codepoint=0x1F9FF),
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
        st.characters(max_codepoint=0x7F),
    ),
    max_size=6,
)
_JSON_LIKE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats()
    | _TEXT,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(_TEXT, inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=1000, deadline=None)
@given(_JSON_LIKE)
def test_canonical_json_is_rfc8785s_byte_for_byte_or_refused_as_it_refuses(value: Any) -> None:
    """Given any JSON-like value (floats, huge integers, odd text and keys included),
    When its canonical JSON is written,
    Then it is exactly what the `rfc8785` package writes, or refused exactly when it refuses:
    stored audit entries and signed plans keep verifying.
    """
    try:
        expected: bytes | type[Exception] = rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, UnicodeEncodeError) as exc:  # a lone surrogate key
        expected = type(exc)

    try:
        written: bytes | type[Exception] = canonical_json(value)
    except (rfc8785.CanonicalizationError, UnicodeEncodeError) as exc:
        written = type(exc)

    assert written == expected
