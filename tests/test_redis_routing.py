"""Publishing on Redis: routed in one round trip, always against the bindings of that instant.

Everything runs on a real redis-server. The publishing bus keeps the exchange's binding table
between publishes (plangate/bus/redis_routing.py); these tests change the bindings from other
connections behind its back, as other processes do, and check that no message goes astray.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.transport import redis as kombu_redis

from plangate.bus import Bus, Envelope
from plangate.bus.redis_routing import ScriptedRouting
from plangate.bus.redis_transport import Transport
from schemas import GoalSubmitted, StepFinished, new_id
from tests.support import eventually

WAIT = 5.0


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    opened = redis.Redis.from_url(redis_url)
    try:
        yield opened
    finally:
        opened.close()


# The `bus` fixture of conftest.py, on Redis only.
ON_REDIS = pytest.mark.parametrize("broker_url", ["redis"], indirect=True)


def a_goal() -> Envelope:
    return Envelope.of(GoalSubmitted(goal_id=new_id(), text="check the payments service"))


def a_step_finished() -> Envelope:
    return Envelope.of(
        StepFinished(goal_id=new_id(), plan_id=new_id(), step_id="s1", tool="t", status="succeeded")
    )


def entries(client: redis.Redis, key: str) -> list[dict[str, Any]]:
    return [json.loads(item) for item in client.lrange(key, 0, -1)]


def publish_both_ways(bus: Bus, redis_url: str, body: Any, **options: Any) -> None:
    """Publish a goal.submitted on kombu's own Redis channel, then on plangate's."""
    exchange = Exchange(bus.topology.namespace, type="topic", durable=True)
    for transport in (kombu_redis.Transport, Transport):
        with Connection(redis_url, transport=transport) as connection:
            producer = Producer(connection.channel(), exchange=exchange)
            producer.publish(body, routing_key="goal.submitted", **options)


def command_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    names = ("evalsha", "smembers", "lpush")
    return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in names}


@ON_REDIS
def test_each_publish_is_one_script_call_that_reads_the_bindings_and_pushes(
    bus: Bus, client: redis.Redis
) -> None:
    bus.publish([a_goal()])  # the first publish of a connection reads the table
    client.config_resetstat()

    bus.publish([a_goal() for _ in range(5)])

    # Redis counts the commands a script runs among its own: every binding read and every
    # push happened inside the five script calls, none as a round trip of its own.
    assert command_calls(client) == {"evalsha": 5, "smembers": 5, "lpush": 5}
    assert client.llen(f"{bus.topology.namespace}.planner") == 6


@ON_REDIS
def test_an_observer_bound_from_another_connection_gets_the_very_next_message(
    bus: Bus, redis_url: str
) -> None:
    bus.publish([a_goal()])  # the publisher now keeps a table without the observer
    other = Bus(redis_url, namespace=bus.topology.namespace)
    with other.observe(types=["goal.submitted"]) as observer:
        goal = a_goal()
        bus.publish([goal])

        seen = observer.next(timeout=WAIT)

    assert seen is not None
    assert seen.goal_id == json.loads(goal.body)["goal_id"]


@ON_REDIS
def test_an_observer_that_left_gets_no_list_made_again(
    bus: Bus, redis_url: str, client: redis.Redis
) -> None:
    other = Bus(redis_url, namespace=bus.topology.namespace)
    with other.observe(types=["goal.submitted"]) as observer:
        bus.publish([a_goal()])  # the kept table routes goal.submitted to the observer too
        assert observer.next(timeout=WAIT) is not None
        left = observer.queue_name

    bus.publish([a_goal()])

    assert not client.exists(left), "a copy went to the queue of an observer that had left"
    assert client.llen(f"{bus.topology.namespace}.planner") == 2


@ON_REDIS
def test_a_message_no_queue_is_bound_for_is_dropped_as_kombu_drops_it(
    bus: Bus, client: redis.Redis
) -> None:
    bus.publish([a_goal()])  # the table read
    before = set(client.keys(f"{bus.topology.namespace}*"))
    client.config_resetstat()

    bus.publish([a_step_finished(), a_step_finished()])

    assert set(client.keys(f"{bus.topology.namespace}*")) == before
    # Each found the table unchanged in its one script call, and pushed nothing.
    assert command_calls(client) == {"evalsha": 2, "smembers": 2, "lpush": 0}


@ON_REDIS
def test_a_message_with_a_priority_goes_onto_the_list_kombu_would_use(
    bus: Bus, redis_url: str, client: redis.Redis
) -> None:
    queue = f"{bus.topology.namespace}.planner"
    publish_both_ways(bus, redis_url, {"urgent": True}, priority=5)

    priority_lists = [key.decode() for key in client.keys(f"{queue}\x06\x16*")]
    assert len(priority_lists) == 1, priority_lists
    assert client.llen(priority_lists[0]) == 2
    assert not client.exists(queue)


@ON_REDIS
def test_the_list_entry_is_the_one_kombus_own_routing_writes(
    bus: Bus, redis_url: str, client: redis.Redis
) -> None:
    queue = f"{bus.topology.namespace}.planner"
    publish_both_ways(bus, redis_url, {"same": "body"}, headers={"h": "1"})
    plangates, kombus = entries(client, queue)  # LPUSH: the newest entry comes first

    for entry in (plangates, kombus):
        entry["properties"].pop("delivery_tag")
    assert plangates == kombus


@ON_REDIS
def test_publishing_goes_on_after_redis_forgets_its_scripts(bus: Bus, client: redis.Redis) -> None:
    bus.publish([a_goal()])
    client.script_flush()

    bus.publish([a_goal()])

    assert client.llen(f"{bus.topology.namespace}.planner") == 2


@ON_REDIS
def test_a_redis_that_refuses_scripts_is_published_to_as_kombu_does(
    bus: Bus, redis_url: str, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """An ACL without @scripting (or a service with scripts off) still gets every message."""
    user = f"noscripts{uuid.uuid4().hex[:6]}"
    client.acl_setuser(
        user,
        enabled=True,
        nopass=True,
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-@scripting"],
    )
    try:
        limited = redis_url.replace("redis://", f"redis://{user}:@")
        exchange = Exchange(bus.topology.namespace, type="topic", durable=True)
        with Connection(limited, transport=Transport) as c, caplog.at_level("WARNING"):
            producer = Producer(c.channel(), exchange=exchange)
            for _ in range(3):
                producer.publish({"a": 1}, routing_key="goal.submitted")
    finally:
        client.acl_deluser(user)

    assert client.llen(f"{bus.topology.namespace}.planner") == 3
    warnings = [r.getMessage() for r in caplog.records if "refuses scripts" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "@scripting" in warnings[0]


def test_a_queue_that_expires_is_refreshed_by_kombus_own_path(
    redis_url: str, client: redis.Redis
) -> None:
    namespace = f"r{uuid.uuid4().hex[:10]}"
    exchange = Exchange(namespace, type="topic", durable=True)
    expiring = Queue(f"{namespace}.short", exchange, routing_key="goal.submitted", expires=60)
    with Connection(redis_url, transport=Transport) as c:
        channel = c.channel()
        expiring.bind(channel).declare()

        Producer(channel, exchange=exchange).publish({"a": 1}, routing_key="goal.submitted")

    assert client.llen(expiring.name) == 1
    assert 0 < client.pttl(expiring.name) <= 60_000


@ON_REDIS
@pytest.mark.parametrize("scripted", [True, False], ids=["scripted", "kombus_path"])
def test_a_malformed_binding_an_observer_added_is_left_out_and_said_once(
    bus: Bus,
    client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    scripted: bool,
) -> None:
    """A binding of two parts, not three (an observer's typo in another language): kombu's
    matching raised on it, and every publish of every stage failed until it was removed."""
    key = f"_kombu.binding.{bus.topology.namespace}"
    bus.declare()
    client.sadd(key, "plan.*\x06\x16probe.bad")
    if not scripted:
        ScriptedRouting._scripting_refused = True  # every channel takes kombu's own path
    try:
        with caplog.at_level("WARNING"):
            bus.publish([a_goal(), a_goal()])
    finally:
        ScriptedRouting._scripting_refused = False

    assert client.llen(f"{bus.topology.namespace}.planner") == 2
    warnings = [
        r.getMessage() for r in caplog.records if "is left out of routing" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert "probe.bad" in warnings[0]
    assert f"SREM {key}" in warnings[0]


@ON_REDIS
@pytest.mark.parametrize("scripted", [True, False], ids=["scripted", "kombus_path"])
def test_a_binding_whose_pattern_is_no_regular_expression_is_left_out_and_said_once(
    bus: Bus,
    client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    scripted: bool,
) -> None:
    """An observer in another language bound with the pattern `[`: kombu compiles each
    pattern as a regular expression, and every publish of every stage failed (`unterminated
    character set`), the goals waiting in the outbox, while every `/readyz` said ok."""
    key = f"_kombu.binding.{bus.topology.namespace}"
    bus.declare()
    good, bad = f"{bus.topology.namespace}.good", f"{bus.topology.namespace}.badre"
    client.sadd(key, f"#\x06\x16[\x06\x16{bad}", f"#\x06\x16^.*?$\x06\x16{good}")
    if not scripted:
        ScriptedRouting._scripting_refused = True  # every channel takes kombu's own path
    try:
        with caplog.at_level("WARNING"):
            bus.publish([a_goal(), a_goal()])
    finally:
        ScriptedRouting._scripting_refused = False

    assert client.llen(f"{bus.topology.namespace}.planner") == 2
    assert client.llen(good) == 2
    assert client.llen(bad) == 0
    warnings = [
        r.getMessage() for r in caplog.records if "is left out of routing" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert "no regular expression" in warnings[0]
    assert "^.*?$" in warnings[0]


@ON_REDIS
def test_a_message_popped_while_a_consumer_closes_its_connection_goes_back_on_the_list(
    bus: Bus, client: redis.Redis, redis_url: str
) -> None:
    """Given a consumer whose BRPOP is still outstanding when it stops (its last wait timed
    out), When a message arrives and the connection is then closed (a worker's SIGTERM),
    Then the message is back on its list: kombu read the BRPOP's reply while closing, found no
    consumer and requeued it through the first channel still listed, and none was: the goal
    waited for the reconciler, a minute later."""
    namespace = f"r{uuid.uuid4().hex[:10]}"
    exchange = Exchange(namespace, type="topic", durable=True)
    queue = Queue(f"{namespace}.stage", exchange, routing_key="goal.submitted", durable=True)
    connection = Connection(redis_url, transport=Transport)
    channel = connection.channel()
    queue.bind(channel).declare()
    consumer = Consumer(channel, queues=[queue], callbacks=[], accept=["json"])
    consumer.consume()
    with pytest.raises(TimeoutError):
        connection.drain_events(timeout=0.2)  # its BRPOP stays outstanding
    consumer.cancel()
    with Connection(redis_url, transport=Transport) as other:
        Producer(other.channel(), exchange=exchange).publish({"a": 1}, routing_key="goal.submitted")
    eventually(lambda: client.llen(queue.name) == 0, what="the outstanding BRPOP took it")

    connection.close()

    assert client.llen(queue.name) == 1
    assert client.hlen("unacked") == 0
