"""The seed example's tools, written as a user would write them.

The numbers come from `data.json` beside this module, or from the JSON file named by
`PLANGATE_DEMO_DATA`; `PLANGATE_DEMO_TICKET_COUNT` and `PLANGATE_DEMO_SLA` override one value
each. Notifications are appended to `PLANGATE_DEMO_NOTIFICATIONS`, else to
`notifications.jsonl` in the data folder. All are read as the settings' `demo_*` fields, on
each call (`current_settings()`): tools are called without settings.

Set `JIRA_URL` and the ticket count comes from Jira's search (`plangate.integrations.jira`);
set `PAGERDUTY_ROUTING_KEY` and notify_oncall pages through PagerDuty
(`plangate.integrations.pagerduty`), deduplicated by the same idempotency key. Both are
imported as modules: a tool imported by name would join this module's catalog.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from plangate.current_settings import current_settings
from plangate.errors import ConfigError
from plangate.integrations import jira, pagerduty
from plangate.tools import ToolContext, tool
from schemas.messages import new_id, utcnow

DATA_FILE = Path(__file__).with_name("data.json")


class DemoData(BaseModel):
    """The demo's numbers: how many tickets are open and how many the SLA allows."""

    open_tickets: int
    sla_threshold: int


class Notification(BaseModel):
    """A page sent to on-call; `deduplicated` when an earlier one with the same key was reused."""

    notification_id: str
    deduplicated: bool


def load_data() -> DemoData:
    """Return the demo's numbers from the data file and the settings' overrides."""
    settings = current_settings()
    path = settings.demo_data or DATA_FILE
    try:
        data = DemoData.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise ConfigError(
            f"cannot read the demo data {path}: {exc}; it must be JSON like "
            '{"open_tickets": 128, "sla_threshold": 100} (set PLANGATE_DEMO_DATA)'
        ) from exc
    overrides = {"open_tickets": settings.demo_ticket_count, "sla_threshold": settings.demo_sla}
    return data.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def notifications_path() -> Path:
    """Return the file notify_oncall appends to."""
    settings = current_settings()
    return settings.demo_notifications or settings.data_dir / "notifications.jsonl"


def read_notifications(path: Path | None = None) -> list[dict[str, Any]]:
    """Return every notification recorded so far, oldest first."""
    path = path or notifications_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return _parse_lines(text)


@tool(effect="read", idempotent=True, tags=("tickets",), trusted=True)
def ticket_count() -> int:
    """Return how many support tickets are open now."""
    if jira.is_configured():
        return jira.count_issues()
    return load_data().open_tickets


@tool(effect="read", idempotent=True, trusted=True)
def sla_threshold() -> int:
    """Return the most open tickets the SLA allows."""
    return load_data().sla_threshold


def _preview_notify(args: Mapping[str, Any]) -> str:
    return f"page the on-call engineer: {args.get('message', '')!r}"


@tool(effect="write", idempotent=True, tags=("notify",), preview=_preview_notify)
def notify_oncall(message: str, context: ToolContext) -> Notification:
    """Page the on-call engineer with `message`, at most once per idempotency key."""
    if pagerduty.is_configured():
        # PagerDuty deduplicates on its side, by the dedup_key the key becomes.
        event = pagerduty.trigger(message, context)
        return Notification(notification_id=event.dedup_key, deduplicated=False)
    path = notifications_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as file:
        # One writer at a time, across threads and processes: each open() is its own lock owner.
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        file.seek(0)
        text = file.read()
        for earlier in _parse_lines(text):
            if earlier.get("idempotency_key") == context.idempotency_key:
                return Notification(notification_id=earlier["notification_id"], deduplicated=True)
        record = {
            "notification_id": new_id(),
            "message": message,
            "idempotency_key": context.idempotency_key,
            "goal_id": context.goal_id,
            "at": utcnow().isoformat(),
        }
        # A crash mid-write can leave a torn last line; start on a fresh one so ours parses.
        prefix = "\n" if text and not text.endswith("\n") else ""
        file.write(prefix + json.dumps(record) + "\n")
        file.flush()
        os.fsync(file.fileno())
        if not text:
            # This line may have created the file; its directory entry must survive a crash too.
            _fsync_dir(path.parent)
    return Notification(notification_id=record["notification_id"], deduplicated=False)


def _parse_lines(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn line from a crash mid-write was never acknowledged to anyone
        if isinstance(record, dict):
            records.append(record)
    return records


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
