"""The tool catalog in the store: executors publish the specs they offer; planners read them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, cast

from pydantic import ValidationError
from sqlalchemy import Table, Text, bindparam, select, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session

from plangate.store import Store, ToolCatalogRow
from plangate.store.claims import insert_if_absent
from plangate.store.hot_statements import HotStatement
from schemas import Catalog, ToolSpec, utcnow

log = logging.getLogger(__name__)


# Each spec as the text stored (cast in SQL: a driver that parses JSON columns gets text too),
# which is what `_spec` is keyed by, and whether an executor offered it lately (compared in SQL:
# a flag is cheaper to read than a time); one plain statement, read for every plan and
# decision, on SQLite's own cursor (about 6 µs, not 25 through the ORM's execute).
_TOOLS = cast(Table, ToolCatalogRow.__table__)
_CATALOG = HotStatement(
    select(
        _TOOLS.c.name,
        sql_cast(_TOOLS.c.spec, Text),
        (_TOOLS.c.updated_at >= bindparam("since", type_=_TOOLS.c.updated_at.type)).label("fresh"),
    )
)


# An executor says it still offers its tools by touching their rows this often: an executor
# lacking a plan's tools hands the plan back while another that offers them lives
# (`executor_worker.lacking_tools`), and gives up on it once none has for `OFFER_LAPSES`.
OFFER_REFRESH = timedelta(seconds=30)
OFFER_LAPSES = timedelta(seconds=100)


@dataclass
class _Offered:
    """The tools this process publishes, and when it last said it still offers them."""

    names: set[str] = field(default_factory=set)
    at: datetime = field(default_factory=lambda: datetime.min.replace(tzinfo=UTC))


_offered = _Offered()


def publish_catalog(store: Store, specs: Iterable[ToolSpec], *, shared: bool = True) -> None:
    """Insert or replace the specs of the tools this executor offers.

    `shared`: other executors may offer them too (a worker); not so for the embedded mode's.
    """
    specs = list(specs)
    _offered.names.update(spec.name for spec in specs)
    _offered.at = utcnow()
    with store.session() as session:
        _touch(session, [spec.name for spec in specs])
        for spec in specs:
            body = spec.model_dump(mode="json")
            # A claim, not a look then an add: executors of a Deployment start together, and
            # the one whose add came second failed on the duplicate key and exited.
            if insert_if_absent(session, ToolCatalogRow, {"name": spec.name, "spec": body}):
                continue
            row = session.get(ToolCatalogRow, spec.name)
            if row is not None and row.spec != body:
                # Last writer wins, so two executors offering a tool differently (a rollout, or
                # one loading other modules) plan for one and may call the other: said, as
                # tools.md asks every executor to load the same tools.
                fields = sorted(
                    k for k in body.keys() | row.spec.keys() if body.get(k) != row.spec.get(k)
                )
                if not shared:  # one process: its tools changed since the store's last run
                    changed = ", ".join(fields)
                    log.info("tool %s changed since the last run (%s)", spec.name, changed)
                    row.spec = body
                    continue
                log.warning(
                    "tool %s differs from the catalog's (%s): replaced by this executor's; every "
                    "executor must offer the same tools (expected only while a new version rolls "
                    "out), or plans made for one are run by another",
                    spec.name,
                    ", ".join(fields),
                )
                row.spec = body


def keep_offering(store: Store) -> None:
    """Touch this process's tools in the catalog, at most once per `OFFER_REFRESH` (a sweep)."""
    now = utcnow()
    if not _offered.names or now - _offered.at < OFFER_REFRESH:
        return
    with store.session() as session:
        _touch(session, sorted(_offered.names))
    _offered.at = now


def _touch(session: Session, names: list[str]) -> None:
    if names:
        session.execute(
            update(ToolCatalogRow).where(ToolCatalogRow.name.in_(names)).values(updated_at=utcnow())
        )


def offered_lately(store: Store, names: Iterable[str]) -> dict[str, bool]:
    """Return, for each tool in the catalog of `names`, whether an executor offered it lately."""
    with store.reading() as session:
        return _offered_lately(session, names)


def not_offered(session: Session, names: Iterable[str]) -> list[str]:
    """Return those of `names` no executor offered lately (or ever), sorted, read in `session`.

    What a goal approved but not started waits for: said instead of guessing at signing keys.
    """
    names = set(names)
    offered = _offered_lately(session, names)
    return sorted(name for name in names if not offered.get(name, False))


def _offered_lately(session: Session, names: Iterable[str]) -> dict[str, bool]:
    since = utcnow() - OFFER_LAPSES
    rows = session.execute(
        select(ToolCatalogRow.name, ToolCatalogRow.updated_at).where(
            ToolCatalogRow.name.in_(list(names))
        )
    )
    return {str(name): at >= since for name, at in rows}


@dataclass(frozen=True)
class Offer:
    """A tool in the catalog, and when an executor last said it offers it."""

    name: str
    effect: str  # "read", "write", or "invalid" (a spec this version cannot read)
    offered_at: datetime
    # "offered" lately; "retired": not, while other tools are (left out of plans); "lapsed":
    # not, and no tool is (every executor stopped: plans are made with it all the same).
    state: str


def list_offers(store: Store) -> list[Offer]:
    """Return every tool in the catalog, by name, with when it was last offered."""
    since = utcnow() - OFFER_LAPSES
    with store.reading() as session:
        rows = session.execute(
            select(ToolCatalogRow.name, ToolCatalogRow.spec, ToolCatalogRow.updated_at).order_by(
                ToolCatalogRow.name
            )
        ).all()
    offered = any(at >= since for _name, _spec, at in rows)
    lapsed = "retired" if offered else "lapsed"
    return [
        Offer(
            str(name),
            str(spec.get("effect", "invalid")) if isinstance(spec, dict) else "invalid",
            at,
            "offered" if at >= since else lapsed,
        )
        for name, spec, at in rows
    ]


def load_catalog(store: Store) -> Catalog:
    """Return every tool spec executors have published, by name (read only: no write lock)."""
    with store.reading() as session:
        return read_catalog(session)


def read_catalog(session: Session) -> Catalog:
    """Return the catalog, read in the caller's transaction.

    A handler that already has a transaction open reads it there: on SQLite each transaction
    takes the write lock, and one fewer per goal shows when many goals are in flight.
    """
    return _read(session, offered_only=False)


def read_offered_catalog(session: Session) -> Catalog:
    """Return the catalog without the tools no executor offers any more (what planners plan with).

    A tool renamed or removed stays in the store (nothing knows it went for good): while
    executors say they offer other tools, one none has offered for `OFFER_LAPSES` is left out,
    or every plan using it waited, then failed. While none offers any (all restarting, an
    outage), every tool is kept: plans wait for executors rather than fail.
    """
    return _read(session, offered_only=True)


def _read(session: Session, *, offered_only: bool) -> Catalog:
    rows = _CATALOG.rows(session, {"since": utcnow() - OFFER_LAPSES})
    offered = offered_only and any(fresh for _name, _text, fresh in rows)
    catalog: Catalog = {}
    for name, text, fresh in rows:
        if offered and not fresh:
            _say_retired(name)
            continue
        if fresh:
            _retired_said.discard(name)  # offered again: said again should it go
        try:
            catalog[name] = _spec(text)
        except ValidationError as exc:
            # One bad row (written by an older version) must not stop every goal: plans
            # that use the tool are refused by validation, as for any unknown tool.
            log.warning("tool %s in the catalog is invalid and left out: %s", name, exc)
    return catalog


# The retired tools this process said it leaves out of plans: said once each, not per plan.
_retired_said: set[str] = set()


def _say_retired(name: str) -> None:
    if name not in _retired_said:
        _retired_said.add(name)
        log.warning(
            "tool %s is left out of plans: no running executor has offered it for %d s while "
            "others offer their tools (renamed or removed? `plangate tools list` shows when each "
            "was last offered)",
            name,
            OFFER_LAPSES.total_seconds(),
        )


@lru_cache(maxsize=1024)
def _spec(spec_json: str) -> ToolSpec:
    # Checking a spec's schemas against their meta-schema costs milliseconds, and planners and
    # gates read the catalog for every message: a spec already checked is not checked again.
    # Keyed by the spec's whole text (its key order kept: prompts show it), so a republished
    # spec is checked afresh.
    spec: Any = json.loads(spec_json)
    return ToolSpec.model_validate(spec)
