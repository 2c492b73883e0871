"""One chat completion through the openai SDK, traced as a GenAI `chat {model}` span.

The span follows the OpenTelemetry GenAI conventions: operation, provider, request and
response model, token usage, finish reasons. Prompts and completions are never recorded on it.
Transport and HTTP failures (after the SDK's own retries) become PlanningFailed with a reason
that says what to do; what the model answered (a refusal, a cut-off) is the caller's to judge.
What the server said is quoted redacted: a server that echoes the API key back (verbatim,
URL- or JSON-escaped) gets `[redacted]` quoted instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam
from openai.types.shared_params import ResponseFormatJSONSchema
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from plangate import metrics, telemetry
from plangate.errors import PlanningFailed
from plangate.redaction import quoted
from planner_worker.model_http import AnswerTooLarge
from schemas.messages import TokenUsage

PROVIDER = "openai"
_DETAIL_CHARS = 300
# What httpx's HTTP/1.1 parser (h11) says of a status line and headers longer than it reads.
_HEAD_TOO_LONG = "Receive buffer too long"


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

    def ask(
        self, messages: Sequence[dict[str, str]], response_format: dict[str, Any]
    ) -> ChatAnswer:
        """Send one chat completion request; raise PlanningFailed if no answer came back."""
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
                raise PlanningFailed([self._reason(exc)], model_server=True) from exc
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

    def _reason(self, exc: openai.OpenAIError) -> str:
        """Say in one sentence what went wrong and what to do about it."""
        url = self._client.base_url
        count = _retries_taken(exc, self._client.max_retries)
        retries = f"after {count} {'retry' if count == 1 else 'retries'}"
        detail = _detail(exc)
        if isinstance(exc, AnswerTooLarge):
            return str(exc)
        if isinstance(exc, openai.APIStatusError) and 300 <= exc.status_code < 400:
            location = quoted(exc.response.headers.get("location", ""), _DETAIL_CHARS)
            return (
                f"the model server at {url} redirects (HTTP {exc.status_code}) to "
                f"{location or 'nowhere'}; plangate does not follow a model server's redirects "
                "(they would carry the API key): set OPENAI_BASE_URL to the address it points at"
            )
        if isinstance(exc, openai.APITimeoutError):
            return (
                f"the model server at {url} did not answer within {self._client.timeout} s "
                f"({retries}); check that it is up and not overloaded (a hung server is cut "
                "off so too), or raise PLANGATE_PLANNER_TIMEOUT_SECONDS if it is only slow"
            )
        if isinstance(exc, openai.APIConnectionError):
            return _transport_reason(exc, url, retries)
        if isinstance(exc, openai.RateLimitError):
            return (
                f"the model server rate-limited the planner (HTTP 429 {retries}: {detail}); "
                "wait and resubmit, lower the planner's concurrency, or raise your rate limit"
            )
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return (
                f"the model server refused the API key (HTTP {exc.status_code}: {detail}); "
                "check OPENAI_API_KEY"
            )
        if isinstance(exc, openai.NotFoundError):
            return (
                f"the model server at {url} has no model {self.model!r} (HTTP 404: {detail}); "
                "check PLANGATE_MODEL and OPENAI_BASE_URL"
            )
        if isinstance(exc, openai.APIStatusError) and exc.status_code >= 500:
            return (
                f"the model server failed (HTTP {exc.status_code} {retries}: {detail}); "
                "try again later"
            )
        if isinstance(exc, openai.BadRequestError):
            # Retried only when the server asked (`x-should-retry`): then say so.
            tried = f" {retries}" if count else ""
            return (
                f"the model server refused the request (HTTP 400{tried}: {detail}); it must "
                f"support structured outputs (response_format json_schema) for model {self.model!r}"
            )
        if isinstance(exc, openai.APIStatusError):
            return f"the model server answered HTTP {exc.status_code}: {detail}"
        return f"the openai client failed: {detail}"


def _transport_reason(exc: openai.APIConnectionError, url: object, retries: str) -> str:
    """Say whether the server was not reached, or was reached and broke its answer.

    The SDK says only "Connection error."; httpx's error, its cause, says which.
    """
    cause = exc.__cause__
    said = quoted(str(cause) or type(cause).__name__, _DETAIL_CHARS) if cause else _detail(exc)
    if cause is None or isinstance(cause, httpx.ConnectError | httpx.ConnectTimeout):
        return f"cannot reach the model server at {url} ({said}); check OPENAI_BASE_URL"
    if isinstance(cause, httpx.RemoteProtocolError):
        if said == _HEAD_TOO_LONG:
            said = "its status line and headers were longer than plangate reads"
        return (
            f"the model server at {url} did not answer in HTTP ({said}; {retries}); check that "
            "OPENAI_BASE_URL names an OpenAI-compatible HTTP server, not a proxy or another service"
        )
    return (
        f"the connection to the model server at {url} broke while it answered ({said}; "
        f"{retries}); check the server's log and the network to it"
    )


def _text_or_none(value: object) -> str | None:
    """Return a message's text as the SDK gave it; TypeError if it is something else."""
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"its message holds {type(value).__name__}, not text")


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


def _retries_taken(exc: openai.OpenAIError, configured: int) -> int:
    """Return how many retries the SDK made: it numbers each attempt in a request header.

    Not always `max_retries`: the SDK does not retry when a server asks it to wait longer
    than a minute, or says not to.
    """
    request = getattr(exc, "request", None)
    taken = request.headers.get("x-stainless-retry-count") if request is not None else None
    return int(taken) if taken is not None and taken.isdigit() else configured


def _detail(exc: openai.OpenAIError) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return quoted(str(message), _DETAIL_CHARS)
