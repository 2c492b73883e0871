"""Bounded parsing: JSON too deep, or text that cannot be stored, fails clearly, never hangs.

Model answers nested 20,000 deep fail their goal with a reason; HTTP bodies nested 5,000 deep
or carrying lone surrogates or NUL answer 4xx JSON and store nothing; a goal.submitted carrying
such text on the broker is a dead letter with its reason.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kombu.messaging import Producer
from pydantic import SecretStr
from sqlalchemy import func, select

from plangate.client import Client
from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.server import create_app
from plangate.store import AuditRow, GoalRow, open_store
from schemas.decoding import JsonRefused, strict_json_loads
from tests.conftest import SEED_GOAL
from tests.fleet import serving_app
from tests.openai_stub import OpenAIStub, Reply, completion, running_stub
from tests.support import HELD, dead_letters, running_pipeline

DEEP_ANSWER = "[" * 20_000 + "]" * 20_000
DEEP_VALUE = "[" * 5_000 + "]" * 5_000
GOAL_EVENT = "dev.plangate.goal.submitted"


# --- the one bounded reader ----------------------------------------------------------------


def test_the_reader_bounds_depth_and_refuses_unstorable_text() -> None:
    """Given JSON at, and past, the depth limit, and text with a lone surrogate or NUL,
    When it is read,
    Then what is within bounds parses, and the rest is refused naming the problem, at once.
    """
    assert strict_json_loads("[" * 64 + "]" * 64) is not None
    started = time.monotonic()
    for text, problem in [
        ("[" * 65 + "]" * 65, "depth"),
        (DEEP_ANSWER, "depth"),
        ('{"a": ' * 20_000 + "1" + "}" * 20_000, "depth"),
        ('{"\\udfff": "v"}', "text"),
        ('["ok", "\\ud800"]', "text"),
        ('["ok", "\\uDBFF"]', "text"),
        ('["raw \ud800"]', "text"),
        ("[1, 2", "syntax"),
    ]:
        with pytest.raises(JsonRefused) as refused:
            strict_json_loads(text)
        assert refused.value.problem == problem, text[:20]
    assert time.monotonic() - started < 1.0
    assert strict_json_loads('{"a": "' + "[" * 100 + '"}') == {"a": "[" * 100}  # text, not depth
    assert strict_json_loads('["\\\\u0000"]', allow_nul=False) == ["\\u0000"]  # an escaped "\"
    assert strict_json_loads('{"a": "\\u0000", "b": "\\ud83d\\ude00"}') == {"a": "\0", "b": "😀"}
    with pytest.raises(JsonRefused, match="NUL"):
        strict_json_loads('{"a": "\\u0000"}', allow_nul=False)


# --- model answers -------------------------------------------------------------------------


@pytest.fixture
def stub(settings: Settings) -> Iterator[OpenAIStub]:
    with running_stub() as server:
        # As OPENAI_BASE_URL and OPENAI_API_KEY would set them.
        settings.openai_base_url = server.base_url
        settings.openai_api_key = SecretStr("test")
        yield server


def llm(settings: Settings) -> Any:
    return running_pipeline(settings, planner="openai", planner_max_retries=0)


def test_a_model_answer_nested_20000_deep_fails_the_goal_with_a_reason(
    settings: Settings, stub: OpenAIStub
) -> None:
    """Given a model that answers every attempt with JSON nested 20,000 deep,
    When a goal is planned,
    Then it fails within seconds, saying the answer is nested too deeply, after every attempt.
    """
    stub.script(*[completion(DEEP_ANSWER)] * settings.planner_attempts)
    with llm(settings) as pipeline:
        started = time.monotonic()
        goal_id = pipeline.submit("check the tickets").goal_id

        goal = pipeline.wait_for(goal_id, timeout=15)

    assert goal.status == "plan_failed", goal.status_reason
    assert goal.status_reason is not None
    assert "nested too deeply" in goal.status_reason
    assert f"in {settings.planner_attempts} attempts" in goal.status_reason
    assert time.monotonic() - started < 15


def test_a_model_server_whose_http_body_is_nested_20000_deep_fails_the_goal(
    settings: Settings, stub: OpenAIStub
) -> None:
    """Given a model server whose whole answer body is JSON nested 20,000 deep,
    When a goal is planned,
    Then the goal fails saying so, instead of staying `submitted` with no reason.
    """
    stub.script(Reply(raw=DEEP_ANSWER.encode()))
    with llm(settings) as pipeline:
        goal_id = pipeline.submit("check the tickets").goal_id

        goal = pipeline.wait_for(goal_id, timeout=15)

    assert goal.status == "plan_failed", goal.status_reason
    assert "nested too deeply" in (goal.status_reason or "")


# --- HTTP intake ---------------------------------------------------------------------------


@pytest.fixture
def intake(settings: Settings) -> Iterator[tuple[str, Settings]]:
    """`serve`'s app over real HTTP, with an in-memory broker and a SQLite store."""
    memory = settings.model_copy(update={"broker_url": "memory://"})
    open_store(memory.resolved_database_url()).close()  # migrated, as `plangate db upgrade`
    with Client(memory) as client, serving_app(create_app(memory, client=client)) as url:
        yield url, memory


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, dict[str, Any]]:
    request = urllib.request.Request(f"{url}/api/v1/goals", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            status, kind, text = answer.status, answer.headers["content-type"], answer.read()
    except urllib.error.HTTPError as error:
        with error:
            status, kind, text = error.code, error.headers["content-type"], error.read()
    return status, kind, json.loads(text)


JSON = {"Content-Type": "application/json"}
STRUCTURED = {"Content-Type": "application/cloudevents+json"}
BINARY = {
    "Content-Type": "application/json",
    "ce-specversion": "1.0",
    "ce-id": "e1",
    "ce-source": "/tests",
    "ce-type": GOAL_EVENT,
}


def event(data: str) -> bytes:
    head = f'{{"specversion": "1.0", "id": "e1", "source": "/tests", "type": "{GOAL_EVENT}"'
    return f'{head}, "datacontenttype": "application/json", "data": {data}}}'.encode()


BODIES = {
    "plain, nested 5000 deep": (JSON, f'{{"text": "x", "metadata": {DEEP_VALUE}}}'.encode()),
    "structured event, nested data": (STRUCTURED, event(f'{{"text": "x", "n": {DEEP_VALUE}}}')),
    "binary event, nested data": (BINARY, f'{{"text": "x", "n": {DEEP_VALUE}}}'.encode()),
    "lone surrogate in a metadata key": (JSON, b'{"text": "x", "metadata": {"\\udfff": "v"}}'),
    "lone surrogate in a metadata value": (JSON, b'{"text": "x", "metadata": {"k": "\\udfff"}}'),
    "lone surrogate in the text": (JSON, b'{"text": "a\\ud800b"}'),
    "NUL in the text": (JSON, b'{"text": "a\\u0000b"}'),
    "lone surrogate in an event": (
        STRUCTURED,
        event('{"text": "x", "metadata": {"k": "\\udfff"}}'),
    ),
    "lone surrogate, binary event": (BINARY, b'{"text": "\\udfff"}'),
    "surrogate as UTF-8 bytes": (JSON, b'{"text": "\xed\xbf\xbf"}'),
}


@pytest.mark.parametrize("case", list(BODIES))
def test_a_hostile_body_answers_4xx_json_and_stores_nothing(
    intake: tuple[str, Settings], case: str
) -> None:
    """Given `serve` over real HTTP,
    When a body is nested 5,000 deep or carries text that cannot be stored,
    Then the answer is a 4xx JSON error saying what to fix, and no goal is stored.
    """
    url, settings = intake
    headers, body = BODIES[case]

    status, kind, answer = post(url, body, headers)

    assert 400 <= status < 500, (status, answer)
    assert kind == "application/json"
    assert set(answer) == {"error"}
    if "nested" in case:
        assert status == 422
        assert "nested too deeply" in answer["error"]
    store = open_store(settings.resolved_database_url(), upgrade=False)
    try:
        with store.session() as session:
            assert session.scalar(select(func.count()).select_from(GoalRow)) == 0
            assert session.scalar(select(func.count()).select_from(AuditRow)) == 0
    finally:
        store.close()


def test_a_well_formed_goal_is_still_accepted(intake: tuple[str, Settings]) -> None:
    url, _ = intake
    body = json.dumps({"text": "check the tickets", "metadata": {"k": "é 😀"}}).encode()

    status, _, answer = post(url, body, JSON)

    assert status == 201, answer


# --- the broker door -----------------------------------------------------------------------


def publish_raw(pipeline: Pipeline, body: bytes) -> None:
    with pipeline.bus.connection() as connection:
        producer = Producer(connection.channel(), exchange=pipeline.bus.topology.exchange)
        producer.publish(
            body,
            routing_key="goal.submitted",
            content_type="application/json",
            content_encoding="utf-8",
        )


def goal_body(goal_id: str, text: str, metadata: str = "{}") -> bytes:
    return (
        f'{{"schema_version": 1, "type": "goal.submitted", "goal_id": "{goal_id}", '
        f'"text": "{text}", "metadata": {metadata}}}'
    ).encode()


def test_a_goal_with_unstorable_or_too_deep_json_on_the_broker_is_a_dead_letter(
    pipeline: Pipeline,
) -> None:
    """Given the running pipeline,
    When goal.submitted messages carry a lone surrogate, NUL, or nesting past the limit,
    Then each is a dead letter with its reason, none is stored, and the planner goes on.
    """
    publish_raw(pipeline, goal_body("g-surrogate", "x", '{"\\udfff": "v"}'))
    publish_raw(pipeline, goal_body("g-nul", "a\\u0000b"))
    publish_raw(pipeline, goal_body("g-deep", "x", '{"k": ' + "[" * 100 + "]" * 100 + "}"))

    letters = dead_letters(pipeline, count=3)

    reasons = sorted(letter.reason for letter in letters)
    assert any("lone surrogate" in reason for reason in reasons), reasons
    assert any("NUL" in reason for reason in reasons), reasons
    assert any("nested too deeply" in reason for reason in reasons), reasons
    with pipeline.store.session() as session:
        assert session.scalar(select(func.count()).select_from(GoalRow)) == 0
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    assert pipeline.wait_for(goal_id, HELD, timeout=5).status == "held"


def test_a_policy_file_nested_thousands_deep_is_a_policy_error_not_a_crash() -> None:
    """Given a policy whose `rules` nests 5,000 lists deep,
    When it is loaded,
    Then loading fails with a PolicyError saying it nests too deep (no RecursionError).
    """
    from approval_gate.policy import Policy
    from plangate.errors import PolicyError

    with pytest.raises(PolicyError, match="nests too deep"):
        Policy.from_text("rules: " + "[" * 5000 + "]" * 5000)


@pytest.mark.parametrize(
    "body",
    [
        b"<html>hello</html>",
        b'{"id": "x", "object": "chat.completion", "model": "m\xff\xfe", "choices": []}',
        json.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [],
                "usage": {"prompt_tokens": 10, "completion_tokens": -5, "total_tokens": 5},
            }
        ).encode(),
        json.dumps(  # a valid plan, but counts no database column holds: stuck `submitted`
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {
                            "role": "assistant",
                            "content": json.dumps(
                                {
                                    "summary": "Count",
                                    "steps": [{"id": "count", "tool": "ticket_count", "args": {}}],
                                }
                            ),
                        },
                    }
                ],
                "usage": {"prompt_tokens": 10**30, "completion_tokens": 10**30},
            }
        ).encode(),
        b'{"choices": ["x"]}',
        b'{"choices": [{"index": 0, "message": "x", "finish_reason": "stop"}]}',
        b'{"choices": [{"index": 0, "message": {"content": 7}, "finish_reason": "stop"}]}',
    ],
    ids=[
        "html",
        "not-utf8",
        "negative-usage",
        "usage-past-any-model",
        "choice-text",
        "message-text",
        "content-number",
    ],
)
def test_a_model_server_answering_no_chat_completion_fails_the_goal_at_once(
    settings: Settings, stub: OpenAIStub, body: bytes
) -> None:
    """Given a model server whose HTTP 200 answer is a web page, not UTF-8, or negative usage,
    When a goal is planned,
    Then the goal fails at once saying the server's answer is no chat completion; it was
    retried with a traceback each time, dead-lettered, and `plangate run` waited for its timeout.
    """
    stub.script(*[Reply(raw=body)] * 5)
    started = time.monotonic()
    with llm(settings) as pipeline:
        goal = pipeline.wait_for(pipeline.submit("check the tickets").goal_id, timeout=15)

    assert goal.status == "plan_failed", goal.status_reason
    assert "not a chat completion" in (goal.status_reason or "") or "could not read" in (
        goal.status_reason or ""
    )
    assert time.monotonic() - started < 15
