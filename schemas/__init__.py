"""The contract between stages: messages, routing, the plan, validation, hashing, decoding.

Pure: no I/O, and nothing of the rest of the project is imported here. Names load on first
use (PEP 562): a command that needs only the errors does not pay for validation and CEL.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from schemas.decoding import decode_message, encode_message, strict_json_loads
    from schemas.errors import MessageRejected, PlangateError, PlanInvalid, PlanProblem
    from schemas.hashing import canonical_json, plan_hash
    from schemas.messages import (
        MESSAGE_MODELS,
        Approval,
        DeadLetter,
        Decision,
        ExecutionCancelled,
        ExecutionCompleted,
        ExecutionFailed,
        ExecutionPaused,
        GoalSubmitted,
        Message,
        PlanApproved,
        PlanDecided,
        PlanFailed,
        PlanPreviewed,
        PlanProposed,
        PreviewRequested,
        ReviewDecided,
        Signature,
        SignedEnvelope,
        StepFinished,
        StepPreview,
        new_id,
        utcnow,
    )
    from schemas.plan import Plan, Step
    from schemas.routing import ROUTES, Route, RoutesIncomplete
    from schemas.tool_spec import Catalog, Effect, ToolSpec
    from schemas.validation import validate_plan

# Where each exported name lives.
_HOMES = {
    "Approval": "schemas.messages",
    "Catalog": "schemas.tool_spec",
    "DeadLetter": "schemas.messages",
    "Decision": "schemas.messages",
    "Effect": "schemas.tool_spec",
    "ExecutionCompleted": "schemas.messages",
    "ExecutionCancelled": "schemas.messages",
    "ExecutionFailed": "schemas.messages",
    "ExecutionPaused": "schemas.messages",
    "GoalSubmitted": "schemas.messages",
    "MESSAGE_MODELS": "schemas.messages",
    "Message": "schemas.messages",
    "MessageRejected": "schemas.errors",
    "Plan": "schemas.plan",
    "PlanApproved": "schemas.messages",
    "PlanDecided": "schemas.messages",
    "PlanFailed": "schemas.messages",
    "PlanInvalid": "schemas.errors",
    "PlanPreviewed": "schemas.messages",
    "PlanProblem": "schemas.errors",
    "PlanProposed": "schemas.messages",
    "PlangateError": "schemas.errors",
    "PreviewRequested": "schemas.messages",
    "ROUTES": "schemas.routing",
    "ReviewDecided": "schemas.messages",
    "Route": "schemas.routing",
    "RoutesIncomplete": "schemas.routing",
    "Signature": "schemas.messages",
    "SignedEnvelope": "schemas.messages",
    "Step": "schemas.plan",
    "StepFinished": "schemas.messages",
    "StepPreview": "schemas.messages",
    "ToolSpec": "schemas.tool_spec",
    "canonical_json": "schemas.hashing",
    "decode_message": "schemas.decoding",
    "encode_message": "schemas.decoding",
    "new_id": "schemas.messages",
    "plan_hash": "schemas.hashing",
    "strict_json_loads": "schemas.decoding",
    "utcnow": "schemas.messages",
    "validate_plan": "schemas.validation",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'schemas' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # found once; later lookups do not come here
    return value


__all__ = [
    "MESSAGE_MODELS",
    "ROUTES",
    "Approval",
    "Catalog",
    "DeadLetter",
    "Decision",
    "Effect",
    "ExecutionCancelled",
    "ExecutionCompleted",
    "ExecutionFailed",
    "ExecutionPaused",
    "GoalSubmitted",
    "Message",
    "MessageRejected",
    "Plan",
    "PlanApproved",
    "PlanDecided",
    "PlanFailed",
    "PlanInvalid",
    "PlanPreviewed",
    "PlanProblem",
    "PlanProposed",
    "PlangateError",
    "PreviewRequested",
    "ReviewDecided",
    "Route",
    "RoutesIncomplete",
    "Signature",
    "SignedEnvelope",
    "Step",
    "StepFinished",
    "StepPreview",
    "ToolSpec",
    "canonical_json",
    "decode_message",
    "encode_message",
    "new_id",
    "plan_hash",
    "strict_json_loads",
    "utcnow",
    "validate_plan",
]
