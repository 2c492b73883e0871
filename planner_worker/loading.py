"""Choosing the planner from settings: the one place that knows every planner there is."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal, cast
from urllib.parse import urlsplit

from plangate.config import Settings
from plangate.errors import ConfigError
from planner_worker.planner import Planner, RevisingPlanner

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


# A planner given in code may call a service (a rules engine's server) for as long as the LLM
# planner's defaults allow: it plans under a lease that long, so a second delivery waits for it.
GIVEN_PLANNER_LEASE = timedelta(minutes=10)


def given_planner(planner: object) -> Planner:
    """Return a planner given in code (`Pipeline(planner=...)`); ConfigError if it cannot plan.

    Refused at once, not at the first goal's `draft`: a class given for its instance, or an
    object with no `draft` method.
    """
    what = type(planner).__name__
    if isinstance(planner, type):
        what = f"the class {planner.__name__}, not an instance of it"
    elif callable(getattr(planner, "draft", None)):
        return cast(Planner, planner)
    raise ConfigError(
        f"planner= takes an object with a draft(goal, catalog) method "
        f"(plangate.planning.Planner); it was given {what}"
    )


def given_planner_line(planner: Planner) -> str:
    """Return the start line naming a planner given in code, by its class."""
    kind = type(planner)
    revises = isinstance(planner, RevisingPlanner)
    return (
        f"planning with the planner given in code ({kind.__module__}.{kind.__qualname__}), "
        f"which {'revises plans after feedback' if revises else 'takes no feedback'}"
    )


# The openai SDK's own default, where OPENAI_BASE_URL is not set.
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"


def planner_line(settings: Settings) -> str:
    """Return the start line naming the planner: the playbook file, or the model and server."""
    if planner_kind(settings) == "openai":
        return (
            f"planning with the LLM planner: model {settings.model!r} at "
            f"{_shown_url(settings.openai_base_url or OPENAI_DEFAULT_URL)}"
        )
    playbook = settings.playbook_file or "the packaged example playbooks"
    return f"planning with the playbook planner ({playbook})"


def planner_warning(settings: Settings) -> str | None:
    """Say what to set when the LLM planner was clearly meant but OPENAI_API_KEY is empty.

    Compose passes `OPENAI_API_KEY: ${OPENAI_API_KEY:-}`: left empty, `auto` quietly chose
    the playbook planner instead.
    """
    if settings.openai_api_key is not None:
        return _credentials_in_url(settings)
    if planner_kind(settings) == "openai":
        url = _shown_url(settings.openai_base_url or OPENAI_DEFAULT_URL)
        return (
            f"OPENAI_API_KEY is empty: requests to the model server at {url} carry no API "
            "key; set OPENAI_API_KEY if it needs one (a local llama.cpp, vLLM or Ollama may not)"
        )
    if settings.planner == "auto" and "model" in settings.model_fields_set:
        return (
            f"PLANGATE_MODEL is {settings.model!r} but OPENAI_API_KEY is empty, so the playbook "
            "planner plans, not the model: set OPENAI_API_KEY (or OPENAI_BASE_URL for an "
            "OpenAI-compatible server) to plan with it"
        )
    return None


def _credentials_in_url(settings: Settings) -> str | None:
    """Say that a user and password in OPENAI_BASE_URL take the API key's place, if they do.

    The HTTP client sends them as Basic auth, in the one Authorization header the key's Bearer
    token needs: the server saw no key, and nothing said why.
    """
    parts = urlsplit(settings.openai_base_url or "")
    if planner_kind(settings) != "openai" or not (parts.username or parts.password):
        return None
    return (
        f"OPENAI_BASE_URL ({_shown_url(settings.openai_base_url or '')}) carries a user and "
        "password: they are sent as HTTP Basic auth in place of OPENAI_API_KEY, so the model "
        "server sees no API key; take them out of the URL (a proxy needing its own login "
        "takes it another way, e.g. by address)"
    )


def _shown_url(url: str) -> str:
    """Return `url` without what may carry a credential (user and password, query)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path}"


def planning_lease(settings: Settings) -> timedelta | None:
    """Return how long one planning of a goal may take, so a second delivery waits for it.

    An LLM planner may spend every attempt's timeout, with the SDK's retries. The playbook
    planner needs no lease (None): it plans without I/O, inside the goal's transaction.
    """
    if planner_kind(settings) != "openai":
        return None
    calls = settings.planner_attempts * (settings.planner_max_retries + 1)
    return timedelta(seconds=settings.planner_timeout_seconds * calls + 30)
