"""`jira_issue_count`: how many Jira issues match a JQL query, from Jira's search API.

Configured by `JIRA_URL` (the site, e.g. https://jira.example.com), `JIRA_JQL` (the default
query, else open issues) and credentials: `JIRA_USER` with `JIRA_API_TOKEN` (basic auth, as
Jira Cloud wants) or `JIRA_TOKEN` (a bearer personal access token, as Jira Data Center wants).
The search asks for no issues (`maxResults=0`) and reads only `total`.
"""

from __future__ import annotations

import base64
from typing import Annotated
from urllib.parse import urlencode

from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from plangate.errors import ToolError
from plangate.http_client import send
from plangate.redaction import register_secrets
from plangate.tools import tool

OPEN_ISSUES = "statusCategory != Done"


class JiraSettings(BaseSettings):
    """Which Jira to ask, what to count by default, and how to sign in."""

    model_config = SettingsConfigDict(env_prefix="JIRA_", extra="ignore")

    url: str = ""
    jql: str = ""
    user: str = ""
    api_token: SecretStr = SecretStr("")
    token: SecretStr = SecretStr("")


class _SearchPage(BaseModel):
    total: int = Field(ge=0)


def is_configured() -> bool:
    """Return whether `JIRA_URL` is set, so counts come from Jira."""
    return bool(JiraSettings().url.strip())


def count_issues(jql: str | None = None) -> int:
    """Return how many issues match `jql` (default: `JIRA_JQL`, else open issues)."""
    settings = JiraSettings()
    site = settings.url.strip().rstrip("/")
    if not site:
        raise ToolError(
            "JIRA_URL is not set; set it to your Jira site, e.g. https://jira.example.com"
        )
    query = jql or settings.jql.strip() or OPEN_ISSUES
    headers = _auth(settings)
    answer = send(
        "GET",
        f"{site}/rest/api/2/search?{urlencode({'jql': query, 'maxResults': 0})}",
        service="Jira",
        headers=headers,
        hint="check JIRA_URL, the JQL, and JIRA_USER with JIRA_API_TOKEN or JIRA_TOKEN",
    )
    try:
        return _SearchPage.model_validate(answer.json("Jira")).total
    except ValidationError:
        raise ToolError(
            "Jira's search answer has no total; check that JIRA_URL is the Jira site itself"
        ) from None


@tool(effect="read", idempotent=True, tags=("tickets", "jira"))
def jira_issue_count(jql: Annotated[str, Field(max_length=2000)] = "") -> int:
    """Return how many Jira issues match a JQL query (empty: the configured one, or all open)."""
    return count_issues(jql or None)


def _auth(settings: JiraSettings) -> dict[str, str]:
    """Return the Authorization header; its secrets are registered for redaction first."""
    user, api_token = settings.user.strip(), settings.api_token.get_secret_value().strip()
    token = settings.token.get_secret_value().strip()
    basic = base64.b64encode(f"{user}:{api_token}".encode()).decode() if api_token else ""
    register_secrets([token, api_token, basic])
    if token and (user or api_token):
        raise ToolError("set either JIRA_TOKEN, or JIRA_USER with JIRA_API_TOKEN, not both")
    if token:
        return {"Authorization": f"Bearer {token}"}
    if bool(user) != bool(api_token):
        raise ToolError("JIRA_USER and JIRA_API_TOKEN go together: set both, or JIRA_TOKEN")
    if not user:
        return {}  # an anonymous search, as a public Jira allows
    return {"Authorization": f"Basic {basic}"}
