"""The tool catalog in the store: executors publish the specs they offer; planners read them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, cast

from pydantic import ValidationError
from sqlalchemy import Table, Text, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session

from plangate.store import Store, ToolCatalogRow
from plangate.store.hot_statements import HotStatement
from schemas import Catalog, ToolSpec

log = logging.getLogger(__name__)


# Each spec as the text stored (cast in SQL: a driver that parses JSON columns gets text too),
# which is what `_spec` is keyed by; one plain statement, read for every plan and decision, on
# SQLite's own cursor (about 6 µs, not 25 through the ORM's execute).
_TOOLS = cast(Table, ToolCatalogRow.__table__)
_CATALOG = HotStatement(select(_TOOLS.c.name, sql_cast(_TOOLS.c.spec, Text)))


def publish_catalog(store: Store, specs: Iterable[ToolSpec]) -> None:
    """Insert or replace the specs of the tools this executor offers."""
    with store.session() as session:
        for spec in specs:
            row = session.get(ToolCatalogRow, spec.name)
            body = spec.model_dump(mode="json")
            if row is None:
                session.add(ToolCatalogRow(name=spec.name, spec=body))
            elif row.spec != body:
                # Last writer wins, so two executors offering a tool differently (a rollout, or
                # one loading other modules) plan for one and may call the other: said, as
                # tools.md asks every executor to load the same tools.
                fields = sorted(
                    k for k in body.keys() | row.spec.keys() if body.get(k) != row.spec.get(k)
                )
                log.warning(
                    "tool %s differs from the catalog's (%s): replaced by this executor's; every "
                    "executor must offer the same tools (expected only while a new version rolls "
                    "out), or plans made for one are run by another",
                    spec.name,
                    ", ".join(fields),
                )
                row.spec = body


def load_catalog(store: Store) -> Catalog:
    """Return every tool spec executors have published, by name."""
    with store.session() as session:
        return read_catalog(session)


def read_catalog(session: Session) -> Catalog:
    """Return the catalog, read in the caller's transaction.

    A handler that already has a transaction open reads it there: on SQLite each transaction
    takes the write lock, and one fewer per goal shows when many goals are in flight.
    """
    catalog: Catalog = {}
    for name, text in _CATALOG.rows(session, {}):
        try:
            catalog[name] = _spec(text)
        except ValidationError as exc:
            # One bad row (written by an older version) must not stop every goal: plans
            # that use the tool are refused by validation, as for any unknown tool.
            log.warning("tool %s in the catalog is invalid and left out: %s", name, exc)
    return catalog


@lru_cache(maxsize=1024)
def _spec(spec_json: str) -> ToolSpec:
    # Checking a spec's schemas against their meta-schema costs milliseconds, and planners and
    # gates read the catalog for every message: a spec already checked is not checked again.
    # Keyed by the spec's whole text (its key order kept: prompts show it), so a republished
    # spec is checked afresh.
    spec: Any = json.loads(spec_json)
    return ToolSpec.model_validate(spec)
