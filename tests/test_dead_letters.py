"""Malformed, oversized, disallowed or unknown messages end as dead letters; workers go on."""

from __future__ import annotations

import base64
import io
import json
import logging
import resource
import zlib

import pytest

from plangate.bus import Envelope, settlement
from plangate.bus.dead_letters import KEPT_BYTES
from plangate.demo.tools import read_notifications
from plangate.embedded import Pipeline
from plangate.logs import JsonFormatter
from plangate.store import GoalRow
from schemas import GoalSubmitted, encode_message, new_id
from tests.conftest import SEED_GOAL
from tests.support import HELD, dead_letters, eventually, only_plan, publish_goal, publish_raw

STAGE_KEYS = {"goal.submitted": "planner", "plan.proposed": "gate", "plan.approved": "executor"}
ONE_MIB = 1024 * 1024


def header(kind: str) -> str:
    return f'{{"schema_version": 1, "type": "{kind}", "goal_id": "g1", '


MALFORMED: dict[str, tuple[bytes | None, str]] = {
    # name: (body, None = built per routing key), what the reason must say
    "truncated JSON": (b'{"schema_version": 1, "type": "goal.subm', "body is not valid JSON"),
    "NaN": (None, "JSON contains NaN, which is not allowed"),
    "duplicate keys": (
        b'{"schema_version": 1, "schema_version": 2}',
        "JSON object repeats the key 'schema_version'",
    ),
    "oversized": (None, f"the limit is {ONE_MIB}"),
    "unknown schema_version": (
        b'{"schema_version": 2, "type": "goal.submitted"}',
        "schema_version 2 is not supported",
    ),
    "unknown type": (
        b'{"schema_version": 1, "type": "goal.exploded"}',
        "message type 'goal.exploded' is unknown",
    ),
    "not a JSON object": (b'[{"schema_version": 1}]', "body is not a JSON object"),
    "not UTF-8": (b'{"text": "\xff\xfe"}', "body is not UTF-8"),
}


def body_of(case: str, routing_key: str) -> bytes:
    body, _ = MALFORMED[case]
    if body is not None:
        return body
    if case == "NaN":
        return (header(routing_key) + '"revision": NaN}').encode()
    return (header(routing_key) + '"text": "' + "x" * ONE_MIB + '"}').encode()


def assert_seed_goal_still_completes(pipeline: Pipeline) -> None:
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=5)
    pipeline.approve(only_plan(pipeline.store, goal_id).plan_id, "alice")
    goal = pipeline.wait_for(goal_id, timeout=5)
    assert goal.status == "completed", goal.status_reason
    assert read_notifications()[-1]["goal_id"] == goal_id


@pytest.mark.parametrize("routing_key", list(STAGE_KEYS))
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_message_is_dead_lettered_with_its_reason_and_the_worker_goes_on(
    pipeline: Pipeline, case: str, routing_key: str
) -> None:
    """Given a running pipeline,
    When a malformed message (each kind, to each stage) is published on a stage's routing key,
    Then it lands in the dead-letter queue, from that stage's queue, with a reason saying what
    was wrong and the original bytes; and the seed goal still completes afterwards.
    """
    body = body_of(case, routing_key)

    pipeline.bus.publish([Envelope(routing_key, body, {"x-plangate-goal-id": "g1"})])

    (letter,) = dead_letters(pipeline)
    assert MALFORMED[case][1] in letter.reason
    assert letter.queue == f"{pipeline.settings.namespace}.{STAGE_KEYS[routing_key]}"
    assert letter.routing_key == routing_key
    # The original bytes; of a body larger than any message, its first 64 KiB, and it says so.
    if len(body) > ONE_MIB:
        assert base64.b64decode(letter.body_b64) == body[:KEPT_BYTES]
        assert f"(the first {KEPT_BYTES} of {len(body)} bytes are kept)" in letter.reason
    else:
        assert base64.b64decode(letter.body_b64) == body
    assert letter.headers["x-plangate-goal-id"] == "g1"
    assert_seed_goal_still_completes(pipeline)


@pytest.mark.parametrize(
    "content_type", ["application/x-python-serialize", "application/data", "text/plain"]
)
def test_non_json_content_type_is_dead_lettered_unread(
    pipeline: Pipeline, content_type: str
) -> None:
    """Given a running pipeline,
    When a message with a non-JSON content type (pickle among them) reaches the planner,
    Then it is dead-lettered as not accepted, never deserialised, and the worker goes on.
    """
    pickled_one = b"\x80\x04K\x01."

    publish_raw(
        pipeline,
        "goal.submitted",
        pickled_one,
        content_type=content_type,
        content_encoding="binary",
    )

    (letter,) = dead_letters(pipeline)
    assert letter.reason == (
        f"content type {content_type!r} is not accepted; send application/json"
    )
    assert letter.content_type == content_type
    assert_seed_goal_still_completes(pipeline)


def test_compressed_message_is_dead_lettered(pipeline: Pipeline) -> None:
    """Given a running pipeline,
    When a valid goal.submitted arrives zlib-compressed (with kombu's `compression` header),
    Then it is dead-lettered as compressed, no goal is created, and the worker goes on.
    """
    message = GoalSubmitted(goal_id="zipped", text=SEED_GOAL)

    publish_goal(pipeline, message, compression="zlib")

    (letter,) = dead_letters(pipeline)
    assert letter.reason == "compressed messages are not accepted"
    with pytest.raises(TimeoutError):
        pipeline.wait_for("zipped", {"submitted", "proposed", "held"}, timeout=0.1)
    assert_seed_goal_still_completes(pipeline)


def test_a_compressed_bomb_is_dead_lettered_without_being_inflated(pipeline: Pipeline) -> None:
    """Given a running pipeline,
    When 400 KB of zlib that would inflate to 400 MB arrives with a `compression` header,
    Then it is dead-lettered as compressed, still compressed (the letter keeps the 400 KB),
    and the process never held the inflated body: its peak memory grew by far less.
    """
    bomb = zlib.compress(b"\0" * 400_000_000, 9)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    publish_raw(
        pipeline,
        "goal.submitted",
        bomb,
        content_type="application/json",
        content_encoding="utf-8",
        headers={"compression": "application/x-gzip"},
    )

    (letter,) = dead_letters(pipeline)
    assert letter.reason == "compressed messages are not accepted"
    assert len(base64.b64decode(letter.body_b64)) == len(bomb)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mib < 100, f"peak memory grew by {grown_mib:.0f} MiB"
    assert_seed_goal_still_completes(pipeline)


def test_compression_header_on_a_body_that_does_not_decompress_is_dead_lettered(
    pipeline: Pipeline,
) -> None:
    """Given a running pipeline,
    When a message claims `compression: application/x-gzip` but its body is not compressed,
    Then it is dead-lettered with a reason, and the planner keeps running.
    """
    body = b'{"schema_version": 1, "type": "goal.submitted", "goal_id": "g1", "text": "hi"}'

    publish_raw(
        pipeline,
        "goal.submitted",
        body,
        content_type="application/json",
        content_encoding="utf-8",
        headers={"compression": "application/x-gzip"},
    )

    (letter,) = dead_letters(pipeline, timeout=2)
    assert "compress" in letter.reason
    assert_seed_goal_still_completes(pipeline)


def test_message_for_another_stage_is_dead_lettered_by_the_handler(pipeline: Pipeline) -> None:
    """Given a running pipeline,
    When a well-formed goal.submitted is published on the executor's key (plan.approved),
    Then the executor refuses it into the dead-letter queue, saying under which key to publish
    it (observers bound to plan.approved took it for an approval).
    """
    message = GoalSubmitted(goal_id="lost", text=SEED_GOAL)

    pipeline.bus.publish([Envelope("plan.approved", encode_message(message), {})])

    (letter,) = dead_letters(pipeline)
    assert letter.reason == (
        "it came under the routing key 'plan.approved', but it is a goal.submitted: publish it "
        "under 'goal.submitted', which observers read as its type"
    )
    assert letter.queue == f"{pipeline.settings.namespace}.executor"
    assert_seed_goal_still_completes(pipeline)


def test_a_message_whose_goal_header_names_another_goal_is_dead_lettered(
    pipeline: Pipeline,
) -> None:
    """Given a goal.submitted about goal `mine` whose x-plangate-goal-id header names `other`
    (the contract: the header is the body's goal_id),
    When it is published,
    Then it is refused into the dead-letter queue saying so: it was taken in silence, while
    observers, the log and the dead-letter queue, which read the header, told of `other`.
    A goal with no such header (a foreign publisher's) still runs.
    """
    message = GoalSubmitted(goal_id="mine", text=SEED_GOAL)

    pipeline.bus.publish(
        [Envelope("goal.submitted", encode_message(message), {"x-plangate-goal-id": "other"})]
    )

    (letter,) = dead_letters(pipeline)
    assert letter.reason == (
        "its header x-plangate-goal-id names goal 'other', but it is about goal 'mine': set "
        "the header to the body's goal_id, or leave it out"
    )
    headerless = GoalSubmitted(goal_id="no-header", text="how many tickets are open")
    pipeline.bus.publish([Envelope("goal.submitted", encode_message(headerless), {})])
    assert pipeline.wait_for("no-header", timeout=10).status == "completed"


def test_the_dead_letter_of_a_mislabelled_message_is_logged_under_the_goal_it_is_about(
    pipeline: Pipeline,
) -> None:
    """Given a goal.submitted about goal `mine` whose x-plangate-goal-id header names `victim`
    (a sender's choice, maybe to bury the line under another goal's),
    When it is dead-lettered,
    Then its log line names `mine` as its goal, and `victim` only as what the header said: a
    search of the logs by `mine` finds why it went to the dead-letter queue.
    """
    message = GoalSubmitted(goal_id="mine", text=SEED_GOAL)
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())  # formats in the thread that logs, as a worker's
    logger = logging.getLogger("plangate.bus.settlement")
    logger.addHandler(handler)
    try:
        pipeline.bus.publish(
            [Envelope("goal.submitted", encode_message(message), {"x-plangate-goal-id": "victim"})]
        )
        dead_letters(pipeline)
    finally:
        logger.removeHandler(handler)

    [line] = [json.loads(text) for text in lines.getvalue().splitlines() if "dead-lettered" in text]
    assert line["goal_id"] == "mine"
    assert line["header_goal_id"] == "victim"


def test_dead_letter_does_not_carry_a_secret_header(pipeline: Pipeline) -> None:
    """Given a malformed message carrying `authorization: Bearer s3cret` and a trace header,
    When it is dead-lettered,
    Then the letter keeps the trace and goal headers but nothing of the secret, anywhere.
    """
    headers = {
        "authorization": "Bearer s3cret",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "x-plangate-goal-id": "g1",
    }

    pipeline.bus.publish([Envelope("goal.submitted", b"{not json", headers)])

    (letter,) = dead_letters(pipeline)
    assert "authorization" not in letter.headers
    assert letter.headers["x-plangate-goal-id"] == "g1"
    assert "traceparent" in letter.headers
    assert "s3cret" not in letter.model_dump_json()


def test_a_published_goal_whose_key_another_goal_has_is_a_dead_letter_at_once(
    pipeline: Pipeline,
) -> None:
    """Given a goal submitted with the idempotency key "nightly",
    When a foreign publisher sends goal.submitted for another goal id with that key,
    Then it is dead-lettered at once, saying whose key it is (it was retried three times, with a
    traceback each, then dead-lettered as a raw unique violation), and the first goal stands.
    """
    first = pipeline.submit(SEED_GOAL, idempotency_key="nightly").goal_id
    pipeline.wait_for(first, HELD)
    message = GoalSubmitted(goal_id="foreign-1", text="another goal", idempotency_key="nightly")

    publish_goal(pipeline, message)

    (letter,) = dead_letters(pipeline)
    assert letter.reason.startswith(f"the idempotency key 'nightly' is goal {first}'s already")
    assert letter.routing_key == "goal.submitted"  # not retried first
    with pytest.raises(TimeoutError):
        pipeline.wait_for("foreign-1", {"submitted", "proposed", "held"}, timeout=0.1)
    assert pipeline.wait_for(first, HELD).status == "held"


@pytest.mark.parametrize("state", ["held", "submitted"])
def test_a_published_goal_under_a_stored_goal_s_id_with_another_text_is_a_dead_letter(
    pipeline: Pipeline, state: str
) -> None:
    """Given a stored goal (held, or still waiting for its plan),
    When a publisher sends goal.submitted under its id with another text,
    Then it is a dead letter saying so (it was acked and dropped: a second goal lost without a
    word, or planned in place of the first), and the first goal's plan is its own.
    """
    first = pipeline.submit(SEED_GOAL).goal_id
    if state == "held":
        pipeline.wait_for(first, HELD)
    message = GoalSubmitted(goal_id=first, text="delete every ticket")

    publish_goal(pipeline, message)

    (letter,) = dead_letters(pipeline)
    assert letter.reason.startswith(f"goal {first} exists already, with another text")
    assert pipeline.wait_for(first, HELD).status == "held"
    assert only_plan(pipeline.store, first).revision == 1  # one plan, the first goal's
    with pipeline.store.session() as session:
        assert session.get_one(GoalRow, first).text == SEED_GOAL


def test_a_letter_whose_body_was_cut_stays_when_replayed_with_its_reason(
    pipeline: Pipeline,
) -> None:
    """Only its first 64 KiB were kept: replayed, it failed anew as "not valid JSON", and the
    reason an operator needed (its size) was gone."""
    pipeline.bus.publish([Envelope("goal.submitted", b'{"x": "' + b"a" * (2 * ONE_MIB) + b'"}')])
    eventually(pipeline.bus.dead_letters, what="the dead letter")
    (letter,) = pipeline.bus.dead_letters()

    replayed = pipeline.bus.replay_dead_letters([letter.message_id])

    assert replayed == []
    (still,) = pipeline.bus.dead_letters()
    assert (still.message_id, still.reason) == (letter.message_id, letter.reason)
    assert still.reason.endswith("bytes are kept)")


def test_a_goal_published_on_the_broker_with_a_cloudevents_key_is_a_dead_letter(
    pipeline: Pipeline,
) -> None:
    """Keys beginning `cloudevent:` are CloudEvents' own (HTTP refuses them in a plain goal):
    taken on the broker, such a goal was stored, and the real event later sent to `serve`
    was answered as a duplicate with the other publisher's goal."""
    key = 'cloudevent:["urn:billing","evt-102"]'
    taken = GoalSubmitted(goal_id=new_id(), text=SEED_GOAL, idempotency_key=key)

    publish_goal(pipeline, taken)

    (letter,) = eventually(lambda: pipeline.bus.dead_letters(), what="the dead letter")
    assert "begins with 'cloudevent:'" in letter.reason
    assert "published on the broker, not by `serve`" in letter.reason
    with pipeline.store.session() as session:
        assert session.get(GoalRow, taken.goal_id) is None


def test_a_goal_whose_time_names_no_offset_is_a_dead_letter_saying_so(
    pipeline: Pipeline,
) -> None:
    """The contract says `occurred_at` is RFC 3339 with its offset; a time without one was
    taken as it came, an instant nobody could place."""
    body = json.loads(encode_message(GoalSubmitted(goal_id=new_id(), text=SEED_GOAL)))
    body["occurred_at"] = "2026-12-06T10:00:00"
    json_body = {"content_type": "application/json", "content_encoding": "utf-8"}

    publish_raw(pipeline, "goal.submitted", json.dumps(body).encode(), **json_body)

    (letter,) = eventually(lambda: pipeline.bus.dead_letters(), what="the dead letter")
    assert "occurred_at" in letter.reason
    assert "timezone" in letter.reason.lower()


def test_giving_up_on_a_message_logs_its_goal_message_and_trace() -> None:
    """The line that says a stage gives up on a message (before its dead letter) named none
    of them: a search of the logs by goal missed why its plan went to the dead-letter queue."""
    trace_id = "bf49d26247de4dbb8f32964a88feeb36"
    headers = {
        "x-plangate-goal-id": "g-1",
        "x-plangate-message-id": "m-1",
        "traceparent": f"00-{trace_id}-bcb24e439d954f94-01",
    }

    named = settlement._named_in(headers)

    assert named == {"goal_id": "g-1", "message_id": "m-1", "trace_id": trace_id}
    assert "trace_id" not in settlement._named_in({"traceparent": "00-not-a-trace"})
