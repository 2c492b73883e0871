"""A model server is a remote party: its answer is bounded in time and size, never followed away.

Each case runs the embedded pipeline with the real openai SDK against a local server that
misbehaves in one way, and checks what the goal's submitter sees: the goal fails within
seconds, saying what happened and what to check, and nothing is read past its bound.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from plangate import metrics
from plangate.config import Settings
from plangate.redaction import register_secret
from plangate.store import TERMINAL_STATUSES, GoalRow
from plangate.store.goals import plan_of
from planner_worker.model_http import MAX_ANSWER_BYTES
from schemas import Plan
from schemas.validation import MAX_PLAN_BYTES
from tests.openai_stub import OpenAIStub, Reply, completion, error, plan_reply, running_stub
from tests.support import HELD, plans_of, running_pipeline

READ_STEPS = [{"id": "count", "tool": "ticket_count"}, {"id": "sla", "tool": "sla_threshold"}]
API_KEY = "sk-model-bounds-7f3a91c2e5"


@pytest.fixture
def stub(settings: Settings) -> Iterator[OpenAIStub]:
    with running_stub() as server:
        settings.openai_base_url = server.base_url
        settings.openai_api_key = SecretStr(API_KEY)
        yield server


def planned(settings: Settings, **overrides: Any) -> tuple[GoalRow, Plan | None]:
    """Submit one goal through the LLM planner; return it once planned or failed, and its plan."""
    options = {"planner": "openai", "planner_max_retries": 0} | overrides
    with running_pipeline(settings, **options) as pipeline:
        goal_id = pipeline.submit("how many tickets are open").goal_id
        goal = pipeline.wait_for(goal_id, HELD | TERMINAL_STATUSES, timeout=20)
        plans = plans_of(pipeline.store, goal_id)
        return goal, plan_of(plans[0]) if plans else None


def test_a_server_trickling_its_answer_is_cut_off_at_the_timeout(
    settings: Settings, stub: OpenAIStub
) -> None:
    """Given a server that sends its answer a byte every 0.2 s (each read well within the timeout),
    When a goal is planned with a 1 s timeout and one retry,
    Then the goal fails after about two timeouts, saying the server did not answer in time;
    the SDK's own timeout bounds each read only, so it used to wait for the whole trickle.
    """
    trickle = Reply(raw=json.dumps(plan_reply(READ_STEPS).body).encode(), trickle=0.2)
    stub.script(trickle, trickle)
    started = time.monotonic()
    goal, _ = planned(settings, planner_timeout_seconds=1.0, planner_max_retries=1)

    assert goal.status == "plan_failed"
    assert "did not answer within 1.0 s (after 1 retry)" in (goal.status_reason or "")
    assert len(stub.requests) == 2
    assert time.monotonic() - started < 15  # the trickle alone takes a minute


def test_compressed_bytes_that_inflate_to_nothing_are_cut_off_at_the_timeout_too(
    settings: Settings, stub: OpenAIStub
) -> None:
    """Given a server trickling a gzip header whose file name never ends (no byte of body),
    When a goal is planned with a 1 s timeout,
    Then the goal fails saying the server did not answer in time, as for any trickle.
    """
    endless_name = b"\x1f\x8b\x08\x08\x00\x00\x00\x00\x00\xff" + b"a" * 200
    stub.script(Reply(raw=endless_name, trickle=0.1, headers={"Content-Encoding": "gzip"}))
    started = time.monotonic()
    goal, _ = planned(settings, planner_timeout_seconds=1.0)

    assert goal.status == "plan_failed"
    assert "did not answer within 1.0 s" in (goal.status_reason or "")
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_an_answer_over_the_size_bound_fails_the_goal_without_a_retry(
    settings: Settings, stub: OpenAIStub, encoding: str
) -> None:
    """Given a server answering 6 MiB of JSON (plain, or a small gzip body that inflates to it),
    When a goal is planned with two retries allowed,
    Then the goal fails at once saying the answer is over the bound; no second request is made.
    """
    body = json.dumps(completion("x" * (6 << 20)).body).encode()
    headers = {}
    if encoding == "gzip":
        body, headers = gzip.compress(body), {"Content-Encoding": "gzip"}
        assert len(body) < 64 * 1024
    stub.script(*[Reply(raw=body, headers=headers)] * 3)
    goal, _ = planned(settings, planner_max_retries=2)

    assert goal.status == "plan_failed"
    assert f"answered more than {MAX_ANSWER_BYTES} bytes" in (goal.status_reason or "")
    assert "PLANGATE_PLANNER_MAX_TOKENS" in (goal.status_reason or "")
    assert len(stub.requests) == 1


def test_an_answer_in_an_encoding_not_asked_for_is_refused(
    settings: Settings, stub: OpenAIStub
) -> None:
    """Given a server that answers in Content-Encoding br (whose inflation is not bounded here),
    Then the goal fails naming the encoding, and the planner asked only for gzip or deflate.
    """
    stub.script(Reply(raw=b"\x8b\x02\x80", headers={"Content-Encoding": "br"}))
    goal, _ = planned(settings)

    assert goal.status == "plan_failed"
    assert "Content-Encoding 'br'" in (goal.status_reason or "")


def test_an_answer_content_no_plan_can_fit_is_not_sent_back_for_repair(
    settings: Settings, stub: OpenAIStub
) -> None:
    """Given a server that ignores max_tokens and answers 2 MiB of content,
    Then the goal fails at once saying so; it used to be sent back on each repair attempt.
    """
    stub.script(*[completion("y" * (2 << 20))] * 3)
    goal, _ = planned(settings)

    assert goal.status == "plan_failed"
    assert "more than a plan can take" in (goal.status_reason or "")
    assert len(stub.requests) == 1


def many_steps(count: int) -> Reply:
    """An answer of `count` steps of a tool no catalog has (a problem each), ~70 bytes each."""
    return plan_reply([{"id": f"s{n}", "tool": "no_such_tool"} for n in range(count)])


def test_an_invalid_answer_over_the_plan_size_limit_fails_at_once_without_a_repair(
    settings: Settings, stub: OpenAIStub
) -> None:
    """Given a server answering 10,000 steps (about 700 KB: under the 1 MiB answer check, over
    the plan's 256 KiB),
    When a goal is planned with three attempts,
    Then the goal fails after one request saying the answer is more than a plan can take;
    each repair used to send it back whole (3.8 KB, then 943 KB, then 1.88 MB requests).
    """
    answer = many_steps(10_000)
    assert MAX_PLAN_BYTES < len(answer.body["choices"][0]["message"]["content"]) < 1 << 20
    stub.script(*[answer] * 3)
    goal, _ = planned(settings)

    reason = goal.status_reason or ""
    assert goal.status == "plan_failed"
    assert "more than a plan can take" in reason
    assert f"at most {MAX_PLAN_BYTES} bytes" in reason
    assert len(stub.requests) == 1


def test_an_answer_sent_back_for_repair_is_cut_so_each_request_grows_by_a_few_kib(
    settings: Settings, stub: OpenAIStub
) -> None:
    """Given a server answering 2,000 steps each time (about 140 KB, 2,000 problems),
    When the goal is planned in three attempts,
    Then each repair adds at most 16 KiB to the request: the answer repeated is cut with a note,
    and its problems are listed up to twenty; the goal's reasons are as short.
    """
    stub.script(*[many_steps(2_000)] * 3)
    goal, _ = planned(settings)

    sizes = [len(json.dumps(request)) for request in stub.requests]
    assert len(sizes) == 3
    assert sizes[1] - sizes[0] < 16 * 1024, sizes
    assert sizes[2] - sizes[1] < 16 * 1024, sizes
    echoed, repair = stub.requests[2]["messages"][-2:]
    assert echoed["role"] == "assistant"
    assert "[plangate cut this answer here: it had" in echoed["content"]
    assert "and 1981 more problems like these" in repair["content"]
    assert goal.status == "plan_failed"
    assert len(goal.status_reason or "") < 30_000


def test_a_redirect_to_another_host_is_not_followed(settings: Settings, stub: OpenAIStub) -> None:
    """Given a model server that redirects to another server,
    Then the goal fails saying where it points and to set OPENAI_BASE_URL there;
    the other server never receives the request (nor the API key it carries).
    """
    with running_stub() as elsewhere:
        target = f"{elsewhere.base_url}/chat/completions"
        stub.script(Reply(status=307, headers={"Location": target}))
        goal, _ = planned(settings)
        assert elsewhere.requests == []

    assert goal.status == "plan_failed"
    reason = goal.status_reason or ""
    assert f"redirects (HTTP 307) to {target}" in reason
    assert "OPENAI_BASE_URL" in reason


def test_the_retry_count_said_is_the_number_of_retries_made(
    settings: Settings, stub: OpenAIStub
) -> None:
    """Given a 429 asking to wait ten minutes (the SDK waits at most two, else gives up),
    When two retries are allowed,
    Then the reason says no retry was made, as none was.
    """
    stub.script(error(429, "slow down", headers={"Retry-After": "600"}))
    goal, _ = planned(settings, planner_max_retries=2)

    assert goal.status == "plan_failed"
    assert "HTTP 429 after 0 retries" in (goal.status_reason or "")
    assert len(stub.requests) == 1


@pytest.mark.parametrize(
    ("retry_after", "said"),
    [
        ("86400", "it asked to wait 86400 s (retry-after): then `plangate goals retry GOAL`"),
        (
            "Wed, 21 Oct 2065 07:28:00 GMT",
            "it asked to wait until Wed, 21 Oct 2065 07:28:00 GMT (retry-after)",
        ),
        ("\x1b[2J" + "9" * 500, "it asked to wait until \\x1b[2J999"),
    ],
    ids=["seconds", "date", "hostile"],
)
def test_a_rate_limit_says_how_long_the_server_asked_to_wait(
    settings: Settings, stub: OpenAIStub, retry_after: str, said: str
) -> None:
    """Given a 429 whose Retry-After asks for a day (in seconds, or as a date),
    Then the goal fails at once naming that wait as the server sent it (bounded, printable)
    and what to run after it; it said only "wait and resubmit".
    """
    stub.script(error(429, "slow down", headers={"Retry-After": retry_after}))
    goal, _ = planned(settings)

    reason = goal.status_reason or ""
    assert goal.status == "plan_failed"
    assert said in reason
    assert "\x1b" not in reason
    assert len(reason) < 600
    assert len(stub.requests) == 1


def test_a_secret_the_model_writes_into_its_plan_is_redacted_before_anyone_sees_it(
    settings: Settings, stub: OpenAIStub
) -> None:
    """Given a model server that writes the API key it was sent into the plan's summary and an
    argument,
    Then the stored plan (what reviewers, the audit log and the executor see) has `[redacted]`.
    """
    steps = [{"id": "tell", "tool": "notify_oncall", "args": {"message": f"key={API_KEY}"}}]
    stub.script(plan_reply(steps, summary=f"Authorization: Bearer {API_KEY}"))
    _, plan = planned(settings)

    assert plan is not None
    assert API_KEY not in plan.model_dump_json()
    assert plan.summary == "Authorization: Bearer [redacted]"
    assert plan.steps[0].args == {"message": "key=[redacted]"}


def test_a_secret_the_server_puts_in_a_step_id_or_its_model_name_is_shown_nowhere(
    settings: Settings, stub: OpenAIStub
) -> None:
    """Given a model server that names a step, or itself, with a secret plangate knows,
    Then a plan whose step id quotes it is refused (an id cannot be redacted: others refer to
    it), and a model name quoting it is stored redacted as the plan's author.
    """
    secret = "sk_stepid_4b7e9d2a1c"
    register_secret(secret)
    stub.script(plan_reply([{"id": secret, "tool": "ticket_count"}]))
    goal, plan = planned(settings)

    assert goal.status == "plan_failed"
    assert "a step's id quotes a secret" in (goal.status_reason or "")
    assert plan is None

    stub.script(plan_reply(READ_STEPS, model=f"gpt-{API_KEY}"))
    with running_pipeline(settings, planner="openai", planner_max_retries=0) as pipeline:
        goal_id = pipeline.submit("how many tickets are open").goal_id
        pipeline.wait_for(goal_id, HELD | TERMINAL_STATUSES, timeout=20)
        (row,) = plans_of(pipeline.store, goal_id)
    assert (row.planner, row.model) == ("openai:gpt-[redacted]", "gpt-[redacted]")


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 500, b"HTTP/1.1 103 Early Hints\r\n\r\n" * 500],
    ids=["headers", "early-hints"],
)
def test_a_server_trickling_its_status_and_headers_is_cut_off_at_the_timeout(
    settings: Settings, head: bytes
) -> None:
    """Given a server that sends its status line and headers a byte every 50 ms, or endless
    `103 Early Hints` (each read well within the timeout, no body ever),
    When a goal is planned with a 1 s timeout,
    Then the goal fails after about a second saying the server did not answer in time; the
    SDK's read timeout bounds each read only, so it waited for as long as the bytes came.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set():
                connection, _ = listener.accept()
                with connection:
                    connection.recv(65536)
                    for index in range(len(head)):
                        if stop.wait(0.05):
                            return
                        connection.sendall(head[index : index + 1])

    threading.Thread(target=serve, daemon=True).start()
    settings.openai_base_url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    settings.openai_api_key = SecretStr(API_KEY)
    started = time.monotonic()
    try:
        goal, _ = planned(settings, planner_timeout_seconds=1.0)
    finally:
        stop.set()
        listener.close()

    assert goal.status == "plan_failed"
    assert "did not answer within 1.0 s" in (goal.status_reason or "")
    assert time.monotonic() - started < 15


@contextlib.contextmanager
def answering_raw(answer: bytes) -> Iterator[str]:
    """A server that reads each request and sends `answer` (or nothing), then closes; its URL."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = listener.accept()
                with connection:
                    connection.recv(65536)
                    connection.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    finally:
        listener.close()


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n", "headers were longer"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "illegal status line"),
    ],
    ids=["huge-headers", "not-http"],
)
def test_a_server_that_is_reached_but_does_not_answer_in_http_is_not_said_unreachable(
    settings: Settings, answer: bytes, said: str
) -> None:
    """Given a server that sends headers past what is read, or speaks another protocol,
    Then the goal fails saying the server did not answer in HTTP and why, after how many
    retries; the SDK's own words ("Connection error.") led to "cannot reach", which sent the
    operator to check an address that was right.
    """
    settings.openai_api_key = SecretStr(API_KEY)
    with answering_raw(answer) as url:
        settings.openai_base_url = url
        goal, _ = planned(settings, planner_max_retries=1)

    reason = goal.status_reason or ""
    assert goal.status == "plan_failed"
    assert f"the model server at {url}/ did not answer in HTTP" in reason
    assert said in reason
    assert "after 1 retry" in reason
    assert "cannot reach" not in reason


def test_a_server_nothing_listens_for_is_said_unreachable(settings: Settings) -> None:
    """Given an address where nothing listens, Then the goal fails saying it cannot be reached."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    settings.openai_api_key = SecretStr(API_KEY)
    settings.openai_base_url = f"http://127.0.0.1:{port}/v1"
    goal, _ = planned(settings)

    assert goal.status == "plan_failed"
    assert f"cannot reach the model server at http://127.0.0.1:{port}/v1/" in (
        goal.status_reason or ""
    )
    assert "Connection refused" in (goal.status_reason or "")


def test_a_server_that_hangs_up_on_each_request_is_not_said_unreachable(settings: Settings) -> None:
    """Given a server that accepts each connection and closes it unanswered,
    Then the goal fails saying the connection broke or no HTTP came (which one depends on
    whether the close reaches the client before the whole request was sent), not "cannot reach".
    """
    settings.openai_api_key = SecretStr(API_KEY)
    with answering_raw(b"") as url:
        settings.openai_base_url = url
        goal, _ = planned(settings, planner_max_retries=1)

    reason = goal.status_reason or ""
    assert goal.status == "plan_failed"
    assert "did not answer in HTTP" in reason or "broke while it answered" in reason, reason
    assert "after 1 retry" in reason


def test_a_refusal_the_server_asked_to_retry_says_it_was_retried(
    settings: Settings, stub: OpenAIStub
) -> None:
    """Given a server that answers HTTP 400 with `x-should-retry: true` (the SDK then retries),
    Then the reason says how many retries were made; a plain 400 says none.
    """
    retry = {"x-should-retry": "true"}
    stub.script(error(400, "busy", headers=retry), error(400, "busy", headers=retry))
    goal, _ = planned(settings, planner_max_retries=1)

    assert "HTTP 400 after 1 retry: Error code: 400 - busy" in (goal.status_reason or "")
    assert len(stub.requests) == 2

    stub.script(error(400, "no such option"))
    goal, _ = planned(settings, planner_max_retries=1)
    assert "HTTP 400: Error code: 400 - no such option" in (goal.status_reason or "")


def tokens_counted() -> float:
    """What plangate_llm_tokens_total says the configured model spent, both kinds."""
    return sum(
        REGISTRY.get_sample_value("plangate_llm_tokens_total", {"model": "gpt-4o-mini", "kind": k})
        or 0.0
        for k in ("input", "output")
    )


@pytest.mark.parametrize(
    ("usage", "said"),
    [
        ((10**12, 10**12), "reported 1000000000000 completion tokens, more than the 4096"),
        ((10**12, 50), "reported 1000000000000 prompt tokens for a request of"),
    ],
    ids=["completion", "prompt"],
)
def test_token_counts_no_real_server_reports_refuse_the_answer_and_count_nothing(
    settings: Settings, stub: OpenAIStub, usage: tuple[int, int], said: str
) -> None:
    """Given a server whose valid plan reports 10**12 tokens (more completion tokens than
    max_completion_tokens asked for, or more prompt tokens than the request has bytes),
    When a goal is planned,
    Then the goal fails saying the server's answer is no sane completion and what it reported,
    and the token metric does not move; it completed, storing 10**12 tokens against a budget
    of 60,000, and the metric jumped by 2e12.
    """
    before = tokens_counted()
    stub.script(plan_reply(READ_STEPS, usage=usage))
    goal, plan = planned(settings)

    reason = goal.status_reason or ""
    assert goal.status == "plan_failed"
    assert "answered no sane chat completion" in reason
    assert said in reason
    assert plan is None
    assert tokens_counted() == before


def calls_counted(outcome: str) -> float:
    labels = {"model": "gpt-4o-mini", "outcome": outcome}
    return REGISTRY.get_sample_value("plangate_llm_calls_total", labels) or 0.0


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (plan_reply(READ_STEPS), "ok"),
        (error(401, "Incorrect API key provided"), "unauthorized"),
        (error(500, "upstream overloaded"), "server_error"),
        (error(429, "slow down", headers={"Retry-After": "600"}), "rate_limited"),
        (error(400, "no such option"), "refused"),
        (Reply(delay=5.0, body=plan_reply(READ_STEPS).body), "timeout"),
        (Reply(raw=b"<html>bad gateway</html>"), "invalid_answer"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_each_call_to_the_model_server_is_counted_by_its_outcome(
    settings: Settings, stub: OpenAIStub, reply: Reply, outcome: str
) -> None:
    """Given a model server answering a plan, or failing in one way,
    When a goal is planned,
    Then plangate_llm_calls_total{model, outcome} counts the call under that outcome alone,
    every outcome there from the start; during 401s, 500s and timeouts every goal ended
    plan_failed while /metrics counted each goal.submitted as handled, and nothing else.
    """
    stub.script(reply)
    options = {"planner_max_retries": 0, "planner_timeout_seconds": 1.0}
    with running_pipeline(settings, planner="openai", **options) as pipeline:
        before = {name: calls_counted(name) for name in metrics.LLM_CALL_OUTCOMES}
        assert None not in [
            REGISTRY.get_sample_value(
                "plangate_llm_calls_total", {"model": "gpt-4o-mini", "outcome": name}
            )
            for name in metrics.LLM_CALL_OUTCOMES
        ]
        goal_id = pipeline.submit("how many tickets are open").goal_id
        pipeline.wait_for(goal_id, HELD | TERMINAL_STATUSES, timeout=20)
        after = {name: calls_counted(name) for name in metrics.LLM_CALL_OUTCOMES}

    moved = {name: after[name] - before[name] for name in after if after[name] != before[name]}
    assert moved == {outcome: 1.0}
