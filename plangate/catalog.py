"""The tool catalog in the store: executors publish the specs they offer; planners read them."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from plangate.store import Store, ToolCatalogRow
from schemas import Catalog, ToolSpec


def publish_catalog(store: Store, specs: Iterable[ToolSpec]) -> None:
    """Insert or replace the specs of the tools this executor offers."""
    with store.session() as session:
        for spec in specs:
            row = session.get(ToolCatalogRow, spec.name)
            body = spec.model_dump(mode="json")
            if row is None:
                session.add(ToolCatalogRow(name=spec.name, spec=body))
            elif row.spec != body:
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
    rows = session.execute(select(ToolCatalogRow)).scalars()
    return {row.name: ToolSpec.model_validate(row.spec) for row in rows}
