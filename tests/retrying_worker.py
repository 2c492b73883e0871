"""A planner-stage worker process for the delayed-retry kill test.

Its handler writes `GOAL_ID ATTEMPT` to a file for every message, asks for a retry after
`DELAY` seconds on the first attempt, and is done on any later one. Its retries are stored the
way a real worker's are: through the store's SentMarker, in the outbox.

    python -m tests.retrying_worker BROKER_URL NAMESPACE DATABASE_URL DELAY LOG_FILE
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from plangate.bus import Bus, Delivery, Envelope
from plangate.errors import Retry
from plangate.store import open_store
from plangate.store.outbox import SentMarker
from schemas import Message


def main(broker_url: str, namespace: str, database_url: str, delay: str, log_file: str) -> None:
    store = open_store(database_url)
    bus = Bus(broker_url, namespace)
    marker = SentMarker(store)

    def handler(message: Message, delivery: Delivery) -> list[Envelope]:
        with Path(log_file).open("a", encoding="utf-8") as log:
            log.write(f"{message.goal_id} {delivery.attempt}\n")
        if delivery.attempt == 1:
            raise Retry("another planner holds the goal", delay=float(delay))
        return []

    consumer = bus.stage_consumer("planner", handler, concurrency=1, on_published=marker)
    consumer.run_until_stopped(threading.Event())  # until it is killed


if __name__ == "__main__":
    main(*sys.argv[1:])
