"""`/api/v1/goals`: submit a goal (plain JSON or a CloudEvent) and read where it stands."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from opentelemetry import context as otel_context
from opentelemetry import trace
from sqlalchemy.exc import SQLAlchemyError

from plangate import metrics, telemetry
from plangate.client import Client, GoalHandle, GoalStatus
from plangate.errors import PlangateError, StoreUnavailable
from plangate.event_keys import KEY_LIMIT
from plangate.redaction import redact
from plangate.server.api_docs import refusals
from plangate.server.auth import intake_admission, intake_token_given, require_intake_token
from plangate.server.decision_bodies import CancelRequest, ReasonBody
from plangate.server.deps import get_client
from plangate.server.errors import ApiError
from plangate.server.goal_bodies import (
    ErrorBody,
    GoalAccepted,
    GoalList,
    GoalListItem,
    GoalState,
)
from plangate.server.intake import CLOUDEVENT_JSON, EventGoal, GoalRequest, parse_goal
from plangate.server.json_bodies import JSON, documented_body, read_body
from plangate.server.query_params import token_first
from plangate.server.reviewers import Reviewer, require_reviewer
from plangate.store.engine import failure_cause
from plangate.store.goal_list import MAX_PAGE
from schemas import goal_status_schema

# Each route says who may call it: submitting takes the intake token (when one is set);
# listing, cancelling and retrying a reviewer's; a goal's state either. (One token for the
# whole router made the reviewers' routes need both in one `Authorization` header.)
router = APIRouter(prefix="/api/v1/goals", tags=["goals"])
log = logging.getLogger(__name__)


def _intake_or_reviewer(request: Request) -> None:
    """Let the submitting service (its intake token) or a reviewer follow a goal."""
    if intake_token_given(request):
        return
    try:
        require_reviewer(request)  # 401 (a failure counted) unless a reviewer's token
    except ApiError as refused:
        if refused.status != 401:
            raise
        # The service that submitted follows its goal with the intake token: say so too.
        said = f"{refused.message}; or the intake token (PLANGATE_INTAKE_TOKEN) that submitted it"
        raise ApiError(401, said, refused.headers) from None


_SUBMIT_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        JSON: {"schema": GoalRequest.model_json_schema()},
        CLOUDEVENT_JSON: {
            "schema": {
                "type": "object",
                "description": "A CloudEvent 1.0 of type dev.plangate.goal.submitted; "
                "data: {text, metadata}. Binary mode: ce-* headers and JSON data.",
            }
        },
    },
}


def _submit(
    client: Client,
    goal: GoalRequest,
    headers: dict[str, str],
    admit: Callable[[], None] | None = None,
) -> GoalHandle:
    # The goal's trace is the request's (whose span FastAPI made, a child of the caller's
    # `traceparent` if one came): one trace from the caller to the last tool call. Only
    # where no request span is recorded does the caller's header parent it directly.
    recorded = trace.get_current_span().get_span_context().is_valid
    given = headers
    if isinstance(goal, EventGoal) and goal.trace_headers and "traceparent" not in headers:
        # A structured CloudEvent names its trace in its body: the goal joins the sender's.
        given, recorded = goal.trace_headers, False
    token = None if recorded else otel_context.attach(telemetry.extract(given))
    try:
        return client.submit(
            goal.text,
            metadata=goal.metadata,
            idempotency_key=goal.idempotency_key,
            event=goal.event if isinstance(goal, EventGoal) else None,
            admit=admit,
        )
    finally:
        if token is not None:
            otel_context.detach(token)


# Read from the request itself (the body's key and CloudEvents' ce-* headers come with it),
# so FastAPI cannot see them: named here, for clients generated from the document.
_SUBMIT_HEADERS: list[dict[str, Any]] = [
    {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "maxLength": KEY_LIMIT},
        "description": "The goal's idempotency key, instead of the body's `idempotency_key` "
        "(both: they must be the same). The same key twice yields one goal.",
    },
    {
        "name": "traceparent",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "W3C trace context: the goal's trace joins the caller's.",
    },
]
_WHERE = {
    "Location": {
        "description": "The goal's state: GET it to follow the goal.",
        "schema": {"type": "string", "example": "/api/v1/goals/{goal_id}"},
    }
}


@router.post(
    "",
    status_code=201,
    response_model=GoalAccepted,
    responses={
        200: {"model": GoalAccepted, "description": "Already submitted", "headers": _WHERE},
        201: {"description": "Submitted", "headers": _WHERE},
        **refusals(401, 409),
        429: {
            "model": ErrorBody,
            "description": "Too many failed attempts, or more goals than "
            "PLANGATE_INTAKE_GOALS_PER_MINUTE, from this address: see Retry-After",
        },
    },
    openapi_extra={"requestBody": _SUBMIT_BODY, "parameters": _SUBMIT_HEADERS},
    dependencies=token_first(require_intake_token),
)
async def submit_goal(
    request: Request, client: Annotated[Client, Depends(get_client)]
) -> JSONResponse:
    """Submit a goal; the same idempotency key (or CloudEvent source and id) yields one goal."""
    try:
        goal = parse_goal(request.headers, await read_body(request))
        admit = intake_admission(request)
        handle = await run_in_threadpool(_submit, client, goal, dict(request.headers), admit)
    except ApiError as exc:
        metrics.intake("rate_limited" if exc.status == 429 else "refused")
        raise
    except PlangateError:  # answered 4xx by the app's handlers (a conflict, an input refused)
        metrics.intake("refused")
        raise
    metrics.intake("duplicate" if handle.duplicate else "accepted")
    status = await run_in_threadpool(_status_once_stored, client, handle)
    _log_accepted(handle)
    accepted = GoalAccepted(
        goal_id=handle.goal_id,
        status=status,
        trace_id=handle.trace_id,
        duplicate=handle.duplicate,
        queued=handle.queued,
    )
    return JSONResponse(
        accepted.model_dump(),
        status_code=200 if handle.duplicate else 201,
        headers={"Location": f"{router.prefix}/{handle.goal_id}"},
    )


def _status_once_stored(client: Client, handle: GoalHandle) -> str:
    """Return where a goal just submitted stands; `submitted` if the store cannot say now.

    The goal is stored: a 503 here (the database out of connections the moment after the
    insert) told its client to send it again, and one with no idempotency key made it twice.
    A duplicate's status is not known without the read: that is still the store's error (a
    retry finds the same goal).
    """
    try:
        return client.status(handle.goal_id).status
    except (SQLAlchemyError, StoreUnavailable) as exc:
        if handle.duplicate:
            raise
        log.warning(
            "goal %s stored; its status could not be read after (%s): answered as submitted",
            handle.goal_id,
            failure_cause(exc),
        )
        return "submitted"


def _log_accepted(handle: GoalHandle) -> None:
    """Log the goal a submission was answered with, in the goal's trace.

    The access line names the request's trace alone; a duplicate's goal is in its own, older
    trace, and a CloudEvent's in the one its body named.
    """
    fields = {"goal_id": handle.goal_id, "duplicate": handle.duplicate}
    if handle.trace_id is not None:
        fields["trace_id"] = handle.trace_id
    said = " (a duplicate: the goal its key already named)" if handle.duplicate else ""
    log.info("goal %s accepted%s", handle.goal_id, said, extra=fields)


def _each_filter_once(request: Request) -> None:
    """Refuse a filter given twice (`?state=held&state=failed`): the last one was used."""
    for name in ("state", "since", "until", "search", "limit", "cursor"):
        if len(request.query_params.getlist(name)) > 1:
            raise ApiError(422, f"give {name} once: the list is filtered by one {name}")


@router.get(
    "",
    response_model=GoalList,
    responses=refusals(401, 422),
    dependencies=token_first(require_reviewer),
)
def goal_list(
    client: Annotated[Client, Depends(get_client)],
    _once: Annotated[None, Depends(_each_filter_once)],
    state: Annotated[
        goal_status_schema.GoalStatus | None, Query(description="Goals in this state only.")
    ] = None,
    since: Annotated[str | None, Query(max_length=40, description="2h, 7d or ISO time")] = None,
    until: Annotated[
        str | None, Query(max_length=40, description="submitted before: 2h, 7d or ISO time")
    ] = None,
    search: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> GoalList:
    """List goals newest first, filtered by state, age and text (reviewers only)."""
    page = client.list_goals(
        state=state, since=since, search=search, limit=limit, cursor=cursor, until=until
    )
    items = [GoalListItem(**asdict(goal)) for goal in page.goals]
    return GoalList(goals=items, next_cursor=page.next_cursor)


@router.get(
    "/{goal_id}",
    response_model=GoalState,
    responses=refusals(401, 404, 422),
    dependencies=token_first(_intake_or_reviewer),
)
def goal_status(goal_id: str, client: Annotated[Client, Depends(get_client)]) -> GoalState:
    """Return where a goal stands, by its whole id (404 if there is no such goal yet).

    Programs poll here with the id they were given or chose: a short start of one is no id
    here (the page `/goals/{goal_id}`, for people, takes one).
    """
    return _shown(client.status(goal_id, exact=True))


def _shown(current: GoalStatus) -> GoalState:
    state = GoalState(**asdict(current), terminal=current.terminal)
    # Reasons are stored redacted; this process may know secrets the one that wrote it did not.
    return state.model_copy(update={"reason": redact(state.reason) if state.reason else None})


@router.post(
    "/{goal_id}/cancel",
    response_model=GoalState,
    responses=refusals(401, 403, 404, 409),
    dependencies=token_first(require_reviewer),
    **documented_body(CancelRequest),
)
def cancel_goal(
    goal_id: str,
    body: ReasonBody,
    client: Annotated[Client, Depends(get_client)],
    reviewer: Annotated[Reviewer, Depends(require_reviewer)],
) -> GoalState:
    """Cancel a goal: no further step of it starts, and no feedback plans it again.

    A goal that has not ended, or a rejected or failed one; 409 if it is completed, denied,
    expired or unplannable.
    """
    client.cancel(goal_id, reviewer.name, body.reason, reviewer.roles)
    return _shown(client.status(goal_id))  # a reviewer's id may be a short one


@router.post(
    "/{goal_id}/retry",
    response_model=GoalState,
    responses=refusals(401, 403, 404, 409),
    dependencies=token_first(require_reviewer),
    **documented_body(CancelRequest),
)
def retry_goal(
    goal_id: str,
    body: ReasonBody,
    client: Annotated[Client, Depends(get_client)],
    reviewer: Annotated[Reviewer, Depends(require_reviewer)],
) -> GoalState:
    """Send a failed, expired or unplannable goal back to the planner.

    409 in any other state; 403 if its plan was held for a role the reviewer lacks.
    """
    client.retry(goal_id, reviewer.name, body.reason, reviewer.roles)
    return _shown(client.status(goal_id))  # a reviewer's id may be a short one
