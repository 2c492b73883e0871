"""How `plangate review` reaches a deployment, and as whom; deciding by either way.

A reviewer token (`PLANGATE_REVIEWER_TOKEN`, or `--token-file PATH`; never a flag, which shell
history would keep) says who decides. With `--server URL` (or `PLANGATE_SERVER_URL`) the
commands call that `plangate serve`, which checks the token; without it they work on the store
and broker in the settings, and the token is checked against `PLANGATE_REVIEWERS_FILE` here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer

from plangate.cli.common import load_settings, quiet_relay, warn_broker_unreachable
from plangate.cli.review_api import ReviewApi
from plangate.config import Settings
from plangate.errors import ConfigError
from plangate.reviewers import Reviewer, Reviewers
from plangate.small_files import read_text

if TYPE_CHECKING:
    from approval_gate.review import Review
    from plangate.bus import Envelope
    from plangate.store import Store

ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        metavar="URL",
        help="Go through this `plangate serve` (as `kubectl` or `gh` do); "
        "default PLANGATE_SERVER_URL. Without it: the store and broker in your settings.",
        show_default=False,
    ),
]
TokenFileOption = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        metavar="PATH",
        help="Read your reviewer token from PATH (default: PLANGATE_REVIEWER_TOKEN).",
        dir_okay=False,
        show_default=False,
    ),
]


def no_deployment(doing: str) -> str:
    """Say that `doing` needs workers to hand the goal to, and how to reach them."""
    return (
        f"{doing} needs a running deployment: pass --server URL (or set PLANGATE_SERVER_URL) "
        "to go through its `plangate serve`, or set PLANGATE_BROKER_URL (and "
        "PLANGATE_DATABASE_URL) to reach its broker and store; `plangate run` asks at its own "
        "terminal for its own goal"
    )


NO_TOKEN = (
    "no reviewer token: set PLANGATE_REVIEWER_TOKEN or pass --token-file PATH (a token is "
    "printed once by `plangate reviewers add NAME`; ask whoever runs plangate for yours)"
)


@dataclass(frozen=True)
class Access:
    """The settings, the server to go through (if any) and the reviewer token (if any)."""

    settings: Settings
    server: str | None
    token: str | None = field(repr=False)

    def api(self) -> ReviewApi:
        """Return a client of the server's review API, sending the token."""
        if self.server is None or self.token is None:
            raise ConfigError(NO_TOKEN if self.token is None else "no --server URL given")
        return ReviewApi(self.server, self.token)

    def reviewer(self) -> Reviewer:
        """Return the reviewer the token names in the reviewers file (the store path)."""
        path = self.settings.reviewers_file
        if path is None:
            raise ConfigError(
                "without --server, a reviewer token is checked against the reviewers file: "
                "set PLANGATE_REVIEWERS_FILE, or pass --server URL to go through plangate serve"
            )
        reviewer = Reviewers.from_file(path).identify(self.token or "")
        if reviewer is None:
            raise ConfigError(
                f"that reviewer token is not in the reviewers file {path}; check "
                "PLANGATE_REVIEWER_TOKEN or --token-file"
            )
        return reviewer


def resolve(
    server: str | None, token_file: Path | None, *, deciding: bool, doing: str = "deciding"
) -> Access:
    """Return how to reach the deployment; ConfigError (one line) if something is missing.

    A deciding command needs a deployment (workers to hand the plan to) and a token; a
    reading one needs a token only to go through a server (locally the store's own
    credentials guard it).
    """
    settings = load_settings()
    server = server or settings.server_url
    if deciding and not server and "broker_url" not in settings.model_fields_set:
        raise ConfigError(no_deployment(doing))
    token = _token(token_file, settings)
    if token is None and (deciding or server):
        raise ConfigError(NO_TOKEN)
    return Access(settings, server, token)


def _token(path: Path | None, settings: Settings) -> str | None:
    if path is None:
        secret = settings.reviewer_token
        if secret is None:
            return None
        return secret.get_secret_value().strip() or None
    try:
        token = read_text(path).strip()
    except OSError as exc:
        raise ConfigError(f"cannot read --token-file {path}: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"--token-file {path} is empty; put your reviewer token in it")
    return token


@contextmanager
def opened_store(settings: Settings | None = None) -> Iterator[tuple[Settings, Store]]:
    """Open the store the settings name; closed when the block ends."""
    from plangate.store import open_store

    settings = settings or load_settings()
    # The data folder's own store is brought up to date, as `plangate run` does; a
    # deployment's is `plangate db upgrade`'s alone (an empty one was given every table).
    upgrade = settings.store_in_data_folder
    store = open_store(settings.resolved_database_url(), upgrade=upgrade, create=False)
    try:
        yield settings, store
    finally:
        store.close()


@contextmanager
def opened_review(settings: Settings | None = None) -> Iterator[tuple[Settings, Store, Review]]:
    """Open the store and the review service on it; closed when the block ends."""
    from plangate.stages import build_review

    with opened_store(settings) as (settings, store):
        yield settings, store, build_review(settings, store)


def publish(settings: Settings, store: Store, envelopes: Sequence[Envelope]) -> None:
    """Publish what a decision committed to the outbox, to the broker the settings name."""
    from plangate.bus import Bus
    from plangate.relay import deliver

    bus = Bus(settings.broker_url, settings.namespace)
    quiet_relay()
    try:
        if not deliver(store, bus, envelopes):
            warn_broker_unreachable("the decision is recorded")
    finally:
        bus.close()


def path_of(*parts: str) -> str:
    """Return an API path under /api/v1/reviews from ids (each quoted)."""
    return "".join(f"/{quote(part, safe='')}" for part in parts)


def outcome_here(store: Store, plan_id: str, goal_id: str, message: str) -> dict[str, Any]:
    """Return what a decision led to, read from the store (the API answers the same)."""
    from plangate.store.goals import get_goal, latest_plan

    with store.snapshot() as session:
        goal = get_goal(session, goal_id, typed=True)
        newest = latest_plan(session, goal_id)
        return {
            "plan_id": plan_id,
            "goal_id": goal_id,
            "status": goal.status,
            "reason": goal.status_reason,
            "newest_plan_id": newest.plan_id if newest else None,
            "revision": newest.revision if newest else None,
            "message": message,
        }


def decide_here(
    access: Access,
    plan_id: str,
    call: Callable[[Review, Reviewer], Sequence[Envelope]],
    message: Callable[[Review, str], str],
) -> dict[str, Any]:
    """Decide in the store as the reviewer the token names; publish; return the outcome."""
    reviewer = access.reviewer()
    with opened_review(access.settings) as (settings, store, review):
        held = review.get(plan_id)  # by a short id too: the outcome names the whole one
        envelopes = call(review, reviewer)
        publish(settings, store, envelopes)
        said = message(review, reviewer.name)
        return outcome_here(store, held.plan.plan_id, held.goal.id, said)


def decide_there(access: Access, plan_id: str, action: str, body: dict[str, Any]) -> Any:
    """Decide through the server; the plan hash defaults to the one it shows now."""
    with access.api() as api:
        if not body.get("plan_hash"):
            body["plan_hash"] = api.get(path_of(plan_id))["plan_hash"]
        outcome = api.post(path_of(plan_id, action), body)
    return {
        "plan_id": plan_id,
        "goal_id": outcome["goal_id"],
        "status": outcome["status"],
        "reason": outcome.get("reason"),
        "newest_plan_id": outcome["plan_id"],
        "revision": outcome["revision"],
        "message": outcome["message"],
    }
