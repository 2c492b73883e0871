"""The contract between plangate's stages: messages, the plan, validation, hashing, decoding.

Pure: no I/O, and nothing of the rest of the project is imported here.
"""

from schemas.decoding import decode_message, encode_message, strict_json_loads
from schemas.errors import MessageRejected, PlangateError, PlanInvalid, PlanProblem
from schemas.hashing import canonical_json, plan_hash
from schemas.messages import (
    MESSAGE_MODELS,
    Approval,
    DeadLetter,
    Decision,
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
from schemas.tool_spec import Catalog, Effect, ToolSpec
from schemas.validation import validate_plan

__all__ = [
    "MESSAGE_MODELS",
    "Approval",
    "Catalog",
    "DeadLetter",
    "Decision",
    "Effect",
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
