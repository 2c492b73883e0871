"""Strict decoding: every message is decoded here first, and anything doubtful is refused.

Each refusal is a MessageRejected whose reason goes to the dead-letter queue, so the tests
check that the reason says what was wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from schemas import (
    MESSAGE_MODELS,
    Decision,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionPaused,
    GoalSubmitted,
    Message,
    MessageRejected,
    Plan,
    PlanApproved,
    PlanDecided,
    PlanFailed,
    PlanPreviewed,
    PlanProposed,
    PreviewRequested,
    ReviewDecided,
    Signature,
    SignedEnvelope,
    Step,
    StepFinished,
    StepPreview,
    decode_message,
    encode_message,
    plan_hash,
)
from schemas.decoding import MAX_MESSAGE_BYTES

GOAL = "goal-1"
JSON = "application/json"
MISSING = object()

PLAN = Plan(
    plan_id="plan-1",
    goal_id=GOAL,
    revision=1,
    steps=(
        Step(id="count", tool="ticket_count"),
        Step(id="notify", tool="notify_oncall", args={"message": "n=${count}"}),
    ),
)


def decided(kind: str, action: Any) -> PlanDecided:
    decision = Decision(action=action, decided_by="policy", reason="why", policy_version="v1")
    return PlanDecided(
        type=kind,
        goal_id=GOAL,
        plan_id=PLAN.plan_id,
        revision=1,
        plan_hash=plan_hash(PLAN),
        decision=decision,
    )


def approved() -> PlanApproved:
    envelope = SignedEnvelope(
        payload_type="application/vnd.plangate.approval+json",
        payload="e30=",
        signatures=[Signature(keyid="gate-1", sig="c2lnbmF0dXJl")],
    )
    return PlanApproved(goal_id=GOAL, plan=PLAN, approval=envelope)


BUILDERS: dict[str, Callable[[], Message]] = {
    "goal.submitted": lambda: GoalSubmitted(goal_id=GOAL, text="check", metadata={"team": "ops"}),
    "plan.proposed": lambda: PlanProposed(
        goal_id=GOAL, plan=PLAN, plan_hash=plan_hash(PLAN), planner="playbook:sla"
    ),
    "plan.failed": lambda: PlanFailed(goal_id=GOAL, reasons=["no tool can count tickets"]),
    "plan.held": lambda: decided("plan.held", "hold"),
    "plan.denied": lambda: decided("plan.denied", "deny"),
    "plan.rejected": lambda: decided("plan.rejected", "reject"),
    "plan.expired": lambda: decided("plan.expired", "expire"),
    "plan.approved": approved,
    "review.decided": lambda: ReviewDecided(
        goal_id="g1", plan_id="p1", revision=1, plan_hash="sha256:" + "0" * 64, decided_by="alice"
    ),
    "plan.preview_requested": lambda: PreviewRequested(
        goal_id=GOAL, plan=PLAN, plan_hash=plan_hash(PLAN)
    ),
    "plan.previewed": lambda: PlanPreviewed(
        goal_id=GOAL,
        plan_id=PLAN.plan_id,
        plan_hash=plan_hash(PLAN),
        steps=[
            StepPreview(step_id="count", tool="ticket_count", effect="read", status="ran", output=3)
        ],
    ),
    "step.finished": lambda: StepFinished(
        goal_id=GOAL,
        plan_id=PLAN.plan_id,
        step_id="count",
        tool="ticket_count",
        status="succeeded",
        output={"open": 12, "labels": ["p1"]},
        duration_ms=3.5,
    ),
    "execution.completed": lambda: ExecutionCompleted(
        goal_id=GOAL, plan_id=PLAN.plan_id, steps={"count": "succeeded", "notify": "skipped"}
    ),
    "execution.paused": lambda: ExecutionPaused(
        goal_id=GOAL,
        plan_id=PLAN.plan_id,
        reason="step 'notify' may or may not have happened",
        steps={"count": "succeeded", "notify": "unknown"},
    ),
    "execution.failed": lambda: ExecutionFailed(
        goal_id=GOAL, plan_id=PLAN.plan_id, reason="notify failed", steps={"notify": "failed"}
    ),
    "execution.cancelled": lambda: ExecutionCancelled(
        goal_id=GOAL,
        plan_id=PLAN.plan_id,
        reason="cancelled by olga: wrong customer",
        cancelled_by="olga",
        steps={"count": "succeeded", "notify": "skipped"},
    ),
}


def goal_fields(**changes: Any) -> dict[str, Any]:
    """A valid goal.submitted as a dict; a change to MISSING removes the field."""
    fields: dict[str, Any] = {
        "schema_version": 1,
        "type": "goal.submitted",
        "goal_id": GOAL,
        "text": "check the ticket count",
        **changes,
    }
    return {key: value for key, value in fields.items() if value is not MISSING}


def goal_body(**changes: Any) -> bytes:
    return json.dumps(goal_fields(**changes)).encode()


def rejection(body: bytes, content_type: str | None = JSON, **options: Any) -> str:
    """Decode `body`, expect a refusal, and return its reason."""
    with pytest.raises(MessageRejected) as raised:
        decode_message(body, content_type, **options)
    assert str(raised.value) == raised.value.reason
    return raised.value.reason


# --- round trips -------------------------------------------------------------------------------


def test_there_is_a_builder_for_every_message_type() -> None:
    assert set(BUILDERS) == set(MESSAGE_MODELS)


@pytest.mark.parametrize("kind", sorted(MESSAGE_MODELS))
def test_every_message_type_survives_an_encode_decode_round_trip(kind: str) -> None:
    """Given a valid message, When encoded and decoded, Then the same model comes back."""
    message = BUILDERS[kind]()

    decoded = decode_message(encode_message(message), JSON, "utf-8")

    assert type(decoded) is MESSAGE_MODELS[kind]
    assert decoded == message
    assert getattr(decoded, "type", None) == kind


def test_a_json_content_type_with_a_charset_parameter_is_accepted() -> None:
    decoded = decode_message(goal_body(), "application/json; charset=utf-8")

    assert isinstance(decoded, GoalSubmitted)


# --- the JSON itself ---------------------------------------------------------------------------


def test_truncated_json_is_rejected_as_invalid_json() -> None:
    assert rejection(goal_body()[:-3]).startswith("body is not valid JSON")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_rejected_by_name(constant: str) -> None:
    body = goal_body()[:-1] + f', "metadata": {{"n": {constant}}}}}'.encode()

    assert rejection(body) == f"JSON contains {constant}, which is not allowed"


@pytest.mark.parametrize("number", ["1e400", "-1e400"])
def test_a_number_that_overflows_to_infinity_is_rejected(number: str) -> None:
    body = goal_body()[:-1] + f', "extra": [{number}]}}'.encode()

    assert "overflows to infinity" in rejection(body)


def test_a_repeated_key_is_rejected_naming_the_key() -> None:
    body = b'{"schema_version": 1, "type": "goal.submitted", "goal_id": "a", "goal_id": "b"}'

    assert rejection(body) == "JSON object repeats the key 'goal_id'"


def test_a_repeated_key_in_a_nested_object_is_rejected_too() -> None:
    body = goal_body()[:-1] + b', "metadata": {"team": "ops", "team": "sre"}}'

    assert rejection(body) == "JSON object repeats the key 'team'"


def test_a_body_that_is_not_utf8_is_rejected() -> None:
    body = goal_body(text="caf\u00e9").replace(b"\\u00e9", b"\xe9")

    assert rejection(body).startswith("body is not UTF-8")


def test_a_body_that_is_a_json_array_is_rejected() -> None:
    assert rejection(b"[" + goal_body() + b"]") == "body is not a JSON object"


def test_deeply_nested_json_is_rejected_rather_than_crashing_the_worker() -> None:
    assert rejection(b"[" * 100_000).startswith("JSON is nested too deeply")
    # Within what the parser reads, past what plangate accepts: refused by the bound.
    assert rejection(b"[" * 65 + b"]" * 65).startswith("JSON is nested too deeply")


def test_an_integer_too_long_to_convert_is_rejected_rather_than_crashing_the_worker() -> None:
    body = goal_body()[:-1] + b', "n": ' + b"9" * 5000 + b"}"

    # In words of our own: Python's said to call sys.set_int_max_str_digits().
    assert rejection(body) == (
        "JSON holds a number of more than 4300 digits, which is not read; send it as a string"
    )


# --- size --------------------------------------------------------------------------------------


def test_an_oversized_body_is_refused_by_its_size_before_it_is_parsed() -> None:
    """Given a body past the limit that is not even JSON, Then the reason is its size."""
    body = b"\xff not json at all " * (MAX_MESSAGE_BYTES // 10)

    reason = rejection(body)

    assert reason == f"body is {len(body)} bytes; the limit is {MAX_MESSAGE_BYTES}"


def test_the_size_limit_can_be_lowered_per_call() -> None:
    body = goal_body()

    assert rejection(body, max_bytes=len(body) - 1).startswith(f"body is {len(body)} bytes")
    assert isinstance(decode_message(body, JSON, max_bytes=len(body)), GoalSubmitted)


# --- content type, encoding, compression -------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["application/x-python-serialize", "application/data", "text/plain", "application/yaml", None],
)
def test_any_content_type_but_json_is_refused(content_type: str | None) -> None:
    reason = rejection(goal_body(), content_type)

    if content_type is None:
        assert reason == "the message has no content type; send application/json"
    else:
        assert reason == f"content type {content_type!r} is not accepted; send application/json"


def test_a_compression_header_is_refused() -> None:
    reason = rejection(goal_body(), headers={"compression": "application/x-gzip"})

    assert reason == "compressed messages are not accepted"


@pytest.mark.parametrize("encoding", ["binary", "gzip", "latin-1"])
def test_a_content_encoding_other_than_utf8_is_refused(encoding: str) -> None:
    reason = rejection(goal_body(), content_encoding=encoding)

    assert reason == f"content encoding {encoding!r} is not accepted"


# --- version and type --------------------------------------------------------------------------


def test_a_newer_schema_version_is_refused_naming_those_supported() -> None:
    reason = rejection(goal_body(schema_version=2))

    assert reason == "schema_version 2 is not supported (supported: [1])"


@pytest.mark.parametrize(
    ("version", "said"),
    [
        pytest.param("1", "'1' is a string", id="string"),
        pytest.param(True, "True is a boolean", id="boolean"),
        pytest.param(1.5, "1.5 is a number with a fraction", id="fraction"),
        pytest.param([1], "[1] is an array", id="list"),
        pytest.param({"v": 1}, "{'v': 1} is an object", id="object"),
    ],
)
def test_a_schema_version_that_is_no_integer_is_refused_saying_it_must_be_one(
    version: Any, said: str
) -> None:
    """Given a goal whose `schema_version` is no JSON integer (the string "1", true, ...),
    When it is decoded,
    Then the reason says what it is and that it must be an integer: it said "schema_version
    '1' is not supported (supported: [1])", which reads as if 1 were refused.
    """
    reason = rejection(goal_body(schema_version=version))

    assert reason == f"schema_version {said}: it must be an integer, one of [1]"


def test_a_message_without_a_version_or_a_type_is_refused_in_words_not_a_repr() -> None:
    """The reasons read "schema_version None is not supported", "message type None"."""
    assert rejection(goal_body(schema_version=MISSING)) == (
        "the message has no schema_version (supported: [1])"
    )
    assert rejection(goal_body(type=MISSING)) == "the message has no type"


def test_schema_version_1_0_is_version_1_as_the_exported_schema_says() -> None:
    """The JSON Schema `plangate schema` exports takes 1.0 as an integer (Draft 2020-12): a
    client checking its messages against it passed, and the worker dead-lettered them."""
    message = decode_message(goal_body(schema_version=1.0), "application/json")
    assert message.schema_version == 1


@pytest.mark.parametrize(
    ("kind", "shown"),
    [
        pytest.param("goal.exploded", "'goal.exploded'", id="unknown"),
        pytest.param(["goal.submitted"], "['goal.submitted']", id="not-a-string"),
    ],
)
def test_an_unknown_message_type_is_refused(kind: Any, shown: str) -> None:
    assert rejection(goal_body(type=kind)) == f"message type {shown} is unknown"


def test_untrusted_values_echoed_in_a_reason_are_cut_short() -> None:
    reason = rejection(goal_body(type="x" * 10_000))

    assert len(reason) < 120


# --- the model ---------------------------------------------------------------------------------


def test_a_missing_field_is_refused_naming_the_field() -> None:
    reason = rejection(goal_body(text=MISSING))

    assert reason == "goal.submitted does not match its schema: text: Field required"


def test_an_extra_field_is_refused_naming_the_field() -> None:
    reason = rejection(goal_body(colour="blue"))

    assert (
        reason == "goal.submitted does not match its schema: colour: Extra inputs are not permitted"
    )


def test_a_mismatch_deep_inside_a_plan_names_the_path_to_it() -> None:
    fields = json.loads(encode_message(BUILDERS["plan.proposed"]()))
    del fields["plan"]["steps"][1]["tool"]

    reason = rejection(json.dumps(fields).encode())

    assert "plan.steps.1.tool: Field required" in reason


# --- ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "goal_id",
    [
        pytest.param("a\nb", id="line-break"),
        pytest.param("two words", id="space"),
        pytest.param("tab\there", id="tab"),
        pytest.param("\x1b[2Jcleared", id="terminal-escape"),
        pytest.param("evil\u202etxt.exe", id="bidi-override"),
        pytest.param("\x85next-line", id="c1-control"),
        pytest.param("", id="empty"),
        pytest.param("x" * 65, id="too-long"),
        pytest.param("a/b", id="a-path"),
        pytest.param("a?b", id="a-query"),
        pytest.param("a#b", id="a-fragment"),
        pytest.param("%2e%2e", id="percent-encoded"),
        pytest.param("a\\b", id="backslash"),
    ],
)
def test_a_goal_id_that_would_break_a_table_or_a_terminal_is_refused(goal_id: str) -> None:
    reason = rejection(goal_body(goal_id=goal_id))

    assert reason.startswith("goal.submitted does not match its schema: goal_id: ")


def test_an_id_refused_by_its_characters_says_what_an_id_may_hold() -> None:
    reason = rejection(goal_body(goal_id="a\nb"))

    assert reason == (
        "goal.submitted does not match its schema: goal_id: an id must be one word of "
        "printable characters (no space, line break, control character, / ? # % or backslash)"
    )


@pytest.mark.parametrize("goal_id", ["order-1234", "tenant:acme.42", "ünïcode-ok", "x" * 64])
def test_ids_of_one_printable_word_are_accepted(goal_id: str) -> None:
    message = decode_message(goal_body(goal_id=goal_id), JSON)

    assert message.goal_id == goal_id


def test_a_plan_id_and_a_message_id_are_held_to_the_same_rule() -> None:
    fields = json.loads(encode_message(BUILDERS["plan.proposed"]()))
    fields["message_id"] = "m 1"
    fields["plan"]["plan_id"] = "p\r1"

    reason = rejection(json.dumps(fields).encode())

    assert "message_id: an id must be" in reason
    assert "plan.plan_id: an id must be" in reason


def test_a_blank_idempotency_key_is_refused_saying_so() -> None:
    reason = rejection(goal_body(idempotency_key="   "))

    assert reason == (
        "goal.submitted does not match its schema: idempotency_key: it must not be blank"
    )
