"""`plangate serve` reads X-Forwarded-For only from the proxies it is told to trust.

Failed logins are limited per client address. uvicorn's default trusted the header from
127.0.0.1, so a local client named a new address with each bad token and was never limited
(or named someone else's, to lock them out). Unset PLANGATE_TRUSTED_PROXIES: the client is who
connected; named: that proxy's header names the client.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from plangate.server.ratelimit import MAX_FAILURES as LIMIT
from tests.fleet import free_port
from tests.support import eventually, plangate_in


@contextmanager
def serving(data: Path, **env: str) -> Iterator[str]:
    """Run `plangate serve` as its own process on a free port; yield its URL."""
    assert plangate_in(data, "db", "upgrade").returncode == 0
    reviewers = data / "reviewers.yaml"
    added = plangate_in(data, "reviewers", "add", "alice", "--file", str(reviewers))
    assert added.returncode == 0, added.stderr
    port = free_port()
    outer = {k: v for k, v in os.environ.items() if not k.startswith(("PLANGATE_", "OTEL_"))}
    settings = {
        "PLANGATE_DATA_DIR": str(data),
        "PLANGATE_BROKER_URL": "memory://",
        "PLANGATE_REVIEWERS_FILE": str(reviewers),
        "PLANGATE_SESSION_SECRET": "s" * 40,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "plangate", "serve", "--port", str(port)],
        env=outer | settings | env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: status_of(f"{url}/healthz") == 200 or None, 20, "serve to start")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def status_of(url: str, headers: dict[str, str] | None = None) -> int | None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as got:
            return int(got.status)
    except urllib.error.HTTPError as refused:
        return refused.code
    except OSError:
        return None


def bad_tokens(url: str, count: int, forwarded_for: str | None = None) -> list[int | None]:
    """Send `count` wrong tokens, each claiming a new client address; return the statuses."""
    statuses = []
    for n in range(count):
        headers = {"Authorization": "Bearer not-a-token"}
        headers["X-Forwarded-For"] = forwarded_for or f"203.0.113.{n + 1}"
        statuses.append(status_of(f"{url}/api/v1/reviews", headers))
    return statuses


def test_untrusted_x_forwarded_for_does_not_slip_past_the_failed_login_limit(
    tmp_path: Path,
) -> None:
    with serving(tmp_path) as url:
        statuses = bad_tokens(url, LIMIT + 2)

    assert statuses[:LIMIT] == [401] * LIMIT
    assert statuses[LIMIT:] == [429, 429]


def test_a_trusted_proxy_s_x_forwarded_for_names_the_client(tmp_path: Path) -> None:
    with serving(tmp_path, PLANGATE_TRUSTED_PROXIES="127.0.0.1") as url:
        spread = bad_tokens(url, LIMIT + 2)  # each a client of its own, behind the proxy
        one = bad_tokens(url, LIMIT + 1, forwarded_for="198.51.100.9")

    assert spread == [401] * (LIMIT + 2)
    assert one[-1] == 429
