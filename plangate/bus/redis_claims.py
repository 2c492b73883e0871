"""Messages a Redis consumer holds: renewed while its worker lives, restored soon after it dies.

kombu's Redis transport emulates acks. A message it delivers is written to the `unacked` hash
(the raw message, its exchange and routing key) and its delivery time to the `unacked_index`
sorted set; any consumer's restore sweep puts every message older than `visibility_timeout`
back on its list. kombu's default timeout is an hour, so the messages a SIGKILLed worker held
(up to its concurrency) sat there for an hour, and the reconciler sent each goal's last message
again meanwhile: most of the resends of the chaos test.

So the timeout is short (`redelivery_after_seconds`) and, as dramatiq's Redis broker does with
its worker heartbeats, a live consume loop renews the delivery time of every message it holds,
several times per timeout, however long its handlers run. A dead worker stops renewing; the
next sweep of any live worker of any stage restores its messages, within the timeout and one
sweep. The reconciler leaves alone a goal whose message is held this way (`held_goal_ids`): it
is being handled, or it is about to come back by itself.

This leans on kombu 5.7's names (`QoS._delivered`, `unacked_index_key`, `unacked_key`,
`restore_visible`); kombu is pinned to that minor version and `tests/test_redelivery.py` fails
if they change. On AMQP the broker itself hands a dead connection's messages back at once, and
the memory transport lives and dies with its process: neither needs any of this.
"""

from __future__ import annotations

import time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.json import loads

from plangate.bus.envelope import GOAL_HEADER

REDELIVERY_AFTER_SECONDS = 30.0
# Renewed this many times per timeout: a loop can miss a few (a slow Redis) without losing one.
RENEWALS_PER_TIMEOUT = 4
# Far above what a deployment holds (workers x concurrency); a bound on what one sweep reads.
MAX_HELD = 10_000


def is_redis(channel: Any) -> bool:
    """Return whether the channel acks through kombu's Redis emulation."""
    return isinstance(channel, kombu_redis.Channel)


def renew(channel: Any) -> None:
    """Mark every message this channel holds as delivered now (only those still unacked)."""
    tags = list(channel.qos._delivered)
    if tags:
        now = time.time()
        with channel.conn_or_acquire() as client:
            client.zadd(channel.unacked_index_key, dict.fromkeys(tags, now), xx=True)


def restore_abandoned(channel: Any) -> None:
    """Put back on their lists the messages no live consumer renewed within the timeout."""
    channel.qos.restore_visible(num=channel.unacked_restore_limit, interval=1)


def held_goal_ids(channel: Any, exchange: str) -> set[str]:
    """Return the goals with a message held unacked on this exchange, by any consumer."""
    goals: set[str] = set()
    with channel.conn_or_acquire() as client:
        for count, (_, value) in enumerate(client.hscan_iter(channel.unacked_key, count=500)):
            if count >= MAX_HELD:
                break
            goal_id = _goal_of(value, exchange)
            if goal_id:
                goals.add(goal_id)
    return goals


def _goal_of(value: bytes | str, exchange: str) -> str | None:
    try:
        raw, held_on, _routing_key = loads(value)
        goal_id = raw["headers"][GOAL_HEADER]
    except Exception:  # not ours to judge: kombu restores or drops what it wrote
        return None
    return goal_id if held_on == exchange and isinstance(goal_id, str) else None
