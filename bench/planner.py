"""How many plans per second one planner makes when every LLM answer takes 500 ms.

A local OpenAI-compatible stub (stdlib ThreadingHTTPServer on 127.0.0.1) answers every chat
completion with the same valid plan for the demo catalog after a fixed 500 ms. One planner
stage — the real PlannerHandler with the real OpenAI planner and SDK, inside a real
StageConsumer on the memory bus and a SQLite store, as in the embedded mode — plans a queue of
goals at concurrency 1 and then 32. The ceiling is concurrency / 0.5 s: what a planner that
spent no time of its own would reach. Figures are printed, never asserted.

    python bench/planner.py [--latency 0.5] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere in the checkout

from plangate import telemetry  # noqa: E402
from plangate.bus import Bus  # noqa: E402
from plangate.catalog import publish_catalog  # noqa: E402
from plangate.config import Settings  # noqa: E402
from plangate.stages import build_handler  # noqa: E402
from plangate.store import GoalRow, open_store  # noqa: E402
from plangate.store import outbox as outbox_rows  # noqa: E402
from plangate.submission import submit_goal  # noqa: E402
from plangate.tools import load_tools  # noqa: E402

PLAN = {
    "summary": "Report the open ticket count and the SLA threshold",
    "steps": [
        {"id": "count", "tool": "ticket_count", "args": {}, "when": None, "after": []},
        {"id": "sla", "tool": "sla_threshold", "args": {}, "when": None, "after": []},
    ],
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default 5 drops connections when 32 arrive at once


def _handler(latency: float) -> type[BaseHTTPRequestHandler]:
    answer = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": "bench-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": json.dumps(PLAN)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 600, "completion_tokens": 80, "total_tokens": 680},
        }
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real server would

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(latency)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def stub_server(latency: float) -> Iterator[str]:
    server = _Server(("127.0.0.1", 0), _handler(latency))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}/v1"
    finally:
        server.shutdown()
        server.server_close()


def planned(store: Any) -> int:
    with store.session() as session:
        count = session.execute(
            select(func.count()).select_from(GoalRow).where(GoalRow.status == "proposed")
        ).scalar_one()
        return int(count)


def measure(concurrency: int, goals: int, folder: Path) -> float:
    """Queue `goals` goals, start one planner stage, return seconds until all are planned."""
    settings = Settings(
        data_dir=folder / f"c{concurrency}",
        namespace=f"b{uuid.uuid4().hex[:10]}",
        planner="openai",
        model="bench-model",
        concurrency=concurrency,
    )
    store = open_store(settings.resolved_database_url())
    bus = Bus("memory://", settings.namespace)
    bus.declare()
    publish_catalog(store, load_tools(settings.tool_modules()).catalog().values())
    for n in range(goals):
        submit_goal(store, bus, f"how many tickets are open ({n})")
    handler = build_handler("planner", settings, store, bus)
    consumer = bus.stage_consumer(
        "planner",
        handler,
        concurrency=concurrency,
        on_published=lambda envelopes: outbox_rows.mark_sent(store, envelopes),
    )
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    started = time.perf_counter()
    thread.start()
    try:
        while planned(store) < goals:
            if time.perf_counter() - started > 300:
                raise SystemExit(f"only {planned(store)} of {goals} goals planned in 300 s")
            time.sleep(0.01)
        return time.perf_counter() - started
    finally:
        stop.set()
        thread.join()
        bus.close()
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.5, help="stub answer time, seconds")
    parser.add_argument("--seconds", type=float, default=5.0, help="rough length of each run")
    args = parser.parse_args()
    telemetry.setup_tracing()
    rows = []
    with stub_server(args.latency) as url, tempfile.TemporaryDirectory() as tmp:
        os.environ["OPENAI_BASE_URL"] = url
        os.environ["OPENAI_API_KEY"] = "bench"
        for concurrency in (1, 32):
            ceiling = concurrency / args.latency
            goals = max(4, round(ceiling * args.seconds))
            seconds = measure(concurrency, goals, Path(tmp))
            rows.append((concurrency, goals, seconds, goals / seconds, ceiling))
    print(f"One planner, stub model answering in {args.latency * 1000:.0f} ms (memory bus, SQLite)")
    columns = {"concurrency": 11, "goals": 6, "seconds": 8, "plans/s": 8, "ceiling": 8, "of it": 6}
    print(" ".join(f"{name:>{width}}" for name, width in columns.items()))
    for concurrency, goals, seconds, rate, ceiling in rows:
        print(
            f"{concurrency:>11} {goals:>6} {seconds:>8.2f} {rate:>8.1f} {ceiling:>8.1f}"
            f" {rate / ceiling:>6.0%}"
        )


if __name__ == "__main__":
    main()
