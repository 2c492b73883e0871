"""One hop of the raw-kombu baseline in `bench/pipeline.py`: consume, republish, ack.

It does what a stage of plangate must do at the least and nothing more: take a JSON message
from its queue, parse it, publish the next message of the seed example's pipeline (the body
and headers plangate itself sent for that hop, with this goal's id put in) to the same kind of
topic exchange, with the same properties, then ack. No store, no validation, no threads.

Given a store (STORE: a SQLite file, or a PostgreSQL URL), it is a hop of the floor instead: the
same, plus the least durable work the design asks of that stage (`floor.py`) around the publish.

    python bench/kombu_hop.py URL EXCHANGE QUEUE IN_KEY OUT_KEY TEMPLATE.json PREFETCH [STORE]
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from types import FrameType
from typing import Any

from kombu import Connection, Consumer, Exchange, Producer, Queue


def sender(
    producer: Producer, exchange: Exchange, headers: dict[str, str]
) -> Callable[[str, bytes], None]:
    """Return what publishes a body under a routing key, with the properties plangate uses."""

    def send(routing_key: str, body: bytes) -> None:
        producer.publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            headers=headers,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            retry=True,
        )

    return send


def main(argv: list[str]) -> int:
    """Consume QUEUE until SIGTERM, republishing each message under OUT_KEY."""
    url, exchange_name, queue_name, in_key, out_key, template_file, prefetch, *floor = argv
    template = json.loads(Path(template_file).read_text(encoding="utf-8"))
    out = template[out_key]
    body_template: str = out["body"]
    headers_template: dict[str, str] = out["headers"]
    template_goal = template["goal_id"]
    exchange = Exchange(exchange_name, type="topic", durable=True)
    queue = Queue(queue_name, exchange=exchange, routing_key=in_key, durable=True)
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    with Connection(url, connect_timeout=5) as connection:
        channel = connection.channel()
        producer = Producer(channel, exchange=exchange)
        stage = None
        if floor:  # imported only here: the baseline's hops load nothing of plangate
            from floor import DurableStage

            stage = DurableStage(floor[0], in_key)

        def on_message(body: Any, message: Any) -> None:
            goal_id = body["goal_id"]  # kombu parsed the JSON (application/json only)
            headers = {k: v.replace(template_goal, goal_id) for k, v in headers_template.items()}

            send = sender(producer, exchange, headers)
            out_body = body_template.replace(template_goal, goal_id).encode("utf-8")
            if stage is None:
                send(out_key, out_body)
            else:
                received = (message.body, {str(k): str(v) for k, v in message.headers.items()})
                stage.handle(goal_id, received, (out_key, out_body), send)
            message.ack()

        consumer = Consumer(
            channel,
            queues=[queue],
            callbacks=[on_message],
            prefetch_count=int(prefetch),
            accept=["application/json"],
        )
        with consumer:
            print("ready", flush=True)
            while not stopping:
                with suppress(TimeoutError):
                    connection.drain_events(timeout=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
