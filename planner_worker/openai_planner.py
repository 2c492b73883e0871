"""The LLM planner: structured outputs from an OpenAI-compatible server, checked and repaired.

Each attempt asks for a plan in the strict schema of the live catalog, then reads and validates
it with the one plan validator. An invalid plan is sent back with its problems, up to
`attempts` times; then planning fails naming every problem. What is sent back is bounded (the
answer cut, its problems counted): an answer larger than any plan is not sent back at all. A
refusal or a cut-off answer ends planning at once (asking again would get the same). The
goal's token budget spans attempts and revisions: no new request starts once it is spent, and
a plan whose answer took the goal past it is not proposed.
"""

from __future__ import annotations

import json
from typing import Any, cast

import openai
from opentelemetry import trace

from plangate.config import Settings
from plangate.errors import ConfigError, PlanningFailed
from plangate.redaction import register_secret
from planner_worker.chat import PROVIDER, ChatAnswer, ChatModel
from planner_worker.llm_schema import AnswerInvalid, read_answer, response_format
from planner_worker.model_http import ModelHttpClient
from planner_worker.planner import Draft, Feedback
from planner_worker.prompt import (
    Message,
    answer_echo,
    bounded_problems,
    feedback_message,
    goal_message,
    repair_message,
    system_prompt,
)
from schemas import Catalog, GoalSubmitted, Plan, PlanInvalid, Step, validate_plan
from schemas.messages import TokenUsage
from schemas.validation import MAX_PLAN_BYTES

_PLANNER_NAME_CHARS = 200  # the store's column


MAX_REFUSAL_CHARS = 300


class OpenAIPlanner:
    """Plans with an LLM; thread-safe (one shared SDK client), so many goals plan at once."""

    def __init__(self, chat: ChatModel, *, attempts: int, token_budget: int) -> None:
        self._chat = chat
        self._attempts = attempts
        self._budget = token_budget

    def draft(self, goal: GoalSubmitted, catalog: Catalog) -> Draft:
        """Return a valid draft for `goal`, or raise PlanningFailed saying why there is none."""
        return self._plan(goal, catalog, [goal_message(goal.text)], spent=0)

    def revise(self, goal: GoalSubmitted, catalog: Catalog, feedback: Feedback) -> Draft:
        """Return a new draft answering `feedback` on the previous revision."""
        conversation = [
            goal_message(goal.text),
            {"role": "assistant", "content": answer_json(feedback.previous)},
            feedback_message(feedback.previous.revision, feedback.comment, feedback.source),
        ]
        return self._plan(goal, catalog, conversation, spent=feedback.tokens_spent)

    def _plan(
        self, goal: GoalSubmitted, catalog: Catalog, conversation: list[Message], spent: int
    ) -> Draft:
        messages = [{"role": "system", "content": system_prompt(catalog)}, *conversation]
        schema = response_format(catalog)
        usage = TokenUsage()
        model = self._chat.model
        problems: list[str] = []
        try:
            for attempt in range(1, self._attempts + 1):
                self._check_budget(spent + usage.total, problems)
                answer = self._chat.ask(messages, schema)
                usage, model = usage + answer.usage, answer.model
                self._check_finished(answer)
                try:
                    summary, steps = _read(answer.content, goal, catalog)
                except AnswerInvalid as invalid:
                    found = invalid.problems
                else:
                    self._check_overspent(spent + usage.total)
                    name = f"{PROVIDER}:{model}"[:_PLANNER_NAME_CHARS]
                    return Draft(summary, steps, name, model=model, usage=usage)
                problems += [f"attempt {attempt}: {p}" for p in bounded_problems(found)]
                messages += [answer_echo(answer.content), repair_message(found)]
        finally:
            _record_totals(usage, model)
        raise PlanningFailed(
            [f"the model gave no valid plan in {self._attempts} attempts", *problems]
        )

    def _check_budget(self, used: int, problems: list[str]) -> None:
        if used >= self._budget:
            raise PlanningFailed(
                [
                    f"the goal's token budget is spent ({used} of {self._budget} tokens used); "
                    "raise PLANGATE_GOAL_TOKEN_BUDGET or make the goal simpler",
                    *problems,
                ]
            )

    def _check_overspent(self, used: int) -> None:
        """Fail a plan whose answer took the goal past its budget: it was not to be spent."""
        if used > self._budget:
            raise PlanningFailed(
                [
                    f"the goal's token budget is exceeded ({used} of {self._budget} tokens "
                    "used, as the model server reported); raise PLANGATE_GOAL_TOKEN_BUDGET or "
                    "make the goal simpler"
                ]
            )

    def _check_finished(self, answer: ChatAnswer) -> None:
        """Fail on answers that asking again would not fix."""
        if answer.refusal:
            refusal = " ".join(answer.refusal.split())  # a person reads it: one short line
            if len(refusal) > MAX_REFUSAL_CHARS:
                refusal = refusal[:MAX_REFUSAL_CHARS] + "…"
            raise PlanningFailed([f"the model refused to plan this goal: {refusal}"])
        if answer.finish_reason == "length":
            raise PlanningFailed(
                [
                    f"the model's answer was cut off at {self._chat.max_tokens} tokens; "
                    "raise PLANGATE_PLANNER_MAX_TOKENS or make the goal simpler"
                ]
            )
        size = _utf8_size(answer.content)
        if size > MAX_PLAN_BYTES:
            raise PlanningFailed([_too_large(size)])
        if answer.finish_reason in ("tool_calls", "function_call"):
            # Asked again, it calls tools again: the server did not take the schema.
            raise PlanningFailed(
                [
                    "the model server answered with tool calls instead of the JSON plan; it "
                    "probably ignores response_format json_schema: use a model and server "
                    "that support structured outputs (PLANGATE_MODEL, OPENAI_BASE_URL)"
                ],
                model_server=True,
            )
        if answer.finish_reason == "content_filter":
            raise PlanningFailed(["the model server's content filter stopped the answer"])


def _read(
    content: str | None, goal: GoalSubmitted, catalog: Catalog
) -> tuple[str, tuple[Step, ...]]:
    """Return the answer's plan (summary, steps); AnswerInvalid with its problems if invalid.

    PlanningFailed if the plan is too large: no repair can make it fit, and each repair sent
    its answer back.
    """
    summary, steps = read_answer(content, catalog)
    try:
        validate_plan(_trial_plan(goal, summary, steps), catalog)
    except PlanInvalid as invalid:
        if any(problem.code == "too_large" for problem in invalid.problems):
            raise PlanningFailed([_too_large(_utf8_size(content))]) from None
        raise AnswerInvalid([str(problem) for problem in invalid.problems]) from None
    return summary, steps


def _utf8_size(content: str | None) -> int:
    return len(content.encode("utf-8", "surrogatepass")) if content else 0


def _too_large(size: int) -> str:
    return (
        f"the model's answer is {size} bytes, more than a plan can take (at most "
        f"{MAX_PLAN_BYTES} bytes of JSON), so it is not sent back for repair; check that the "
        "model server honours max_completion_tokens (PLANGATE_PLANNER_MAX_TOKENS), or make "
        "the goal simpler"
    )


def _trial_plan(goal: GoalSubmitted, summary: str, steps: tuple[Step, ...]) -> Plan:
    """Return a plan to validate; the handler numbers and validates the real one again."""
    return Plan(plan_id="draft", goal_id=goal.goal_id, revision=1, summary=summary, steps=steps)


def answer_json(plan: Plan) -> str:
    """Return a plan in the shape the model answers in (for the history of a revision)."""
    steps = [
        {
            "id": s.id,
            "tool": s.tool,
            "args": dict(s.args),
            "when": s.when,
            "after": list(s.after),
        }
        for s in plan.steps
    ]
    return json.dumps({"summary": plan.summary, "steps": steps}, ensure_ascii=False)


def _record_totals(usage: TokenUsage, model: str) -> None:
    """Put the planning totals on the enclosing `plan` span (each call has its own span)."""
    span = trace.get_current_span()
    span.set_attribute("gen_ai.provider.name", PROVIDER)
    span.set_attribute("gen_ai.response.model", model)
    span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)


def openai_client(settings: Settings) -> openai.OpenAI:
    """Return the SDK client for the configured server (`OPENAI_BASE_URL`, `OPENAI_API_KEY`)."""
    base_url = settings.openai_base_url
    api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    if api_key is None:
        if base_url is None:
            raise ConfigError(
                "PLANGATE_PLANNER=openai needs OPENAI_API_KEY (for OpenAI) or OPENAI_BASE_URL "
                "(for an OpenAI-compatible server such as llama.cpp, vLLM or Ollama)"
            )
        api_key = "unused"  # local servers mostly ignore the key, but the SDK wants one
    else:
        register_secret(api_key)  # what a server echoes of it, in an error or a plan, is redacted
    return openai.OpenAI(
        api_key=api_key,
        base_url=base_url,
        timeout=settings.planner_timeout_seconds,
        max_retries=settings.planner_max_retries,
        # The SDK takes an `httpx.Client` as well as its own fork's (it types only the fork).
        http_client=cast("Any", ModelHttpClient(settings.planner_timeout_seconds)),
    )


def load_openai_planner(settings: Settings) -> OpenAIPlanner:
    """Return the LLM planner configured by settings and the `OPENAI_*` variables."""
    chat = ChatModel(openai_client(settings), settings.model, settings.planner_max_tokens)
    return OpenAIPlanner(
        chat, attempts=settings.planner_attempts, token_budget=settings.goal_token_budget
    )
