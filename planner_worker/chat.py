"""One chat completion through the openai SDK, traced as a GenAI `chat {model}` span.

The span follows the OpenTelemetry GenAI conventions: operation, provider, request and
response model, token usage, finish reasons. Prompts and completions are never recorded on it.
Transport and HTTP failures (after the SDK's own retries) become PlanningFailed with a reason
that says what to do, and so do token counts no real server reports (the goal's budget and the
token metric believe them); what the model answered (a refusal, a cut-off) is the caller's to
judge.
What the server said is quoted redacted: a server that echoes the API key back (verbatim,
URL- or JSON-escaped) gets `[redacted]` quoted instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import openai
from openai.types.chat import ChatCompletionMessageParam
from openai.types.shared_params import ResponseFormatJSONSchema
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from plangate import metrics, telemetry
from plangate.errors import PlanningFailed
from plangate.redaction import quoted
from planner_worker.model_errors import call_outcome, failure_reason
from schemas.messages import TokenUsage

PROVIDER = "openai"


@dataclass(frozen=True)
class ChatAnswer:
    """What one call returned: the content (or refusal), why it stopped, and what it cost."""

    content: str | None
    refusal: str | None
    finish_reason: str
    model: str
    usage: TokenUsage


class ChatModel:
    """A model behind an OpenAI-compatible API. Thread-safe: the SDK client is shared."""

    def __init__(self, client: openai.OpenAI, model: str, max_tokens: int) -> None:
        self._client = client
        self.model = model
        self.max_tokens = max_tokens
        for outcome in metrics.LLM_CALL_OUTCOMES:  # at 0 from the start: `increase` sees the first
            metrics.LLM_CALLS.labels(model, outcome)

    def ask(
        self, messages: Sequence[dict[str, str]], response_format: dict[str, Any]
    ) -> ChatAnswer:
        """Send one chat completion request; raise PlanningFailed if no answer came back.

        Each call is counted by outcome, so that a failing model server shows in /metrics
        (every goal then ends plan_failed, each goal.submitted handled all the same).
        """
        try:
            answer = self._ask(messages, response_format)
        except PlanningFailed as failed:
            metrics.LLM_CALLS.labels(self.model, call_outcome(failed.__cause__)).inc()
            raise
        metrics.LLM_CALLS.labels(self.model, "ok").inc()
        return answer

    def _ask(
        self, messages: Sequence[dict[str, str]], response_format: dict[str, Any]
    ) -> ChatAnswer:
        url = self._client.base_url
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.system": PROVIDER,
            "gen_ai.request.model": self.model,
            "gen_ai.request.max_tokens": self.max_tokens,
            "gen_ai.output.type": "json",
            "server.address": url.host,
        }
        if url.port is not None:
            attributes["server.port"] = url.port
        with telemetry.tracer().start_as_current_span(
            f"chat {self.model}", kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            try:
                completion = self._client.chat.completions.create(
                    model=self.model,
                    # Plain dicts are what the SDK sends; its TypedDicts only describe them.
                    messages=cast("list[ChatCompletionMessageParam]", list(messages)),
                    response_format=cast("ResponseFormatJSONSchema", response_format),
                    max_completion_tokens=self.max_tokens,
                )
            except openai.OpenAIError as exc:
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(Status(StatusCode.ERROR))
                raise PlanningFailed(
                    [failure_reason(exc, self._client, self.model)], model_server=True
                ) from exc
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise _not_a_completion(span, url, exc) from None
            except RecursionError:
                # The SDK parses the HTTP body with plain json: a body nested thousands deep.
                span.set_attribute("error.type", "nested_too_deep")
                span.set_status(Status(StatusCode.ERROR))
                raise PlanningFailed(
                    [f"the model server at {url} answered JSON nested too deeply to read"],
                    model_server=True,
                ) from None
            try:
                usage = TokenUsage(
                    input_tokens=completion.usage.prompt_tokens if completion.usage else 0,
                    output_tokens=completion.usage.completion_tokens if completion.usage else 0,
                )
                completion.choices  # noqa: B018 - read for its check: a str has none
            except (AttributeError, TypeError, ValueError) as exc:
                # The SDK hands back what it could not parse as it came (a page's text, a body
                # that is not UTF-8, negative token counts): no chat completion, no retry.
                raise _not_a_completion(span, url, exc) from None
            _check_usage(
                span, url, usage, self.max_tokens, _request_bytes(messages, response_format)
            )
            # The server names the model: what it says is quoted, a secret echoed there too.
            model = quoted(completion.model or self.model, 200)
            span.set_attribute("gen_ai.response.model", model)
            span.set_attribute("gen_ai.response.id", completion.id or "")
            span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
            # Labelled with the configured name: the server's could be a new one every answer.
            metrics.LLM_TOKENS.labels(self.model, "input").inc(usage.input_tokens)
            metrics.LLM_TOKENS.labels(self.model, "output").inc(usage.output_tokens)
            if not completion.choices:
                span.set_attribute("error.type", "no_choices")
                raise PlanningFailed(
                    [f"the model server at {url} answered with no choices"], model_server=True
                )
            try:  # a choice that is no object (`"choices": ["x"]`) crashed the planner
                choice = completion.choices[0]
                answer = ChatAnswer(
                    content=_text_or_none(choice.message.content),
                    refusal=_text_or_none(getattr(choice.message, "refusal", None)),
                    finish_reason=str(choice.finish_reason),
                    model=model,
                    usage=usage,
                )
            except (AttributeError, TypeError, ValueError) as exc:
                raise _not_a_completion(span, url, exc) from None
            span.set_attribute("gen_ai.response.finish_reasons", [answer.finish_reason])
            return answer


def _text_or_none(value: object) -> str | None:
    """Return a message's text as the SDK gave it; TypeError if it is something else."""
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"its message holds {type(value).__name__}, not text")


def _request_bytes(messages: Sequence[dict[str, str]], response_format: dict[str, Any]) -> int:
    """Return about how many bytes the request's prompt takes (its messages and schema)."""
    sent = json.dumps({"messages": list(messages), "response_format": response_format})
    return len(sent)


def _check_usage(span: Span, url: object, usage: TokenUsage, asked: int, sent: int) -> None:
    """Refuse token counts no real server reports: the budget and the metric believe them.

    An answer takes at most the `max_completion_tokens` asked for; a prompt has no more tokens
    than the request has bytes (a token stands for one byte at least).
    """
    said = None
    if usage.output_tokens > asked:
        said = (
            f"{usage.output_tokens} completion tokens, more than the {asked} plangate asked "
            "for (max_completion_tokens)"
        )
    elif usage.input_tokens > sent:
        said = (
            f"{usage.input_tokens} prompt tokens for a request of {sent} bytes (a token is a "
            "byte at least)"
        )
    if said is None:
        return
    span.set_attribute("error.type", "impossible_usage")
    span.set_status(Status(StatusCode.ERROR))
    raise PlanningFailed(
        [
            f"the model server at {url} answered no sane chat completion: it reported {said}; "
            "check that OPENAI_BASE_URL names the OpenAI-compatible server meant"
        ],
        model_server=True,
    )


def _not_a_completion(span: Span, url: object, exc: Exception) -> PlanningFailed:
    """Mark the span and return the failure of an answer that is no chat completion."""
    span.set_attribute("error.type", "not_a_completion")
    span.set_status(Status(StatusCode.ERROR))
    return PlanningFailed(
        [
            f"the model server at {url} answered something that is not a chat completion "
            f"({type(exc).__name__}); check that OPENAI_BASE_URL names an OpenAI-compatible API"
        ],
        model_server=True,
    )
