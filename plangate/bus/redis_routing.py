"""Routing a publish on Redis in one round trip, against the bindings as they are at that moment.

kombu's Redis transport emulates the topic exchange: every publish reads the exchange's whole
binding table (`SMEMBERS`), matches the routing key against each binding in Python, then
pushes the message onto each matched list, one command each: 1 + n round trips a message. Under
load that table read was 11-19 % of a stage's samples (bench/README.md).

Here a channel keeps the table it last read, with the digest Redis computed of it. A publish
runs one script that computes the digest of the table as it is now: unchanged, it pushes the
message onto the lists the kept table routes it to, all in that one step; changed (a worker
declared its queue, an observer bound or left), it pushes nothing and returns the new table,
which is kept and the message routed again. Every publish is routed against the bindings of
its own instant, atomically (kombu's read and pushes are not), so an observer that binds from
another process misses nothing and one that left gets no list made again. The topology others
rely on is kombu's, untouched: the same exchange, binding table and list entries; the matching
is kombu's own `lookup`, remembered per routing key for one table.

A message no queue is bound for (a `step.finished` nobody observes) is pushed nowhere, as
kombu does, once the script has seen that the table is still the kept one. Where kombu does
more than push, the message takes kombu's own path: a publish batch, a global key prefix, a
queue with an expiry this channel refreshes on each push, a channel with a dead-letter queue
for what matches nothing, or a table that keeps changing under the publish. A Redis that refuses
scripts (an ACL without `@scripting`, or a service that switches them off) gets kombu's path
too, for the rest of the channel's life, with a warning that says what to allow.
"""

from __future__ import annotations

import logging
import re
from functools import cached_property
from typing import Any, NamedTuple

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps
from redis.exceptions import NoPermissionError, ResponseError

log = logging.getLogger(__name__)

# KEYS[1]: the exchange's binding set; KEYS[2..]: the lists the caller's kept table routes to.
# ARGV[1]: the kept table's digest; ARGV[2]: the message. Each member is length-prefixed, so no
# two different tables share a digest's input.
ROUTE_SCRIPT = """
local members = redis.call('SMEMBERS', KEYS[1])
table.sort(members)
local parts = {}
for i, member in ipairs(members) do parts[i] = #member .. ':' .. member end
local digest = redis.sha1hex(table.concat(parts))
if digest ~= ARGV[1] then
  table.insert(members, 1, digest)
  return members
end
for i = 2, #KEYS do redis.call('LPUSH', KEYS[i], ARGV[2]) end
return #KEYS - 1
"""

# Tables read in one publish before it takes kombu's path (bindings changing that fast are a
# fleet starting or stopping; kombu's read-then-push serves them as it always did).
TABLE_READS = 3
# Routing keys remembered per table: plangate's are its message types, a few dozen.
ROUTES_KEPT = 1024


class BindingTable(NamedTuple):
    """An exchange's bindings as last read, their digest, and the queues each key went to."""

    digest: str
    bindings: list[tuple[str, ...]]
    routes: dict[str, tuple[str, ...]]


def refuses_scripts(error: ResponseError) -> bool:
    """Say whether Redis refused to run a script at all (an ACL, or scripting switched off)."""
    return isinstance(error, NoPermissionError) or "unknown command" in str(error).lower()


class ScriptedRouting(kombu_redis.Channel):
    """kombu's Redis channel, publishing through the topic exchange with `ROUTE_SCRIPT`."""

    _scripting_refused = False

    @cached_property
    def _route_script(self) -> Any:
        return self._create_client().register_script(ROUTE_SCRIPT)

    @cached_property
    def _binding_tables(self) -> dict[str, BindingTable]:
        return {}

    def basic_publish(self, message: Any, exchange: str, routing_key: str, **kwargs: Any) -> Any:
        """Publish as kombu does, routed by `ROUTE_SCRIPT` where nothing more is asked."""
        if (
            not exchange
            or kwargs.get("_publish_batch") is not None
            or self.global_keyprefix
            or self.typeof(exchange).type != "topic"
            or self._scripting_refused
        ):
            return super().basic_publish(message, exchange, routing_key, **kwargs)
        self._inplace_augment_message(message, exchange, routing_key)
        payload = dumps(message)
        priority = self._get_message_priority(message, reverse=False)
        table = self._binding_tables.get(exchange)
        for _ in range(TABLE_READS):
            queues = () if table is None else self._queues_for(table, exchange, routing_key)
            if table is not None and (
                any(queue in self._expires for queue in queues)
                or (not queues and self.deadletter_queue is not None)
            ):
                break
            lists = [self._q_for_pri(queue, priority) for queue in queues]
            try:
                with self.conn_or_acquire() as client:
                    reply = self._route_script(
                        keys=[self.keyprefix_queue % exchange, *lists],
                        args=[table.digest if table is not None else "", payload],
                        client=client,
                    )
            except ResponseError as exc:
                if not refuses_scripts(exc):
                    raise
                # Refused before it ran, so nothing was pushed: kombu's way is safe, and kept.
                self._scripting_refused = True
                log.warning(
                    "Redis refuses scripts (%s): publishing as kombu does, reading the "
                    "bindings at each publish; allow EVALSHA (ACL @scripting) to save the reads",
                    exc,
                )
                break
            if not isinstance(reply, list):
                return None
            table = self._keep_table(exchange, reply)
        # kombu's own delivery (the message is prepared, as its `basic_publish` leaves it).
        return self.typeof(exchange).deliver(message, exchange, routing_key, **kwargs)

    def _queues_for(self, table: BindingTable, exchange: str, routing_key: str) -> tuple[str, ...]:
        queues = table.routes.get(routing_key)
        if queues is None:
            found = self.typeof(exchange).lookup(table.bindings, exchange, routing_key, None)
            # As kombu's `deliver` filters what its lookup found.
            queues = tuple(sorted(q for q in found if q and q != self.deadletter_queue))
            if len(table.routes) >= ROUTES_KEPT:
                table.routes.clear()
            table.routes[routing_key] = queues
        return queues

    def _keep_table(self, exchange: str, reply: list[Any]) -> BindingTable:
        digest, *members = (bytes_to_str(item) for item in reply)
        table = BindingTable(digest, self._bindings_of(exchange, members), {})
        self._binding_tables[exchange] = table
        return table

    def get_table(self, exchange: str) -> list[tuple[str, ...]]:
        """Return the exchange's bindings as kombu's own path reads them, the malformed left out."""
        with self.conn_or_acquire() as client:
            members = client.smembers(self.keyprefix_queue % exchange)
        return self._bindings_of(exchange, [bytes_to_str(member) for member in members])

    def _bindings_of(self, exchange: str, members: list[str]) -> list[tuple[str, ...]]:
        """Split each member as kombu does, leaving out (with a warning) any not of three parts.

        Observers in other processes, and other languages, bind by adding members to this set
        (publishing-goals.md): kombu's matching unpacks each into three and raised on one typo,
        which stopped every publish of every stage until someone removed it.
        """
        kept = []
        for member in members:
            parts = tuple(member.split(self.sep))
            problem = _problem_of(parts, self.sep)
            if problem is None:
                kept.append(parts)
            elif member not in self._malformed_seen:
                self._malformed_seen.add(member)
                log.warning(
                    "binding %r of exchange %s %s: it is left out of routing; remove it (SREM %s)",
                    member[:200],
                    exchange,
                    problem,
                    self.keyprefix_queue % exchange,
                )
        return kept

    @cached_property
    def _malformed_seen(self) -> set[str]:
        return set()


def _problem_of(parts: tuple[str, ...], sep: str) -> str | None:
    """Say what keeps a binding from routing as kombu would, or None if nothing does.

    kombu matches a routing key against the binding's middle part as a regular expression
    (the one it writes for `#` is `^.*?$`): one that does not compile raised in every publish.
    """
    if len(parts) != 3:
        return f"is not `routing key, pattern, queue` joined by {sep!r}"
    try:
        re.compile(parts[1], re.U)
    except re.error as exc:
        return (
            f"has a pattern that is no regular expression ({exc}); kombu writes `^.*?$` "
            "for the routing key `#`"
        )
    return None
