"""Tools: `@tool` specs, invocation, the registry, and the demo tools' effects."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

from plangate.demo import tools as demo
from plangate.errors import ConfigError, OutputUnusable, ToolError, ToolLoadError
from plangate.tools import Tool, ToolContext, ToolRegistry, load_tools, tool
from tests.support import outer_environment

CONTEXT = ToolContext(goal_id="g1", plan_id="p1", step_id="notify", idempotency_key="hash:notify")


@pytest.fixture(autouse=True)
def notifications(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the demo's numbers and records away from the developer's own environment."""
    for name in ("PLANGATE_DEMO_DATA", "PLANGATE_DEMO_TICKET_COUNT", "PLANGATE_DEMO_SLA"):
        monkeypatch.delenv(name, raising=False)
    notifications = tmp_path / "records" / "notifications.jsonl"
    monkeypatch.setenv("PLANGATE_DEMO_NOTIFICATIONS", str(notifications))
    return notifications


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """Write a throwaway importable module; forget it afterwards."""
    written: list[str] = []
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(source)
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


class Page(BaseModel):
    """Who to page and why."""

    team: str
    urgent: bool = False


class Stamp(BaseModel):
    at: datetime


def make_tool(name: str, module: str) -> Tool[[], int]:
    def body() -> int:
        return 1

    body.__module__ = module
    return tool(effect="read", name=name)(body)


# --- the spec --------------------------------------------------------------------------------


def test_spec_is_built_from_the_signature_and_docstring() -> None:
    """Given a typed function with a default, when decorated, then its spec describes it."""

    @tool(effect="read", tags=("tickets",))
    def search(query: str, limit: Annotated[int, Field(ge=1)] = 10) -> list[str]:
        """Find tickets matching a query.

        This second paragraph is for humans reading the code, not for the planner.
        """
        return [query] * limit

    spec = search.spec
    assert (spec.name, spec.effect, spec.idempotent, spec.tags) == (
        "search",
        "read",
        False,
        ("tickets",),
    )
    assert spec.description == "Find tickets matching a query."
    assert spec.args_schema["type"] == "object"
    assert spec.args_schema["required"] == ["query"]
    assert spec.args_schema["properties"]["limit"] == {
        "default": 10,
        "minimum": 1,
        "title": "Limit",
        "type": "integer",
    }
    assert spec.args_schema["additionalProperties"] is False


def test_spec_uses_a_pydantic_model_parameter_as_the_arguments() -> None:
    """Given one parameter typed by a model, then the model's schema is the argument schema,
    closed to keys it does not name."""

    @tool(effect="write", name="page", description="Page a team.")
    def page(request: Page) -> str:
        return f"{request.team}:{request.urgent}"

    expected = {"type": "object", **Page.model_json_schema(), "additionalProperties": False}
    assert page.spec.args_schema == expected
    assert page.spec.description == "Page a team."
    assert page.invoke({"team": "db", "urgent": True}, CONTEXT) == "db:True"


def test_tool_context_is_injected_and_left_out_of_the_schema() -> None:
    """Given a parameter typed ToolContext, then the planner never sees it and the call gets it."""

    @tool(effect="write", idempotent=True)
    def send(text: str, context: ToolContext) -> str:
        return f"{text}/{context.idempotency_key}"

    assert set(send.spec.args_schema["properties"]) == {"text"}
    assert send.invoke({"text": "hi"}, CONTEXT) == "hi/hash:notify"


def test_output_schema_comes_from_the_return_annotation() -> None:
    """Given a return annotation, then the output schema is its JSON schema; without, None."""

    @tool(effect="read")
    def count() -> int:
        return 1

    @tool(effect="read")
    def anything():  # type: ignore[no-untyped-def]
        return 1

    assert count.spec.output_schema == {"type": "integer"}
    assert anything.spec.output_schema is None


def test_a_parameter_without_a_type_is_refused_by_name() -> None:
    """Given an unannotated parameter, when decorated, then ToolLoadError names the parameter."""
    with pytest.raises(ToolLoadError, match=r"parameter 'ticket' needs a type"):

        @tool(effect="read")
        def close(ticket, reason: str) -> None:  # type: ignore[no-untyped-def]
            return None


def test_effect_must_be_declared() -> None:
    """Given no effect, or one that is neither read nor write, then the tool is refused."""
    with pytest.raises(ToolLoadError, match="effect"):
        tool()
    with pytest.raises(ToolLoadError, match="effect must be 'read' or 'write'"):
        tool(effect="delete")(lambda: None)  # type: ignore[arg-type]


def test_parameter_names_that_clash_with_pydantic_keep_their_names() -> None:
    """Given parameters named `schema` and `_hidden`, then the schema still uses those names."""

    @tool(effect="read")
    def describe(schema: str, _hidden: int = 0) -> str:
        return f"{schema}{_hidden}"

    assert set(describe.spec.args_schema["properties"]) == {"schema", "_hidden"}
    assert describe.invoke({"schema": "s", "_hidden": 2}, CONTEXT) == "s2"


# --- invocation ------------------------------------------------------------------------------


@tool(effect="read")
def add(a: int, b: int = 1) -> int:
    """Add two numbers."""
    return a + b


def test_a_tool_is_still_callable_like_its_function() -> None:
    assert add(2, b=3) == 5


@pytest.mark.parametrize("args", [{"a": "two"}, {}, {"a": 1, "c": 2}])
def test_invoke_refuses_bad_arguments_naming_the_tool(args: dict[str, Any]) -> None:
    """Given arguments the schema refuses, when invoked, then ToolError names the tool."""
    with pytest.raises(ToolError, match=r"^tool add: bad arguments: "):
        add.invoke(args, CONTEXT)


def test_invoke_wraps_the_function_s_failure() -> None:
    """Given a tool that raises, when invoked, then ToolError says which tool and why."""

    @tool(effect="read")
    def broken() -> int:
        raise RuntimeError("upstream is down")

    with pytest.raises(ToolError, match=r"^tool broken failed: RuntimeError: upstream is down$"):
        broken.invoke({}, CONTEXT)


def test_a_failure_says_the_exception_s_type_as_python_does() -> None:
    """Given a tool that raises KeyError (whose message is the key alone),
    When invoked,
    Then the step's error names the type: "failed: 'A-9999'" told nothing of what went wrong.
    """

    @tool(effect="read")
    def order_total(order: str) -> int:
        return {"A-1": 3}[order]

    with pytest.raises(ToolError) as caught:
        order_total.invoke({"order": "A-9999"}, CONTEXT)
    assert str(caught.value) == "tool order_total failed: KeyError: 'A-9999'"
    assert isinstance(caught.value.__cause__, KeyError)


def test_invoke_returns_json_able_output() -> None:
    """Given a tool returning a model or a datetime, then invoke returns plain JSON data."""

    @tool(effect="read")
    def stamp() -> Stamp:
        return Stamp(at=datetime(2024, 1, 2, tzinfo=UTC))

    @tool(effect="read")
    def when():  # type: ignore[no-untyped-def]
        return datetime(2024, 1, 2, tzinfo=UTC)

    assert stamp.invoke({}, CONTEXT) == {"at": "2024-01-02T00:00:00Z"}
    assert when.invoke({}, CONTEXT) == "2024-01-02T00:00:00Z"


def test_invoke_refuses_output_that_breaks_the_return_type() -> None:
    @tool(effect="read")
    def liar() -> int:
        return "many"  # type: ignore[return-value]

    with pytest.raises(ToolError, match=r"^tool liar returned a value that does not match"):
        liar.invoke({}, CONTEXT)


# --- the registry ----------------------------------------------------------------------------


def test_registry_refuses_two_tools_with_one_name_naming_both_modules() -> None:
    registry = ToolRegistry([make_tool("lookup", "team_a.tools")])
    with pytest.raises(ToolLoadError, match=r"'lookup'.*team_a\.tools.*team_b\.tools"):
        registry.register(make_tool("lookup", "team_b.tools"))


def test_registry_refuses_a_plain_function_saying_to_decorate_it() -> None:
    """`ToolRegistry([f])` of a function without @tool failed with a bare AttributeError."""

    def order_total(order_id: str) -> float:
        return 42.5

    with pytest.raises(ToolLoadError) as refused:
        ToolRegistry([order_total])  # type: ignore[list-item]

    assert str(refused.value).startswith(
        "order_total is not a tool: decorate it with @tool(effect=...)"
    )


def test_registry_accepts_the_same_tool_twice() -> None:
    """Given a module that re-exports another's tool, then registering it again is harmless."""
    same = make_tool("lookup", "team_a.tools")
    registry = ToolRegistry([same, same])
    assert list(registry) == [same]


def test_registry_lists_known_tools_for_an_unknown_name() -> None:
    registry = ToolRegistry([add])
    assert "add" in registry
    assert "ad" not in registry
    with pytest.raises(ToolError, match=r"unknown tool 'ad'; known tools: add"):
        registry.get("ad")


def test_loading_the_demo_module_gives_its_three_tools() -> None:
    """Given the demo module, when loaded, then its catalog has the three seed tools."""
    catalog = load_tools(["plangate.demo.tools"]).catalog()

    effects = {name: (spec.effect, spec.idempotent) for name, spec in catalog.items()}
    assert effects == {
        "ticket_count": ("read", True),
        "sla_threshold": ("read", True),
        "notify_oncall": ("write", True),
    }
    assert catalog["notify_oncall"].args_schema["required"] == ["message"]


def test_a_module_without_tools_is_refused(write_module: Callable[..., str]) -> None:
    name = write_module("plain_helpers", "def helper() -> int:\n    return 1\n")
    with pytest.raises(ToolLoadError, match=r"tool module 'plain_helpers' defines no tools"):
        load_tools([name])


def test_a_missing_module_says_where_the_name_came_from() -> None:
    with pytest.raises(ToolLoadError) as caught:
        load_tools(["no_such_tools_module"])
    message = str(caught.value)
    assert "could not import tool module 'no_such_tools_module'" in message
    assert "PLANGATE_TOOLS or --tools" in message


def test_a_module_whose_own_import_is_missing_names_that_import_not_the_module(
    write_module: Callable[..., str],
) -> None:
    """It said "could not import tool module 'shop_tools' ...; check PLANGATE_TOOLS", of a
    module found where it was named, whose `import stripe` failed."""
    name = write_module("shop_tools", "import no_such_payment_sdk\n")
    with pytest.raises(ToolLoadError) as caught:
        load_tools([name])
    message = str(caught.value)
    assert "imports 'no_such_payment_sdk', which is not installed here" in message
    assert "PLANGATE_TOOLS" not in message


def test_a_module_importing_a_name_its_dependency_lacks_names_that_dependency(
    write_module: Callable[..., str],
) -> None:
    """`from json import not_a_name` (a dependency of another version) was blamed on
    PLANGATE_TOOLS, as if the module had not been found."""
    name = write_module("versioned_tools", "from json import not_a_name\n")
    with pytest.raises(ToolLoadError) as caught:
        load_tools([name])
    message = str(caught.value)
    assert "could not import what it needs from 'json'" in message
    assert "PLANGATE_TOOLS" not in message


def test_a_module_that_fails_while_importing_is_refused(write_module: Callable[..., str]) -> None:
    name = write_module("exploding_tools", "raise RuntimeError('bad config')\n")
    with pytest.raises(ToolLoadError, match=r"'exploding_tools' failed while importing.*bad conf"):
        load_tools([name])


# --- the demo tools --------------------------------------------------------------------------


def test_demo_numbers_come_from_the_shipped_data_file() -> None:
    shipped = json.loads(demo.DATA_FILE.read_text())
    assert demo.ticket_count.invoke({}, CONTEXT) == shipped["open_tickets"]
    assert demo.sla_threshold.invoke({}, CONTEXT) == shipped["sla_threshold"]


def test_demo_numbers_can_be_replaced_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given another data file and a single-value override, then the tools report them."""
    data = tmp_path / "quiet-day.json"
    data.write_text(json.dumps({"open_tickets": 3, "sla_threshold": 50}))
    monkeypatch.setenv("PLANGATE_DEMO_DATA", str(data))
    monkeypatch.setenv("PLANGATE_DEMO_SLA", "2")

    assert demo.ticket_count() == 3
    assert demo.sla_threshold() == 2


def test_a_bad_demo_override_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANGATE_DEMO_TICKET_COUNT", "lots")
    with pytest.raises(ConfigError, match="PLANGATE_DEMO_TICKET_COUNT: must be a whole number"):
        demo.ticket_count()


def test_notify_oncall_records_once_per_idempotency_key(
    notifications: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a notification sent, when the same step runs again, then nothing new is written."""
    synced: list[int] = []
    real_fsync = os.fsync

    def spy_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy_fsync)

    first = demo.notify_oncall.invoke({"message": "128 > 100"}, CONTEXT)
    again = demo.notify_oncall.invoke({"message": "128 > 100"}, CONTEXT)

    assert first["deduplicated"] is False
    assert again == {"notification_id": first["notification_id"], "deduplicated": True}
    [record] = demo.read_notifications(notifications)
    assert record["idempotency_key"] == "hash:notify"
    assert record["goal_id"] == "g1"
    assert record["message"] == "128 > 100"
    assert synced, "the line must be fsynced before the tool returns"


def test_notify_oncall_writes_again_for_another_key(notifications: Path) -> None:
    other = ToolContext(goal_id="g2", plan_id="p2", step_id="notify", idempotency_key="other")
    demo.notify_oncall("first", CONTEXT)
    demo.notify_oncall("second", other)
    assert [r["message"] for r in demo.read_notifications()] == ["first", "second"]


def test_concurrent_calls_with_one_key_write_one_line(notifications: Path) -> None:
    """Given eight threads sending the same step at once, then exactly one line is written."""
    start = threading.Barrier(8)
    results: list[demo.Notification] = []

    def send() -> None:
        start.wait()
        results.append(demo.notify_oncall("race", CONTEXT))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(demo.read_notifications()) == 1
    assert sorted(r.deduplicated for r in results) == [False] + [True] * 7
    assert len({r.notification_id for r in results}) == 1


def test_the_file_is_locked_while_the_line_is_written(
    notifications: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a write in progress, then another process trying to take the lock is refused."""
    others_refused: list[bool] = []
    real_fsync = os.fsync

    def fsync_while_probing_the_lock(fd: int) -> None:
        with notifications.open("a") as other:
            try:
                fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                others_refused.append(True)
            else:
                others_refused.append(False)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_while_probing_the_lock)
    demo.notify_oncall("locked", CONTEXT)
    assert others_refused[0] is True


def test_a_torn_last_line_does_not_hide_the_next_notification(notifications: Path) -> None:
    """Given a crash mid-write left half a line, then the next notification still parses."""
    notifications.parent.mkdir(parents=True)
    notifications.write_text('{"notification_id": "x", "idem')
    demo.notify_oncall("after the crash", CONTEXT)
    assert [r["message"] for r in demo.read_notifications()] == ["after the crash"]


def test_notifications_default_to_the_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PLANGATE_DEMO_NOTIFICATIONS")
    monkeypatch.setenv("PLANGATE_DATA_DIR", str(tmp_path / "data"))
    assert demo.notifications_path() == tmp_path / "data" / "notifications.jsonl"
    assert demo.read_notifications() == []


def test_write_tools_can_preview_for_reviewers() -> None:
    assert demo.notify_oncall.preview({"message": "${count} > ${sla}"}) == (
        "page the on-call engineer: '${count} > ${sla}'"
    )
    assert demo.ticket_count.preview({}) is None


class SearchQuery(BaseModel):
    text: str
    limit: int = 10


class OpenQuery(BaseModel):
    model_config = {"extra": "allow"}
    text: str


def test_a_tool_taking_one_model_refuses_an_argument_the_model_does_not_name() -> None:
    """Given a tool taking one pydantic model (`text`, `limit = 10`),
    When a plan gives it `limt: 1`,
    Then the key is refused by its schema and at the call; it was dropped, and the tool ran
    with `limit` 10 while the reviewer saw 1. A model that allows extra keys keeps them.
    """

    @tool(effect="read")
    def search(query: SearchQuery) -> int:
        """Search."""
        return query.limit

    @tool(effect="read")
    def search_open(query: OpenQuery) -> int:
        """Search, keeping any further key."""
        return len(query.model_extra or {})

    assert search.spec.args_schema["additionalProperties"] is False
    with pytest.raises(ToolError, match="limt: Extra inputs are not permitted"):
        search.invoke({"text": "hi", "limt": 1}, CONTEXT)
    assert search.invoke({"text": "hi", "limit": 1}, CONTEXT) == 1
    assert search_open.invoke({"text": "hi", "lang": "en"}, CONTEXT) == 1


def test_tags_given_as_one_text_are_refused_not_read_letter_by_letter() -> None:
    """`tags="destructive"` became the tags d, e, s, ...: the default policy's deny of a
    destructive write never matched, and the plan was only held."""
    with pytest.raises(
        ToolLoadError, match=r"tags must be a list of words \(tags=\['destructive'\]\)"
    ):

        @tool(effect="write", tags="destructive")
        def drop_table(table: str) -> None:
            """Drop a table."""


class Address(BaseModel):
    street: str
    city: str = "Paris"


def test_a_nested_model_refuses_in_the_plan_a_key_it_does_not_name() -> None:
    """Given a write tool taking an address (a model whose `city` defaults to Paris),
    When a plan spells `cty: "Lyon"` inside it,
    Then the plan is invalid at every stage's check, naming the key; it passed, the reviewer
    saw Lyon and the parcel went to Paris. A nested model that allows extra keys keeps them.
    """
    from schemas import Plan, PlanInvalid, Step, validate_plan

    @tool(effect="write")
    def ship(to: Address, labels: OpenQuery) -> str:
        """Ship a parcel."""
        return to.city

    def plan(to: dict[str, Any]) -> Plan:
        step = Step(id="ship", tool="ship", args={"to": to, "labels": {"text": "x", "k": 1}})
        return Plan(plan_id="p", goal_id="g", revision=1, summary="ship", steps=[step])

    catalog = {"ship": ship.spec}
    with pytest.raises(PlanInvalid, match=r"to: Additional properties are not allowed \('cty'"):
        validate_plan(plan({"street": "1 rue", "cty": "Lyon"}), catalog)
    validate_plan(plan({"street": "1 rue", "city": "Lyon"}), catalog)
    assert (
        ship.invoke(
            {"to": {"street": "1 rue", "city": "Lyon"}, "labels": {"text": "x", "k": 1}}, CONTEXT
        )
        == "Lyon"
    )


def test_a_type_no_plan_can_carry_is_refused_in_one_line_saying_what_to_use() -> None:
    """A generator tool (`-> Iterator[int]`) got pydantic's three paragraphs, advising
    `arbitrary_types_allowed`; the load error is one line naming the type and what to use."""
    with pytest.raises(ToolLoadError) as raised:

        @tool(effect="read")
        def numbers() -> Iterator[int]:
            """Count."""
            yield 1

    said = str(raised.value)
    assert "\n" not in said
    assert "arbitrary_types_allowed" not in said
    assert "Iterator[int]" in said
    assert "use JSON-shaped types" in said


def test_a_tool_declared_without_its_effect_is_told_how_to_write_it() -> None:
    """`@tool` alone, as Celery's `@app.task` is written, said "tool() takes 0 positional
    arguments but 1 was given"; `@tool()` that an effect is missing, in Python's words."""

    def lookup(sku: str) -> str:
        """Look a product up."""
        return sku

    with pytest.raises(
        ToolLoadError, match=r'@tool on lookup needs its effect: write @tool\(effect="read"\)'
    ):
        tool(lookup)
    with pytest.raises(
        ToolLoadError, match=r'@tool needs its effect: write @tool\(effect="read"\)'
    ):
        tool()


def test_a_return_value_of_another_type_is_named_as_the_value_not_the_arguments() -> None:
    """It said "arguments: Input should be a valid integer" of a wrong return value."""

    @tool(effect="read")
    def bad_return(x: str) -> int:
        """Return a count."""
        return x  # type: ignore[return-value]

    with pytest.raises(OutputUnusable, match="does not match its return type: the value: Input"):
        bad_return.invoke({"x": "not an int"}, ToolContext("g", "p", "s", "k"))


def test_a_tool_module_beside_the_user_says_plangate_does_not_look_there(tmp_path: Path) -> None:
    """A new user with ./shop_tools.py ran `plangate run --tools shop_tools` and was told
    "No module named 'shop_tools'; check PLANGATE_TOOLS or --tools", of a name that was right:
    the `plangate` command does not look in the current folder. `--tools shop_tools.py` (a
    file, not a module) was told the same.

    Given ./shop_tools.py and the installed `plangate` command run in its folder,
    When it is named as a module, and as a file,
    Then the first error says to run with PYTHONPATH=., the second to give the module's name.
    """
    script = Path(sys.executable).with_name("plangate")
    if not script.exists():
        pytest.skip("the plangate console script is not installed beside this Python")
    (tmp_path / "shop_tools.py").write_text(
        'from plangate.tools import tool\n\n\n@tool(effect="read")\ndef shop() -> str:\n'
        '    """Shop."""\n    return "x"\n'
    )
    environ = {**outer_environment(), "PLANGATE_DATA_DIR": str(tmp_path / "data")}

    def run(tools: str) -> subprocess.CompletedProcess[str]:
        command = [str(script), "run", "count the tickets", "--tools", tools, "--yes"]
        return subprocess.run(
            command, cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=60
        )

    as_module, as_file, as_path = run("shop_tools"), run("shop_tools.py"), run("./shop_tools.py")

    assert as_module.returncode == 2, as_module.stderr
    assert "./shop_tools.py is here, but plangate does not look in the current folder" in (
        as_module.stderr
    )
    assert "run it with PYTHONPATH=." in as_module.stderr
    for named in (as_file, as_path):  # "./x.py" was "the 'package' argument is required ..."
        assert named.returncode == 2, named.stderr
        assert "is a file's name: give the module's name ('shop_tools')" in named.stderr
        assert "(PYTHONPATH=.)" in named.stderr
