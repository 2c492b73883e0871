"""Each stage's progress through its queue, as its workers report it on every sweep."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update

from plangate.store.claims import insert_if_absent
from plangate.store.engine import Store
from plangate.store.models import StageProgressRow


def record_progress(store: Store, stage: str, taken_up_to: datetime) -> None:
    """Move the stage's mark forward to `taken_up_to` (never back: other workers report too)."""
    with store.session() as session:
        row = {"stage": stage, "taken_up_to": taken_up_to}
        if insert_if_absent(session, StageProgressRow, row):
            return
        session.execute(
            update(StageProgressRow)
            .where(StageProgressRow.stage == stage, StageProgressRow.taken_up_to < taken_up_to)
            .values(taken_up_to=taken_up_to)
            .execution_options(synchronize_session=False)
        )


def stage_progress(store: Store) -> dict[str, datetime]:
    """Return each stage's mark: the newest message any of its workers has taken."""
    with store.reading() as session:
        rows = session.execute(select(StageProgressRow.stage, StageProgressRow.taken_up_to))
        return {stage: at for stage, at in rows}
