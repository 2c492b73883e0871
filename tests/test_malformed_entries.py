"""Junk pushed straight onto a stage's queue is a dead letter, and never stalls the stage.

On Redis anyone who reaches the server can LPUSH anything onto `<namespace>.<stage>`; on
RabbitMQ anyone can publish any body with any properties. Each test pushes 100 malformed
entries onto every stage's queue, then one read-only goal right behind them, and checks that
every entry is a dead letter with its reason, from its own stage's queue, and that the goal
completes at once (it used to wait out a growing reconnect backoff per entry: minutes).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import amqp
import pytest
import redis

from plangate.bus import Bus
from plangate.bus.inbound import raw_body
from plangate.bus.redis_transport import KEPT_BYTES, malformed_reason
from plangate.config import Settings
from plangate.embedded import Pipeline
from schemas import DeadLetter
from tests.support import eventually, plangate_in

STAGES = ("planner", "gate", "executor")
ENTRIES = 100  # per stage
READ_ONLY_GOAL = "how many tickets are open"
BOUND = 10.0  # seconds; "at once" is well under 2 s, the bound leaves room for a loaded machine


def envelope(body: bytes, namespace: str, /, **changes: Any) -> dict[str, Any]:
    """kombu's Redis envelope as docs/publishing-goals.md describes it; `changes` spoil it."""
    entry: dict[str, Any] = {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {},
        "properties": {
            "body_encoding": "base64",
            "delivery_info": {"exchange": namespace, "routing_key": "goal.submitted"},
            "delivery_mode": 2,
            "delivery_tag": str(uuid.uuid4()),
            "priority": 0,
        },
    }
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = entry
        for key in parents:
            target = target[key]
        if value is ...:
            del target[last]
        else:
            target[last] = value
    return entry


def spoiled(n: int, namespace: str, /, **changes: Any) -> bytes:
    """A kombu envelope around a unique body, spoiled by `changes`."""
    body = json.dumps({"junk": n}).encode()
    return json.dumps(envelope(body, namespace, **changes)).encode()


# name: (how to build the n-th entry, what the dead letter's reason says, is the body the entry)
RedisJunk = Callable[[int, str], bytes]
REDIS_JUNK: dict[str, tuple[RedisJunk, str, bool]] = {
    "not JSON": (lambda n, ns: b"hello plangate %d" % n, "not JSON kombu can read", True),
    "not UTF-8": (lambda n, ns: b"\xff\xfe%d" % n, "the entry is not UTF-8", True),
    "a JSON array": (lambda n, ns: b"[%d]" % n, "the entry is not a JSON object", True),
    "nested 20,000 deep": (
        lambda n, ns: b"[" * 20_000 + b"%d" % n,
        "nested too deeply",
        True,
    ),
    "over 64 KiB of junk": (
        lambda n, ns: b"%06d" % n + b"x" * 70_000,
        f"(the first {KEPT_BYTES} of 70006 bytes are kept)",
        True,
    ),
    "no properties": (
        lambda n, ns: spoiled(n, ns, properties=...),
        "has no `properties` object",
        True,
    ),
    "no delivery tag": (
        lambda n, ns: spoiled(n, ns, properties__delivery_tag=...),
        "has no delivery tag",
        True,
    ),
    "an object as delivery tag": (
        lambda n, ns: spoiled(n, ns, properties__delivery_tag={"a": 1}),
        "delivery tag is not a string",
        True,
    ),
    "a lone surrogate as delivery tag": (
        lambda n, ns: spoiled(n, ns, properties__delivery_tag="\udfff"),
        "delivery tag is not a string",
        True,
    ),
    "no delivery info": (
        lambda n, ns: spoiled(n, ns, properties__delivery_info=...),
        "needs an `exchange` and a `routing_key`",
        True,
    ),
    "a body that is not base64": (
        lambda n, ns: spoiled(n, ns, body=f"%%% {n} %%%"),
        "body is not valid base64",
        True,
    ),
    "an unknown body encoding": (
        lambda n, ns: spoiled(n, ns, properties__body_encoding="rot13"),
        "body encoding 'rot13' is not known",
        True,
    ),
    "null headers": (lambda n, ns: spoiled(n, ns, headers=None), "`headers` is not", True),
    "a kombu-typed value it cannot decode": (
        lambda n, ns: spoiled(n, ns, headers={"when": {"__type__": "uuid", "__value__": "x"}}),
        "not JSON kombu can read",
        True,
    ),
    # Well-formed envelopes whose message is not one plangate accepts: the decoder says why.
    "an unknown content type": (
        lambda n, ns: spoiled(n, ns, **{"content-type": "text/plain"}),
        "content type 'text/plain' is not accepted",
        False,
    ),
    "a wrong content encoding": (
        lambda n, ns: spoiled(n, ns, **{"content-encoding": "latin-1"}),
        "content encoding 'latin-1' is not accepted",
        False,
    ),
}


def redis_junk(namespace: str, stage: str) -> list[tuple[bytes, bytes, str]]:
    """Return (entry, body its dead letter keeps, reason) for 100 entries of every kind."""
    kinds = list(REDIS_JUNK.values())
    junk = []
    for n in range(ENTRIES):
        build, reason, whole = kinds[n % len(kinds)]
        entry = build(n + 1000 * STAGES.index(stage), namespace)
        kept = entry[:KEPT_BYTES] if whole else base64.b64decode(json.loads(entry)["body"])
        junk.append((entry, kept, reason))
    return junk


def redis_goal_entry(namespace: str, goal_id: str) -> bytes:
    """A read-only goal in kombu's Redis envelope, exactly as the docs tell other services."""
    body = json.dumps(
        {"schema_version": 1, "type": "goal.submitted", "goal_id": goal_id, "text": READ_ONLY_GOAL}
    ).encode()
    entry = envelope(body, namespace)
    entry["headers"] = {"x-plangate-goal-id": goal_id}
    return json.dumps(entry).encode()


def dead_letters_by_queue(pipeline: Pipeline, count: int) -> dict[str, list[DeadLetter]]:
    letters: list[DeadLetter] = []

    def arrived() -> bool:
        letters.extend(pipeline.bus.take_dead_letters())
        return len(letters) >= count

    eventually(arrived, 20, f"{count} dead letters")
    by_queue: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        by_queue.setdefault(letter.queue, []).append(letter)
    return by_queue


@pytest.mark.redis
def test_100_junk_entries_per_stage_on_redis_are_dead_letters_and_a_goal_behind_runs_at_once(
    settings: Settings, redis_url: str
) -> None:
    """Given the three stages consuming from a real Redis,
    When 100 malformed entries of every kind are LPUSHed raw onto each stage's list, with a
    read-only goal pushed right behind the planner's, all in one transaction,
    Then every entry is a dead letter from its stage's queue with its raw bytes (the first
    64 KiB) and its reason, and the goal completes well within the bound.
    """
    ns = settings.namespace
    client = redis.Redis.from_url(redis_url)
    goal_id = uuid.uuid4().hex
    junk = {stage: redis_junk(ns, stage) for stage in STAGES}
    with Pipeline(settings, broker_url=redis_url) as pipeline:
        alone = uuid.uuid4().hex  # the baseline: the same goal on empty queues (and warm-up)
        started = time.monotonic()
        client.lpush(f"{ns}.planner", redis_goal_entry(ns, alone))
        pipeline.wait_for(alone, timeout=BOUND)
        baseline = time.monotonic() - started
        with client.pipeline(transaction=True) as push:
            for stage in STAGES:
                for entry, _, _ in junk[stage]:
                    push.lpush(f"{ns}.{stage}", entry)
            push.lpush(f"{ns}.planner", redis_goal_entry(ns, goal_id))
            started = time.monotonic()
            push.execute()

        goal = pipeline.wait_for(goal_id, timeout=BOUND)
        elapsed = time.monotonic() - started
        print(
            f"goal behind {ENTRIES} junk entries per stage (Redis): {elapsed:.2f} s "
            f"(alone: {baseline:.2f} s)"
        )

        assert goal.status == "completed", goal.status_reason
        letters = dead_letters_by_queue(pipeline, ENTRIES * len(STAGES))
    client.close()
    for stage in STAGES:
        got = {base64.b64decode(letter.body_b64): letter for letter in letters[f"{ns}.{stage}"]}
        assert len(got) == ENTRIES
        for _, kept, reason in junk[stage]:
            assert reason in got[kept].reason, (stage, kept[:60], got[kept].reason)
    assert elapsed < BOUND


# name: (body, properties as py-amqp takes them, what the dead letter's reason says)
AMQP_JUNK: dict[str, tuple[bytes, dict[str, Any], str]] = {
    "not JSON, no properties at all": (b"hello plangate", {}, "the message has no content type"),
    "not JSON, declared JSON": (
        b"hello plangate",
        {"content_type": "application/json"},
        "body is not valid JSON",
    ),
    "not UTF-8, declared UTF-8": (
        b'{"\xff": 1}',
        {"content_type": "application/json", "content_encoding": "utf-8"},
        "body is not UTF-8",
    ),
    "an unknown content type": (b"{}", {"content_type": "text/plain"}, "content type 'text/plain'"),
    "a text codec as content encoding": (
        b"{}",
        {"content_type": "application/json", "content_encoding": "rot13"},
        "content encoding 'rot13' is not accepted",
    ),
    "headers of every AMQP type and a bad attempt count": (
        b"[]",
        {
            "content_type": "application/json",
            "application_headers": {
                "x-plangate-attempt": "\u00b2",
                "table": {"nested": [1, 2.5, True]},
                "raw": b"\xff\x00",
            },
        },
        "body is not a JSON object",
    ),
}


@pytest.mark.rabbitmq
def test_100_junk_messages_per_stage_on_rabbitmq_are_dead_letters_and_a_goal_behind_runs(
    settings: Settings, rabbitmq_url: str
) -> None:
    """Given the three stages consuming from a real RabbitMQ,
    When 100 junk messages (bodies and properties of every kind, published with py-amqp, not
    kombu) go to each stage's queue, and a read-only goal right behind the planner's,
    Then every one is a dead letter from its stage's queue with its reason (the broker frames
    every message, so the decoder sees each body), and the goal completes within the bound.
    """
    ns = settings.namespace
    goal_id = uuid.uuid4().hex
    kinds = list(AMQP_JUNK.values())
    with Pipeline(settings, broker_url=rabbitmq_url) as pipeline:
        url = rabbitmq_url.split("://", 1)[1]
        credentials, host = url.split("@", 1)
        user, password = credentials.split(":", 1)
        with amqp.Connection(host=host.split("/")[0], userid=user, password=password) as conn:
            channel = conn.channel()
            for stage in STAGES:
                for n in range(ENTRIES):
                    body, properties, _ = kinds[n % len(kinds)]
                    channel.basic_publish(
                        amqp.basic_message.Message(body, **properties),
                        exchange="",
                        routing_key=f"{ns}.{stage}",  # the default exchange: straight to it
                    )
            goal = json.dumps(
                {
                    "schema_version": 1,
                    "type": "goal.submitted",
                    "goal_id": goal_id,
                    "text": READ_ONLY_GOAL,
                }
            ).encode()
            started = time.monotonic()
            channel.basic_publish(
                amqp.basic_message.Message(
                    goal, content_type="application/json", content_encoding="utf-8"
                ),
                exchange="",
                routing_key=f"{ns}.planner",
            )

        done = pipeline.wait_for(goal_id, timeout=BOUND)
        elapsed = time.monotonic() - started
        print(f"goal behind {ENTRIES} junk messages per stage (RabbitMQ): {elapsed:.2f} s")

        assert done.status == "completed", done.status_reason
        letters = dead_letters_by_queue(pipeline, ENTRIES * len(STAGES))
    for stage in STAGES:
        reasons = Counter(letter.reason for letter in letters[f"{ns}.{stage}"])
        assert sum(reasons.values()) == ENTRIES
        for _, _, reason in kinds:
            assert any(reason in said for said in reasons), (stage, reason, reasons)
    assert elapsed < BOUND


@pytest.mark.redis
def test_junk_taken_with_a_get_is_a_stand_in_and_comes_back_if_not_acked(redis_url: str) -> None:
    """Given junk LPUSHed onto a queue,
    When it is taken with a synchronous get (kombu's RPOP path) and its connection closes
    before it is acked,
    Then what the get returned is a stand-in saying what was wrong, with the junk as its body,
    and kombu restores that stand-in onto the queue, where the next get finds it again.
    """
    bus = Bus(redis_url, f"t{uuid.uuid4().hex[:10]}")
    bus.declare()
    queue = bus.topology.queue_name("planner")
    redis.Redis.from_url(redis_url).lpush(queue, b"not a message")

    for _ in range(2):
        with bus.connection() as connection:
            raw = bus.topology.stage_queue("planner").bind(connection.channel()).get()
            assert raw is not None
            assert raw_body(raw) == b"not a message"
            assert malformed_reason(raw.content_type, raw.headers) == (
                "the broker entry is not a message: the entry is not JSON kombu can read: "
                "Expecting value: line 1 column 1 (char 0)"
            )
        # closed unacked: restored
    assert bus.queue_depth("planner") == 1
    bus.close()


@pytest.mark.redis
def test_junk_in_the_dead_letter_queue_stays_there_when_letters_are_listed(
    redis_url: str,
) -> None:
    """Given junk LPUSHed onto the dead-letter queue itself,
    When the dead letters are listed (each one taken, and put back unless it is taken out),
    Then the junk is not a letter, and it is still in the queue afterwards.
    """
    bus = Bus(redis_url, f"t{uuid.uuid4().hex[:10]}")
    bus.declare()
    redis.Redis.from_url(redis_url).lpush(bus.topology.dead_letter_queue_name, b"junk")

    assert bus.dead_letters() == []
    assert bus.take_dead_letters() == []

    with bus.connection() as connection:
        raw = bus.topology.dead_letter_queue().bind(connection.channel()).get()
        assert raw is not None
        assert raw_body(raw) == b"junk"
        raw.ack()
    bus.close()


@pytest.mark.redis
def test_a_message_of_5_mb_is_a_dead_letter_that_can_be_listed_and_purged(
    settings: Settings, redis_url: str
) -> None:
    """Given a well-formed goal.submitted entry whose body is 5 MB (refused: over 1 MiB),
    When the planner takes it,
    Then its dead letter keeps the body's first 64 KiB and says so: it stays small enough to
    be listed (kept whole, it was past what the dead-letter queue's readers accept, and was
    neither listed nor purged), and it can be purged.
    """
    ns = settings.namespace
    text = "x" * (5 * 1024 * 1024)
    body = json.dumps(
        {"schema_version": 1, "type": "goal.submitted", "goal_id": "g5", "text": text}
    )
    client = redis.Redis.from_url(redis_url)
    with Pipeline(settings, broker_url=redis_url) as pipeline:
        client.lpush(f"{ns}.planner", json.dumps(envelope(body.encode(), ns)))

        [letter] = eventually(lambda: pipeline.bus.dead_letters() or None, 10, "the dead letter")

        assert "the limit is 1048576" in letter.reason
        assert f"(the first {KEPT_BYTES} of {len(body)} bytes are kept)" in letter.reason
        assert base64.b64decode(letter.body_b64) == body.encode()[:KEPT_BYTES]
        assert [gone.message_id for gone in pipeline.bus.purge_dead_letters()] == [
            letter.message_id
        ]
        assert pipeline.bus.dead_letters() == []


@pytest.mark.redis
def test_dlq_list_says_how_many_entries_on_the_queue_are_no_dead_letters(
    redis_url: str, tmp_path: Path
) -> None:
    """Given two junk entries LPUSHed onto the dead-letter queue, one nested 100,000 deep,
    When an operator runs `plangate dlq list`,
    Then it says two entries are not dead letters and are kept (it said "no dead letters" of a
    queue that was not empty), and they are still there.
    """
    namespace = f"t{uuid.uuid4().hex[:10]}"
    bus = Bus(redis_url, namespace)
    bus.declare()
    # The second nested 100,000 deep: unbounded, its reading stopped `dlq list` with a
    # RecursionError, and no letter could be listed until it was removed by hand.
    deep = b'{"body":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    redis.Redis.from_url(redis_url).lpush(bus.topology.dead_letter_queue_name, b"junk", deep)

    listed = plangate_in(
        tmp_path, "dlq", "list", PLANGATE_BROKER_URL=redis_url, PLANGATE_NAMESPACE=namespace
    )

    assert listed.returncode == 0, listed.stderr
    assert listed.stderr.startswith("2 more entries on the dead-letter queue are not shown")
    assert "no dead letters" not in listed.stdout
    assert bus.read_dead_letters() == ([], 2)
    bus.close()


def forged_letter(message_id: str, **fields: str) -> bytes:
    """A dead letter as anyone who can publish on the broker could write one."""
    letter = {
        "schema_version": 1,
        "type": "dead.letter",
        "message_id": message_id,
        "reason": "forged",
        "queue": "plangate.planner",
        "routing_key": "goal.submitted",
        "content_type": "application/json",
        "headers": {},
        "failed_at": "2026-12-06T08:40:00Z",
        # A goal this code reads: a body refused as it is would stay (it would come back).
        "body_b64": base64.b64encode(
            json.dumps(
                {"schema_version": 1, "type": "goal.submitted", "goal_id": message_id, "text": "x"}
            ).encode()
        ).decode("ascii"),
    }
    return json.dumps(letter | fields).encode()


@pytest.mark.redis
def test_forged_dead_letters_neither_stop_a_replay_nor_forge_rows_of_the_list(
    redis_url: str, tmp_path: Path
) -> None:
    """Given, on the dead-letter queue, a forged letter whose body is not base64 and one whose
    reason holds an escape sequence and a line break,
    When an operator lists the letters and replays them all,
    Then the list shows one row a letter, the escape and the break as escapes, and the replay
    ends in one line, keeping the letter it cannot read: it stopped with a traceback at that
    letter, every time, and a line break in a reason printed a row of its own.
    """
    namespace = f"t{uuid.uuid4().hex[:10]}"
    bus = Bus(redis_url, namespace)
    bus.declare()
    queue = bus.topology.dead_letter_queue_name
    spoofing = "\x1b[2J\x1b[31mALL GOOD\x1b[0m\nfake-id  2026-01-01  plangate.gate  fine"
    planner = f"{namespace}.planner"
    entries = [
        envelope(forged_letter("bad-body", body_b64="!!!notb64", queue=planner), namespace),
        envelope(forged_letter("spoofing", reason=spoofing, queue=planner), namespace),
    ]
    redis.Redis.from_url(redis_url).lpush(queue, *(json.dumps(entry) for entry in entries))
    env = {"PLANGATE_BROKER_URL": redis_url, "PLANGATE_NAMESPACE": namespace}

    listed = plangate_in(tmp_path, "dlq", "list", **env)
    replayed = plangate_in(tmp_path, "dlq", "replay", "--all", **env)

    assert listed.returncode == 0, listed.stderr
    [row] = listed.stdout.splitlines()
    assert row.startswith("spoofing  ")
    assert "\\x1b[2J" in row
    assert "\\nfake-id" in row
    assert "1 more entries on the dead-letter queue are not shown" in listed.stderr
    assert replayed.returncode == 0, replayed.stderr
    assert "Traceback" not in replayed.stderr
    assert replayed.stdout.splitlines() == [f"replayed spoofing to {planner}"]
    assert bus.read_dead_letters()[1] == 1  # the unreadable one is kept
    bus.close()


@pytest.mark.redis
def test_replaying_all_says_how_many_letters_it_left_on_the_queue(
    redis_url: str, tmp_path: Path
) -> None:
    """A letter from a queue plangate does not know (or whose body was cut) is not replayed;
    `dlq replay --all` said nothing of it, so the queue looked emptied."""
    namespace = f"t{uuid.uuid4().hex[:10]}"
    bus = Bus(redis_url, namespace)
    bus.declare()
    planner = f"{namespace}.planner"
    cut = forged_letter("cut-one", queue="another-system.queue")
    whole = forged_letter("whole-one", queue=planner)
    queue = bus.topology.dead_letter_queue_name
    redis.Redis.from_url(redis_url).lpush(
        queue, *(json.dumps(envelope(letter, namespace)) for letter in (cut, whole))
    )
    env = {"PLANGATE_BROKER_URL": redis_url, "PLANGATE_NAMESPACE": namespace}

    replayed = plangate_in(tmp_path, "dlq", "replay", "--all", **env)

    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.splitlines() == [f"replayed whole-one to {planner}"]
    assert "1 dead letters are still on the queue, not replayed" in replayed.stderr
    assert [letter.message_id for letter in bus.dead_letters()] == ["cut-one"]
    bus.close()


@pytest.mark.redis
def test_a_letter_still_refused_as_it_is_is_not_replayed_and_keeps_its_id(
    redis_url: str, tmp_path: Path
) -> None:
    """Given a dead letter whose body this code refuses as it is (not JSON), When an operator
    replays it, Then it stays where it was, under its id, and the command exits 2 saying why:
    it was "replayed" (exit 0), and came back at once as a new letter, the id the operator held
    gone (5000 such letters, 5000 "replayed" lines)."""
    namespace = f"t{uuid.uuid4().hex[:10]}"
    bus = Bus(redis_url, namespace)
    bus.declare()
    junk = forged_letter(
        "junk-a",
        queue=f"{namespace}.planner",
        body_b64=base64.b64encode(b"hello not json").decode("ascii"),
    )
    redis.Redis.from_url(redis_url).lpush(
        bus.topology.dead_letter_queue_name, json.dumps(envelope(junk, namespace))
    )
    env = {"PLANGATE_BROKER_URL": redis_url, "PLANGATE_NAMESPACE": namespace}

    replayed = plangate_in(tmp_path, "dlq", "replay", "junk-a", **env)

    assert replayed.returncode == 2, replayed.stdout + replayed.stderr
    assert replayed.stdout == ""
    assert "still refused as it is" in replayed.stderr
    assert [letter.message_id for letter in bus.dead_letters()] == ["junk-a"]
    bus.close()


@pytest.mark.redis
def test_a_letter_of_a_type_its_stage_does_not_handle_is_not_replayed(
    redis_url: str, tmp_path: Path
) -> None:
    """A valid goal pushed onto the gate's list was dead-lettered ("the gate does not handle
    GoalSubmitted"); replayed, it came back at once under a new id. It stays, said so."""
    namespace = f"t{uuid.uuid4().hex[:10]}"
    bus = Bus(redis_url, namespace)
    bus.declare()
    misplaced = forged_letter("misplaced", queue=f"{namespace}.gate")
    redis.Redis.from_url(redis_url).lpush(
        bus.topology.dead_letter_queue_name, json.dumps(envelope(misplaced, namespace))
    )
    env = {"PLANGATE_BROKER_URL": redis_url, "PLANGATE_NAMESPACE": namespace}

    replayed = plangate_in(tmp_path, "dlq", "replay", "misplaced", **env)

    assert replayed.returncode == 2, replayed.stdout + replayed.stderr
    assert "still refused as it is" in replayed.stderr
    assert [letter.message_id for letter in bus.dead_letters()] == ["misplaced"]
    bus.close()


@pytest.mark.redis
def test_listing_dead_letters_leaves_every_one_where_it_is_for_a_listing_beside_it(
    redis_url: str,
) -> None:
    """Two `dlq list` at once each showed part of the queue (a listing took the letters and
    put them back), and one killed mid-listing hid the letters it held for minutes. A listing
    on Redis reads them where they are: the queue is as it was, whoever lists beside it."""
    namespace = f"t{uuid.uuid4().hex[:10]}"
    bus = Bus(redis_url, namespace)
    bus.declare()
    client = redis.Redis.from_url(redis_url)
    queue = bus.topology.dead_letter_queue_name
    letters = [forged_letter(f"letter-{n}", queue=f"{namespace}.planner") for n in range(200)]
    client.lpush(queue, *(json.dumps(envelope(letter, namespace)) for letter in letters))
    client.lpush(queue, "not kombu's envelope")
    before = client.lrange(queue, 0, -1)

    listed: list[list[str]] = []
    threads = [
        threading.Thread(
            target=lambda: listed.append(
                [letter.message_id for letter in bus.read_dead_letters()[0]]
            )
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert listed == [[f"letter-{n}" for n in range(200)]] * 4
    assert bus.read_dead_letters()[1] == 1  # the entry that is none, counted, kept
    assert client.lrange(queue, 0, -1) == before
    bus.close()


@pytest.mark.redis
def test_a_listing_past_its_bound_says_how_many_entries_it_did_not_read(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing stopped at 100,000 entries and said nothing: a broker co-tenant pushing 100k
    tiny entries hid every later letter from `dlq list` and `show`. Entries past the bound,
    and one too large to be a letter, are counted among those not shown."""
    from plangate.bus import redis_peek

    monkeypatch.setattr(redis_peek, "MAX_PEEKED", 3)
    namespace = f"t{uuid.uuid4().hex[:10]}"
    bus = Bus(redis_url, namespace)
    bus.declare()
    client = redis.Redis.from_url(redis_url)
    queue = bus.topology.dead_letter_queue_name
    letters = [forged_letter(f"letter-{n}", queue=f"{namespace}.planner") for n in range(4)]
    client.lpush(queue, json.dumps(envelope(letters[0], namespace)), "x" * (2 * 1024 * 1024))
    client.lpush(queue, *(json.dumps(envelope(letter, namespace)) for letter in letters[1:]))

    shown, not_shown = bus.read_dead_letters()

    assert [letter.message_id for letter in shown] == ["letter-0", "letter-1"]
    assert not_shown == 3  # the 2 MiB entry, and the two past the bound
    bus.close()


@pytest.mark.redis
def test_purging_a_letter_on_redis_removes_it_alone_and_rewrites_nothing_else(
    redis_url: str, tmp_path: Path
) -> None:
    """A purge took every entry and put back those kept: on a long queue it raced the workers'
    restore of what it held (one letter purged among 200,000 left 293,000 entries), rewrote
    junk entries as envelopes and merged the priority lists. It removes the one letter."""
    namespace = f"t{uuid.uuid4().hex[:10]}"
    bus = Bus(redis_url, namespace)
    bus.declare()
    client = redis.Redis.from_url(redis_url)
    queue = bus.topology.dead_letter_queue_name
    planner = f"{namespace}.planner"
    entries = [
        json.dumps(envelope(forged_letter(f"l{n}", queue=planner), namespace)) for n in range(5)
    ]
    client.lpush(queue, entries[0], "junk-a", *entries[1:4], "junk-b")
    client.lpush(f"{queue}\x06\x163", entries[4])  # kombu's list of priority 3
    before = client.lrange(queue, 0, -1)

    purged = plangate_in(
        tmp_path, "dlq", "purge", "l2", PLANGATE_BROKER_URL=redis_url, PLANGATE_NAMESPACE=namespace
    )

    assert purged.returncode == 0, purged.stderr
    assert client.lrange(queue, 0, -1) == [e for e in before if e != entries[2].encode()]
    assert client.lrange(f"{queue}\x06\x163", 0, -1) == [entries[4].encode()]
    bus.close()


@pytest.mark.redis
def test_dlq_list_narrows_thousands_of_letters_by_queue_and_limit(
    redis_url: str, tmp_path: Path
) -> None:
    """Given dead letters of two queues (a publisher's junk piles up on one),
    When an operator lists them with --queue, and with --limit,
    Then only that queue's are listed, and at most the N oldest, the rest counted on stderr:
    10,000 junk letters printed whole, with no way to narrow them.
    """
    namespace = f"t{uuid.uuid4().hex[:10]}"
    bus = Bus(redis_url, namespace)
    bus.declare()
    planner, gate = f"{namespace}.planner", f"{namespace}.gate"
    entries = [envelope(forged_letter(f"p{n}", queue=planner), namespace) for n in range(3)] + [
        envelope(forged_letter("g0", queue=gate), namespace)
    ]
    # LPUSH puts the last first: pushed in reverse, the queue holds them oldest first.
    queue = bus.topology.dead_letter_queue_name
    redis.Redis.from_url(redis_url).lpush(queue, *(json.dumps(e) for e in reversed(entries)))
    env = {"PLANGATE_BROKER_URL": redis_url, "PLANGATE_NAMESPACE": namespace}

    of_gate = plangate_in(tmp_path, "dlq", "list", "--queue", gate, "--json", **env)
    first = plangate_in(tmp_path, "dlq", "list", "--queue", planner, "--limit", "2", **env)

    assert of_gate.returncode == 0, of_gate.stderr
    assert [json.loads(line)["message_id"] for line in of_gate.stdout.splitlines()] == ["g0"]
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.splitlines()) == 2
    assert "1 more dead letters are not shown (--limit 2)" in first.stderr
