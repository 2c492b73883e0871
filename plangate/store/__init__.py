"""The store: SQLAlchemy 2 over SQLite (default) or PostgreSQL; the source of truth."""

from plangate.store.engine import Store, open_store
from plangate.store.models import (
    TERMINAL_STATUSES,
    ApprovalRow,
    ApprovalUseRow,
    AuditRow,
    DecisionRow,
    GoalRow,
    HoldRow,
    OutboxRow,
    PlanPreviewRow,
    PlanRow,
    ReviewerApprovalRow,
    ReviewSessionRow,
    StepRunRow,
    ToolCatalogRow,
)

__all__ = [
    "TERMINAL_STATUSES",
    "ApprovalRow",
    "ApprovalUseRow",
    "AuditRow",
    "DecisionRow",
    "GoalRow",
    "HoldRow",
    "OutboxRow",
    "PlanPreviewRow",
    "PlanRow",
    "ReviewSessionRow",
    "ReviewerApprovalRow",
    "StepRunRow",
    "Store",
    "ToolCatalogRow",
    "open_store",
]
