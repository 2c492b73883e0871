"""Tools that reach real services, each passing the step's idempotency key downstream.

Load them by module, e.g. `PLANGATE_TOOLS=plangate.demo.tools,plangate.integrations.webhook`:
`webhook` (`webhook_post`), `pagerduty` (`pagerduty_trigger`), `jira` (`jira_issue_count`).
They send through `plangate.http_client`, the one HTTP client.
"""
