"""One tool call of a step: its span, its deadline, and how its answer becomes the step's outcome.

A call runs in a daemon thread of its own (`tool_threads`), so that a deadline can be kept
without stopping it: a read past its deadline fails; a write, which may yet take effect, is
`unknown`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry.trace import Span, StatusCode

from executor_worker.engine import OUTPUT_NOT_KEPT, StepOutcome
from executor_worker.output_bounds import kept_error, output_problem
from executor_worker.tool_threads import ToolThreads
from plangate import metrics, telemetry
from plangate.errors import OutcomeUnknown, OutputUnusable, ToolError
from plangate.redaction import redact_json
from plangate.tools import Tool, ToolContext
from schemas import Step

_TOOL_THREADS = ToolThreads()


@contextmanager
def tool_span(step: Step) -> Iterator[Span]:
    """Open the `execute_tool {name}` span of one tool call."""
    with telemetry.tracer().start_as_current_span(f"execute_tool {step.tool}") as span:
        span.set_attribute("gen_ai.operation.name", "execute_tool")
        span.set_attribute("gen_ai.tool.name", step.tool)
        span.set_attribute("plangate.step_id", step.id)
        yield span


def recorded_earlier(outcome: StepOutcome, span: Span) -> StepOutcome:
    """Say on the step's span that no call was made: its result was recorded before.

    As when a run resumes one another executor left: the step's own call is in that run's
    part of the trace.
    """
    span.set_attribute("plangate.step.status", outcome.status)
    span.set_attribute("plangate.step.recorded_earlier", True)
    return outcome


def invoke(
    tool: Tool[..., Any], step: Step, args: dict[str, Any], context: ToolContext, span: Span
) -> StepOutcome:
    """Call `tool` for `step` (see `_call_tool`); its span tells the step's status.

    A step that failed, or whose outcome is unknown, is an error in the trace, so that a
    viewer's search for errors finds it.
    """
    outcome = _call_tool(tool, step, args, context, span)
    span.set_attribute("plangate.step.status", outcome.status)
    if outcome.status in ("failed", "unknown"):
        span.set_status(
            StatusCode.ERROR, telemetry.content_or(outcome.error or outcome.status, outcome.status)
        )
    return outcome


def _call_tool(
    tool: Tool[..., Any], step: Step, args: dict[str, Any], context: ToolContext, span: Span
) -> StepOutcome:
    """Call `tool` for `step` within its deadline; a ToolError is the step's failure, not the run's.

    A call still running at its deadline is left behind: a read fails; a write, which may yet
    take effect, is `unknown`, so it is never run again without a person.
    """
    started = time.perf_counter()
    if telemetry.record_content():
        span.set_attribute("gen_ai.tool.call.arguments", json.dumps(args, default=str))
    try:
        output = _call_within_deadline(tool, args, context)
    except Exception as exc:  # a ToolError; anything else is a fault of the tool's wrapping
        span.set_attribute("error.type", type(exc.__cause__ or exc).__name__)  # not ToolError
        if not isinstance(exc, ToolError):
            # Not left to stop the run (the plan dead-lettered, a write's claim held for
            # ever): the call was made, so a write may have taken effect.
            said = f"tool {tool.name}'s answer could not be read ({type(exc).__name__})"
            exc = OutcomeUnknown(said) if tool.spec.effect == "write" else ToolError(said)
        if isinstance(exc, OutputUnusable) and tool.spec.effect == "write":
            note = f"{kept_error(str(exc))}; the write took effect, {OUTPUT_NOT_KEPT}"
            return StepOutcome(
                step.id, step.tool, "succeeded", error=note, duration_ms=_ms_since(started)
            )
        status = "unknown" if isinstance(exc, OutcomeUnknown) else "failed"
        # A tool's own error text may quote what a server sent back: redacted before it is
        # stored, announced or shown, and bounded.
        error = kept_error(str(exc))
        return StepOutcome(step.id, step.tool, status, error=error, duration_ms=_ms_since(started))
    unkept = output_problem(step.tool, output)
    if unkept is not None:
        span.set_attribute("error.type", "OutputNotStorable")
        if tool.spec.effect == "read":
            return StepOutcome(
                step.id, step.tool, "failed", error=unkept, duration_ms=_ms_since(started)
            )
        # The write took effect: it succeeded, without the output plangate cannot keep.
        unkept = f"{unkept}; the write took effect, {OUTPUT_NOT_KEPT}"
        return StepOutcome(
            step.id, step.tool, "succeeded", error=unkept, duration_ms=_ms_since(started)
        )
    # A server may quote a secret it was sent (a token, a header) back in what it returns.
    output = redact_json(output)
    if telemetry.record_content():
        span.set_attribute("gen_ai.tool.call.result", json.dumps(output, default=str))
    return StepOutcome(step.id, step.tool, "succeeded", output, duration_ms=_ms_since(started))


def _call_within_deadline(tool: Tool[..., Any], args: dict[str, Any], context: ToolContext) -> Any:
    """Return what the tool returned, raising what it raised, unless it overruns its deadline.

    Python cannot stop a thread, so the call runs in a daemon thread of its own
    (`tool_threads`): a call stuck past its deadline costs that one thread, never a step slot,
    and never blocks shutdown.
    """
    result: list[Any] = []
    failure: list[BaseException] = []
    finished = threading.Event()

    def call() -> None:
        try:
            result.append(tool.invoke(args, context))
        except BaseException as exc:  # handed to the waiting thread, which raises it
            failure.append(exc)
        finally:
            finished.set()

    started = time.perf_counter()
    _TOOL_THREADS.start(call, f"plangate-tool-{tool.name}")
    ended = finished.wait(context.timeout)
    outcome: metrics.ToolOutcome = (
        "timed_out" if not ended else "failed" if failure else "succeeded"
    )
    if not context.preview:  # a reviewer's dry run is no call of the plan's
        metrics.tool_called(tool.name, outcome, time.perf_counter() - started)
    if not ended:
        overran = f"tool {tool.name} did not finish within its {context.timeout:g} s deadline"
        if tool.spec.effect == "write":
            raise OutcomeUnknown(f"{overran}; it may still take effect")
        raise ToolError(overran)
    if failure:
        raise failure[0]
    return result[0]


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
