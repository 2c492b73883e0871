"""Choosing the planner from settings: the one place that knows every planner there is."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from plangate.config import Settings
from planner_worker.planner import Planner

PlannerKind = Literal["openai", "playbook"]


def planner_kind(settings: Settings) -> PlannerKind:
    """Return which planner runs: `auto` means openai when an OpenAI server is configured."""
    if settings.planner != "auto":
        return settings.planner
    configured = settings.openai_api_key is not None or settings.openai_base_url is not None
    return "openai" if configured else "playbook"


def load_planner(settings: Settings) -> Planner:
    """Return the planner `PLANGATE_PLANNER` selects (ConfigError if it cannot be set up)."""
    if planner_kind(settings) == "openai":
        # Imported here: the playbook planner (and `plangate run` without an LLM) never
        # pays for importing the openai SDK.
        from planner_worker.openai_planner import load_openai_planner

        return load_openai_planner(settings)
    from planner_worker.playbook import load_playbook_planner

    return load_playbook_planner(settings)


def planning_lease(settings: Settings) -> timedelta | None:
    """Return how long one planning of a goal may take, so a second delivery waits for it.

    An LLM planner may spend every attempt's timeout, with the SDK's retries. The playbook
    planner needs no lease (None): it plans without I/O, inside the goal's transaction.
    """
    if planner_kind(settings) != "openai":
        return None
    calls = settings.planner_attempts * (settings.planner_max_retries + 1)
    return timedelta(seconds=settings.planner_timeout_seconds * calls + 30)
