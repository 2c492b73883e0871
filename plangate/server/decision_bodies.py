"""What a person sends with a decision: the review API's and the goal moves' request bodies.

Each is read by `json_body`, as strictly as goal intake: a field none of them names is refused
(422), not ignored, so that a misspelt `coment` is not lost without a word.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic_core import PydanticCustomError

from plangate.server.json_bodies import json_body
from schemas.messages import MAX_COMMENT_CHARS
from schemas.plan import Step


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CancelRequest(_Strict):
    """Why the goal is cancelled or retried (recorded with who did it)."""

    reason: str = Field(default="", max_length=MAX_COMMENT_CHARS)


class Settle(_Strict):
    """What you found of the unknown call you checked: whether it happened (and its output).

    `unknown_since` names that call: a body without it is refused (422), as a settle naming no
    call settled whichever call was unknown when it came (a retry, a second click, a stale tab).
    """

    happened: bool
    output: Any = Field(default=None, description="With happened: the output later steps use.")
    comment: str = Field(default="", max_length=MAX_COMMENT_CHARS)
    unknown_since: AwareDatetime = Field(
        description="Required: the `since` of the unknown call you checked, as "
        "GET /api/v1/reviews/unsettled lists it. Refused (409) if the step was settled and "
        "called again meanwhile, so a later call nobody checked is never settled by it.",
    )

    @model_validator(mode="before")
    @classmethod
    def _names_the_call(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("unknown_since") is None:
            raise PydanticCustomError("call_not_named", NAME_THE_CALL)
        return data


NAME_THE_CALL = (
    "unknown_since is missing: send the `since` of the unknown call you checked, as "
    "GET /api/v1/reviews/unsettled lists it (a settle names the call it settles; a "
    "`plangate review settle` without `--since` is of a release before this one: upgrade it)"
)


class Approve(_Strict):
    """Approve the revision whose hash you saw."""

    plan_hash: str = Field(min_length=1)
    comment: str = Field(default="", max_length=MAX_COMMENT_CHARS)


class RejectBody(_Strict):
    """Reject the revision whose hash you saw, saying why."""

    plan_hash: str = Field(min_length=1)
    comment: str = Field(min_length=1, max_length=MAX_COMMENT_CHARS)


def _as_sent(steps: Any) -> Any:
    return steps


class Edit(_Strict):
    """Replace the steps (and summary) of the revision whose hash you saw: revision n+1."""

    plan_hash: str = Field(min_length=1)
    # Checked as a plan's steps when the revision is made (`Review.edit`: every problem at
    # once); documented as them, so a client knows what to send.
    steps: Annotated[
        list[dict[str, Any]], BeforeValidator(_as_sent, json_schema_input_type=list[Step])
    ] = Field(min_length=1, json_schema_extra={"minItems": 1})
    summary: str | None = None
    comment: str = Field(default="", max_length=MAX_COMMENT_CHARS, description="Why you edit it.")


# A route's body, read by `json_body` (first, as FastAPI read it: a body over the bound is 413
# whoever sends it, see `body_limit`).
ReasonBody = Annotated[CancelRequest, Depends(json_body(CancelRequest))]
SettleBody = Annotated[Settle, Depends(json_body(Settle))]
ApproveBody = Annotated[Approve, Depends(json_body(Approve))]
RejectionBody = Annotated[RejectBody, Depends(json_body(RejectBody))]
EditBody = Annotated[Edit, Depends(json_body(Edit))]
