"""LangChain tools as plangate tools: specs, effects, errors, and the seed example end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("langchain_core")

from langchain_core.tools import tool

from plangate.config import Settings
from plangate.errors import ToolError, ToolLoadError
from plangate.tools import ToolContext, ToolRegistry
from plangate.tools.langchain import from_langchain
from tests.conftest import SEED_GOAL
from tests.support import HELD, eventually, only_plan, running_pipeline, step_runs

CONTEXT = ToolContext(goal_id="g1", plan_id="p1", step_id="notify", idempotency_key="hash:notify")


# The seed example's tools, written as a LangChain user writes them.
@tool
def ticket_count() -> int:
    """Return how many support tickets are open now."""
    return 128


@tool
def sla_threshold() -> int:
    """Return the most open tickets the SLA allows."""
    return 100


@tool
def notify_oncall(message: str) -> str:
    """Page the on-call engineer with `message`."""
    path = Path(os.environ["PLANGATE_DEMO_NOTIFICATIONS"])
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps({"message": message}) + "\n")
    return f"paged: {message}"


def pages(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["message"] for line in path.read_text().splitlines()]


def test_spec_takes_name_description_and_args_schema_from_the_langchain_tool() -> None:
    """Given a LangChain @tool function with one string argument,
    When it is registered as a read tool with tags,
    Then the spec carries its name, docstring, argument schema and the declared effect.
    """
    wrapped = from_langchain(notify_oncall, effect="read", idempotent=True, tags=("notify",))

    spec = wrapped.spec
    assert spec.name == "notify_oncall"
    assert spec.description == "Page the on-call engineer with `message`."
    assert spec.args_schema["type"] == "object"
    assert spec.args_schema["properties"]["message"]["type"] == "string"
    assert spec.args_schema["required"] == ["message"]
    assert (spec.effect, spec.idempotent, spec.tags) == ("read", True, ("notify",))


def test_a_tool_without_declared_effect_is_a_write() -> None:
    """Given a LangChain tool registered with no effect,
    Then it is a non-idempotent write, which the policy holds for a person.
    """
    wrapped = from_langchain(ticket_count)

    assert (wrapped.spec.effect, wrapped.spec.idempotent) == ("write", False)


def test_invoke_calls_the_langchain_tool_and_returns_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = tmp_path / "pages.jsonl"
    monkeypatch.setenv("PLANGATE_DEMO_NOTIFICATIONS", str(records))

    assert from_langchain(ticket_count, effect="read").invoke({}, CONTEXT) == 128
    assert from_langchain(notify_oncall).invoke({"message": "hi"}, CONTEXT) == "paged: hi"
    assert pages(records) == ["hi"]


@pytest.mark.parametrize("args", [{}, {"message": 3}])
def test_bad_arguments_raise_a_tool_error_naming_the_tool(args: dict[str, object]) -> None:
    """Given notify_oncall as a plangate tool,
    When it is invoked with a missing or mistyped message,
    Then a ToolError names the tool and the argument, and the LangChain tool is not called.
    """
    wrapped = from_langchain(notify_oncall)

    with pytest.raises(ToolError, match=r"tool notify_oncall: bad arguments: message"):
        wrapped.invoke(args, CONTEXT)


def test_a_non_langchain_object_is_refused() -> None:
    with pytest.raises(ToolLoadError, match="not a LangChain tool"):
        from_langchain(len)


def test_seed_example_with_langchain_tools_is_held_approved_and_pages_once(
    settings: Settings, tmp_path: Path
) -> None:
    """Given the seed example's three tools written as LangChain tools (notify with no effect),
    When the seed goal is submitted and alice approves the held plan,
    Then the plan is count, sla, notify; it completes; and notify_oncall ran exactly once.
    """
    registry = ToolRegistry(
        [
            from_langchain(ticket_count, effect="read", idempotent=True, trusted=True),
            from_langchain(sla_threshold, effect="read", idempotent=True, trusted=True),
            from_langchain(notify_oncall),
        ]
    )
    records = tmp_path / "notifications.jsonl"

    with running_pipeline(settings, registry=registry) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        held = pipeline.wait_for(goal_id, HELD, timeout=5)
        plan = only_plan(pipeline.store, goal_id)
        assert [(s.id, s.tool) for s in plan.steps] == [
            ("count", "ticket_count"),
            ("sla", "sla_threshold"),
            ("notify", "notify_oncall"),
        ]
        assert held.status_reason == "the plan writes; a person must approve it"
        assert pages(records) == []

        pipeline.approve(plan.plan_id, "alice")

        goal = pipeline.wait_for(goal_id, timeout=5)
        assert goal.status == "completed", goal.status_reason
        assert step_runs(pipeline.store, plan.plan_id) == {
            "count": "succeeded",
            "sla": "succeeded",
            "notify": "succeeded",
        }
    assert pages(records) == ["Ticket count 128 exceeded SLA 100"]


def test_a_langchain_write_with_a_declared_preview_shows_it_in_the_held_plans_dry_run(
    settings: Settings, tmp_path: Path
) -> None:
    """Given the seed tools as LangChain tools, notify registered with a preview,
    When the seed goal is held (the default policy previews what it holds),
    Then the dry run shows the reads' outputs and notify's preview, and nothing was paged.
    """
    registry = ToolRegistry(
        [
            from_langchain(ticket_count, effect="read", idempotent=True, trusted=True),
            from_langchain(sla_threshold, effect="read", idempotent=True, trusted=True),
            from_langchain(notify_oncall, preview=lambda args: f"would page: {args['message']}"),
        ]
    )

    with running_pipeline(settings, registry=registry) as pipeline:
        goal_id = pipeline.submit(SEED_GOAL).goal_id
        pipeline.wait_for(goal_id, HELD, timeout=5)
        plan_id = only_plan(pipeline.store, goal_id).plan_id
        preview = eventually(lambda: pipeline.review.get(plan_id).preview, what="the dry run")

    assert [(s.step_id, s.status, s.output, s.preview) for s in preview] == [
        ("count", "ran", 128, None),
        ("sla", "ran", 100, None),
        ("notify", "previewed", None, "would page: Ticket count 128 exceeded SLA 100"),
    ]
    assert pages(tmp_path / "notifications.jsonl") == []


def test_an_argument_the_tool_does_not_name_is_refused_not_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a LangChain tool with one argument,
    When it is given a misspelled second one (`mesage`),
    Then its schema refuses the key (a plan naming it is invalid) and a call is refused; the
    key was dropped, so a reviewer saw an argument the tool never received.
    """
    monkeypatch.setenv("PLANGATE_DEMO_NOTIFICATIONS", str(tmp_path / "pages.jsonl"))
    wrapped = from_langchain(notify_oncall)

    assert wrapped.spec.args_schema["additionalProperties"] is False
    with pytest.raises(ToolError, match="mesage: Extra inputs are not permitted"):
        wrapped.invoke({"message": "hi", "mesage": "typo"}, CONTEXT)


@tool
async def weather(city: str) -> str:
    """Return the weather in `city` (an async tool, as LangGraph users write them)."""
    return f"sunny in {city}"


def test_an_async_langchain_tool_is_called_as_a_sync_one_is() -> None:
    """It loaded, joined the catalog and was approved, then every call failed: "StructuredTool
    does not support sync invocation"."""
    wrapped = from_langchain(weather, effect="read", idempotent=True)

    assert wrapped.invoke({"city": "Oslo"}, CONTEXT) == "sunny in Oslo"
