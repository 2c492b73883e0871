"""MCP servers' tools as plangate tools, against a real server process over stdio and HTTP.

The server is `tests.mcp_server`, written with the `mcp` SDK. Its write tools append what they
received (arguments, request `_meta`, the Authorization header) to an effects file, so the tests
count real effects.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mcp")

from plangate.config import Settings
from plangate.errors import ToolError, ToolLoadError
from plangate.step_calls import idempotency_key
from plangate.tools import ToolContext
from plangate.tools.mcp import McpServers, McpTool, close_all, open_mcp_servers
from plangate.tools.mcp.connection import urls_without_secrets
from tests.servers import free_port, wait_until_ready
from tests.support import HELD, only_plan, running_pipeline, step_runs, write_yaml

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = ToolContext(goal_id="g1", plan_id="p1", step_id="page", idempotency_key="key-1")


def stdio_server(effects: Path, **options: Any) -> dict[str, Any]:
    """The test server's entry in a server list, started over stdio."""
    return {
        "command": sys.executable,
        "args": ["-m", "tests.mcp_server"],
        "cwd": str(ROOT),
        "env": {"MCP_TEST_EFFECTS": str(effects)},
        **options,
    }


def server_list(path: Path, **servers: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"mcpServers": servers}), encoding="utf-8")
    return path


def effects_in(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def by_name(servers: McpServers) -> dict[str, McpTool]:
    return {each.name: each for each in servers.tools}


def policy_view(servers: McpServers) -> dict[str, tuple[str, bool, tuple[str, ...]]]:
    return {t.name: (t.spec.effect, t.spec.idempotent, t.spec.tags) for t in servers.tools}


@pytest.fixture(autouse=True)
def _close_servers() -> Iterator[None]:
    """Servers opened by a pipeline's executor are closed at exit; close them after each test."""
    yield
    close_all()


@pytest.fixture
def effects(tmp_path: Path) -> Path:
    return tmp_path / "effects.jsonl"


@pytest.fixture
def incidents(tmp_path: Path, effects: Path) -> Iterator[McpServers]:
    """The test server over stdio, as `incidents`, with no overrides."""
    with open_mcp_servers(server_list(tmp_path / "mcp.json", incidents=stdio_server(effects))) as s:
        yield s


@pytest.fixture
def http_url(tmp_path: Path, effects: Path) -> Iterator[str]:
    """The test server as its own process, speaking streamable HTTP on 127.0.0.1."""
    port = free_port()
    log = tmp_path / "mcp-http.log"
    env = {**os.environ, "MCP_TEST_EFFECTS": str(effects)}
    command = [sys.executable, "-m", "tests.mcp_server", "--transport", "http", "--port", str(port)]
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=output)

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    try:
        wait_until_ready("the MCP test server", answers, process, [log], timeout=30)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


EXPECTED_POLICY = {
    "incidents.open_incidents": ("read", True, ()),
    "incidents.page_oncall": ("write", True, ()),
    "incidents.delete_incident": ("write", False, ("destructive",)),
    "incidents.restart_service": ("write", False, ("destructive",)),
    "incidents.crash_server": ("write", False, ("destructive",)),
    "incidents.failing_tool": ("read", True, ()),
    "incidents.incident_summary": ("read", True, ()),
    "incidents.server_pid": ("read", True, ()),
}


def test_hints_map_to_effect_idempotency_and_the_destructive_tag(incidents: McpServers) -> None:
    """Given the test server over stdio, listed as `incidents`,
    When its tools are loaded,
    Then each is named `incidents.<tool>`; readOnlyHint gives `read`, idempotentHint
    `idempotent`, destructiveHint the `destructive` tag; an unannotated tool
    (restart_service) is a non-idempotent destructive write, as the MCP defaults say.
    """
    assert policy_view(incidents) == EXPECTED_POLICY


def test_spec_carries_the_servers_schemas_and_description(incidents: McpServers) -> None:
    """Given the server's page_oncall and incident_summary tools,
    Then the spec's args_schema is the tool's inputSchema, its output_schema the outputSchema,
    and its description the tool's.
    """
    tools = by_name(incidents)
    page = tools["incidents.page_oncall"].spec
    assert page.description == "Page the on-call engineer with a message."
    assert page.args_schema["type"] == "object"
    assert page.args_schema["properties"]["message"]["type"] == "string"
    assert page.args_schema["required"] == ["message"]
    summary = tools["incidents.incident_summary"].spec
    assert summary.output_schema is not None
    assert summary.output_schema["additionalProperties"] == {"type": "integer"}


def test_a_call_returns_structured_content_and_carries_the_step_in_meta(
    incidents: McpServers, effects: Path
) -> None:
    """Given page_oncall of the server,
    When it is invoked for a step,
    Then it returns the server's structured content, and the server received the arguments
    and, in the request's _meta, the idempotency key, goal, plan and step.
    """
    tools = by_name(incidents)

    assert tools["incidents.page_oncall"].invoke({"message": "hi"}, CONTEXT) == {
        "result": "paged: hi"
    }
    assert tools["incidents.incident_summary"].invoke({}, CONTEXT) == {"high": 1, "low": 1}
    (effect,) = effects_in(effects)
    assert effect["args"] == {"message": "hi"}
    # The SDK may add its own keys (a `traceparent` when a tracer is active): only ours count.
    ours = {k: v for k, v in effect["meta"].items() if k.startswith("plangate/")}
    assert ours == {
        "plangate/idempotency_key": "key-1",
        "plangate/goal_id": "g1",
        "plangate/plan_id": "p1",
        "plangate/step_id": "page",
    }


@pytest.mark.parametrize(
    ("args", "problem"),
    [({}, "'message' is a required property"), ({"message": 3}, "message: 3 is not of type")],
)
def test_bad_arguments_are_refused_before_the_server_is_called(
    incidents: McpServers, effects: Path, args: dict[str, Any], problem: str
) -> None:
    """Given page_oncall, whose input schema requires a string message,
    When it is invoked with a missing or mistyped message,
    Then a ToolError names the tool and the problem, and the server never ran it.
    """
    with pytest.raises(ToolError, match=rf"tool incidents.page_oncall: bad arguments: .*{problem}"):
        by_name(incidents)["incidents.page_oncall"].invoke(args, CONTEXT)
    assert effects_in(effects) == []


def test_an_error_result_is_a_tool_error_with_the_servers_text(incidents: McpServers) -> None:
    """Given a tool that answers with isError,
    When it is invoked,
    Then a ToolError names the tool and carries the server's message.
    """
    with pytest.raises(
        ToolError, match=r"incidents.failing_tool failed: .*database is unreachable"
    ):
        by_name(incidents)["incidents.failing_tool"].invoke({}, CONTEXT)


def test_a_dead_server_is_restarted_for_the_next_call(incidents: McpServers, effects: Path) -> None:
    """Given the stdio server, killed between two calls,
    When a read and then a destructive (not repeatable) tool are invoked,
    Then both run on a new server process, and the destructive one ran once.
    """
    tools = by_name(incidents)
    first = tools["incidents.server_pid"].invoke({}, CONTEXT)["result"]
    os.kill(first, signal.SIGKILL)

    second = tools["incidents.server_pid"].invoke({}, CONTEXT)["result"]
    os.kill(second, signal.SIGKILL)
    deleted = tools["incidents.delete_incident"].invoke({"incident_id": "INC-2"}, CONTEXT)

    assert second != first
    assert deleted == {"result": "deleted INC-2"}
    assert [e["args"] for e in effects_in(effects)] == [{"incident_id": "INC-2"}]


def test_a_connection_lost_during_a_write_is_not_repeated(incidents: McpServers) -> None:
    """Given a non-idempotent write tool whose call kills the server midway,
    When it is invoked,
    Then a ToolError says its outcome is unknown (it is not sent again), and the next call
    works on a new server.
    """
    tools = by_name(incidents)

    with pytest.raises(ToolError, match="whether it took effect is unknown"):
        tools["incidents.crash_server"].invoke({}, CONTEXT)
    assert tools["incidents.open_incidents"].invoke({}, CONTEXT) == {"result": "INC-1,INC-2"}


def test_streamable_http_server_maps_the_same_and_gets_headers_from_the_environment(
    http_url: str, tmp_path: Path, effects: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given the test server running on 127.0.0.1 over streamable HTTP, listed by url with an
    Authorization header taken from ${MCP_TEST_TOKEN},
    When its tools are loaded and page_oncall is invoked,
    Then the mapping is as over stdio, and the call carries the header and the step's key.
    """
    monkeypatch.setenv("MCP_TEST_TOKEN", "s3cret")
    entry = {"url": http_url, "headers": {"Authorization": "Bearer ${MCP_TEST_TOKEN}"}}
    path = server_list(tmp_path / "mcp.json", incidents=entry)

    with open_mcp_servers(path) as servers:
        assert policy_view(servers) == EXPECTED_POLICY
        page = by_name(servers)["incidents.page_oncall"]
        assert page.invoke({"message": "over http"}, CONTEXT) == {"result": "paged: over http"}

    (effect,) = effects_in(effects)
    assert effect["authorization"] == "Bearer s3cret"
    assert effect["meta"]["plangate/idempotency_key"] == "key-1"


def test_overrides_replace_hints_field_by_field(tmp_path: Path, effects: Path) -> None:
    """Given a YAML server list that overrides hints of three tools, includes four, and sets
    the prefix `ops-`,
    When the tools are loaded,
    Then only the included tools are offered, as `ops-<tool>`, with each overridden field
    replaced and the others still read from the hints.
    """
    overrides = {
        "page_oncall": {"effect": "read"},
        "delete_incident": {"tags": []},
        "open_incidents": {"effect": "write", "idempotent": False, "tags": ["pii"]},
    }
    entry = stdio_server(effects, prefix="ops-", include=[*overrides, "restart_service"])
    path = write_yaml(
        tmp_path / "mcp.yaml", {"mcpServers": {"incidents": {**entry, "tools": overrides}}}
    )

    with open_mcp_servers(path) as servers:
        assert policy_view(servers) == {
            "ops-page_oncall": ("read", True, ()),
            "ops-delete_incident": ("write", False, ()),
            "ops-open_incidents": ("write", False, ("pii",)),
            "ops-restart_service": ("write", False, ("destructive",)),
        }


def test_an_override_of_a_tool_the_server_does_not_list_is_refused(
    tmp_path: Path, effects: Path
) -> None:
    """Given an override for `delete_incidents` (a typo),
    When the server list is loaded,
    Then a ToolLoadError names the server, the file, the unknown tool and the listed ones.
    """
    entry = stdio_server(effects, tools={"delete_incidents": {"tags": []}})
    path = server_list(tmp_path / "mcp.json", incidents=entry)

    with pytest.raises(ToolLoadError) as caught:
        open_mcp_servers(path)
    message = str(caught.value)
    assert "MCP server 'incidents'" in message
    assert str(path) in message
    assert '"tools" names delete_incidents, which the server does not list' in message
    assert "delete_incident," in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "is not valid JSON"),
        ('{"servers": {}}', 'must be an object with "mcpServers"'),
        ('{"mcpServers": {}, "extra": 1}', 'unknown key "extra"'),
        ('{"mcpServers": {}}', 'lists no servers under "mcpServers"'),
        ('{"mcpServers": {"x": {"args": []}}}', "MCP server 'x' in .* needs \"command\""),
        (
            '{"mcpServers": {"x": {"comand": "y", "url": "http://h/mcp"}}}',
            "MCP server 'x' in .*: unknown key \"comand\" \\(known keys: ",
        ),
        (
            '{"mcpServers": {"x": {"command": "y", "tools": {"t": {"efect": "read"}}}}}',
            'unknown key "tools.t.efect"',
        ),
        (
            '{"mcpServers": {"x": {"command": "y", "env": {"T": "${MCP_TEST_UNSET}"}}}}',
            "env T: environment variable MCP_TEST_UNSET is not set",
        ),
    ],
)
def test_a_wrong_server_list_is_refused_with_what_to_fix(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(ToolLoadError, match=problem):
        open_mcp_servers(path)


def test_a_missing_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(
        ToolLoadError, match=r"cannot read the MCP server list .*PLANGATE_MCP_SERVERS"
    ):
        open_mcp_servers(tmp_path / "absent.json")


def test_a_server_that_cannot_start_or_be_reached_is_named(tmp_path: Path) -> None:
    """Given a stdio server whose command does not exist, and an HTTP server nobody runs,
    When each list is loaded,
    Then a ToolLoadError names the server and says what to check.
    """
    missing = server_list(tmp_path / "a.json", ghost={"command": str(tmp_path / "no-such-server")})
    with pytest.raises(
        ToolLoadError, match=r"MCP server 'ghost' .* could not be started .*command"
    ):
        open_mcp_servers(missing)

    url = f"http://127.0.0.1:{free_port()}/mcp"
    unreachable = server_list(tmp_path / "b.json", away={"url": url, "timeout_seconds": 10})
    with pytest.raises(ToolLoadError, match=f"MCP server 'away' .* is unreachable at {url}"):
        open_mcp_servers(unreachable)


# End to end: the executor offers the server's tools (PLANGATE_MCP_SERVERS), the playbook
# planner plans with them and the example policy decides.

PLAYBOOK = {
    "playbooks": [
        {
            "name": "list",
            "pattern": "^list incidents$",
            "steps": [{"id": "list", "tool": "incidents.open_incidents", "args": {}}],
        },
        {
            "name": "delete",
            "pattern": "^delete (?P<id>INC-\\d+)$",
            "steps": [
                {
                    "id": "delete",
                    "tool": "incidents.delete_incident",
                    "args": {"incident_id": "{{id}}"},
                }
            ],
        },
        {
            "name": "page",
            "pattern": "^page (?P<message>.+)$",
            "steps": [
                {"id": "page", "tool": "incidents.page_oncall", "args": {"message": "{{message}}"}}
            ],
        },
    ]
}


def pipeline_settings(
    tmp_path: Path, effects: Path, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    entry = stdio_server(effects, tools=overrides or {})
    return {
        "mcp_servers": server_list(tmp_path / "mcp.json", incidents=entry),
        "playbook_file": write_yaml(tmp_path / "playbook.yaml", PLAYBOOK),
        "planner": "playbook",
    }


def test_a_read_only_mcp_tool_is_auto_approved_and_runs(
    settings: Settings, tmp_path: Path, effects: Path
) -> None:
    """Given the executor offering the server's tools and the example policy,
    When a goal plans only the read-only open_incidents,
    Then the plan is approved without a person and completes.
    """
    with running_pipeline(settings, **pipeline_settings(tmp_path, effects)) as pipeline:
        goal_id = pipeline.submit("list incidents").goal_id

        goal = pipeline.wait_for(goal_id, timeout=15)

        assert goal.status == "completed", goal.status_reason
        plan = only_plan(pipeline.store, goal_id)
        assert step_runs(pipeline.store, plan.plan_id) == {"list": "succeeded"}


def test_a_destructive_mcp_tool_is_denied_and_nothing_is_deleted(
    settings: Settings, tmp_path: Path, effects: Path
) -> None:
    """Given the same, when a goal plans the destructive delete_incident,
    Then the example policy denies it and the server never deletes anything.
    """
    with running_pipeline(settings, **pipeline_settings(tmp_path, effects)) as pipeline:
        goal_id = pipeline.submit("delete INC-1").goal_id

        goal = pipeline.wait_for(goal_id, timeout=15)

        assert goal.status == "denied"
        assert goal.status_reason == "a destructive step never runs unattended"
        assert step_runs(pipeline.store, only_plan(pipeline.store, goal_id).plan_id) == {}
    assert effects_in(effects) == []


def test_an_override_making_delete_non_destructive_turns_deny_into_hold(
    settings: Settings, tmp_path: Path, effects: Path
) -> None:
    """Given delete_incident overridden in the server list with `"tags": []`,
    When a goal plans it,
    Then the plan is held for a person (a write), not denied, and nothing runs yet.
    """
    overrides = {"delete_incident": {"tags": []}}
    options = pipeline_settings(tmp_path, effects, overrides)
    with running_pipeline(settings, **options) as pipeline:
        goal_id = pipeline.submit("delete INC-1").goal_id

        held = pipeline.wait_for(goal_id, HELD, timeout=15)

        assert held.status_reason == "the plan writes; a person must approve it"
    assert effects_in(effects) == []


def test_a_held_mcp_write_runs_once_after_approval_with_the_steps_key(
    settings: Settings, tmp_path: Path, effects: Path
) -> None:
    """Given page_oncall, an idempotent write by its hints,
    When a goal plans it, the example policy holds it and alice approves,
    Then the page happens exactly once, carrying the key derived from the plan hash and step.
    """
    with running_pipeline(settings, **pipeline_settings(tmp_path, effects)) as pipeline:
        goal_id = pipeline.submit("page disk almost full").goal_id
        pipeline.wait_for(goal_id, HELD, timeout=15)
        plan = only_plan(pipeline.store, goal_id)
        assert effects_in(effects) == []

        pipeline.approve(plan.plan_id, "alice")

        goal = pipeline.wait_for(goal_id, timeout=15)
        assert goal.status == "completed", goal.status_reason
    (effect,) = effects_in(effects)
    assert effect["args"] == {"message": "disk almost full"}
    assert effect["meta"]["plangate/idempotency_key"] == idempotency_key(
        goal_id, plan.step("page"), effect["args"]
    )
    assert effect["meta"]["plangate/goal_id"] == goal_id


def test_an_override_marking_page_read_lets_it_run_unattended(
    settings: Settings, tmp_path: Path, effects: Path
) -> None:
    """Given page_oncall overridden to effect `read` in the server list,
    When a goal plans it,
    Then the example policy approves it without a person and it pages once.
    """
    options = pipeline_settings(tmp_path, effects, {"page_oncall": {"effect": "read"}})
    with running_pipeline(settings, **options) as pipeline:
        goal_id = pipeline.submit("page api latency").goal_id

        goal = pipeline.wait_for(goal_id, timeout=15)

        assert goal.status == "completed", goal.status_reason
    assert [e["args"] for e in effects_in(effects)] == [{"message": "api latency"}]


def test_a_server_that_never_answers_times_out_naming_the_setting(tmp_path: Path) -> None:
    """Given a stdio "server" that reads its input and never answers, with a 1 s timeout,
    When the list is loaded,
    Then a ToolLoadError says it did not answer in time and how to raise the timeout.
    """
    silent = {"command": sys.executable, "args": ["-c", "import sys; sys.stdin.read()"]}
    path = server_list(tmp_path / "mcp.json", silent={**silent, "timeout_seconds": 1})

    with pytest.raises(ToolLoadError, match=r"did not answer within 1 s; .*timeout_sec"):
        open_mcp_servers(path)


def test_a_prefix_making_names_too_long_is_refused(tmp_path: Path, effects: Path) -> None:
    """Given a 60-character prefix, which makes the tools' names longer than 64 characters,
    When the list is loaded,
    Then a ToolLoadError names the tool and says to shorten the prefix.
    """
    entry = stdio_server(effects, prefix="p" * 60, include=["page_oncall"])
    path = server_list(tmp_path / "mcp.json", incidents=entry)

    with pytest.raises(
        ToolLoadError, match=r"tool 'page_oncall' as 'p+page_oncall'.*shorter prefix"
    ):
        open_mcp_servers(path)


def test_urls_in_transport_errors_lose_their_credentials_and_query() -> None:
    """Given a transport error that quotes the server URL with a user, a password and a token,
    When it becomes a step's error (kept in the store and in spans),
    Then only scheme, host, port and path remain.
    """
    quoted = "Client error '401' for url 'https://bot:pw@mcp.example.com:8443/mcp?token=s3cret'"

    assert (
        urls_without_secrets(quoted)
        == "Client error '401' for url 'https://mcp.example.com:8443/mcp'"
    )
