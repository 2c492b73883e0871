"""An MCP server that breaks the protocol is named in one line; nothing prints a traceback.

A server is a remote party: one that lists its tools in a shape MCP does not allow, exits while
listing them, never answers `initialize`, or writes a line that is not JSON-RPC, must leave the
operator one line naming the server and what to fix, within its timeout.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import ValidationError

from plangate.errors import OutcomeUnknown, ToolError, ToolLoadError
from plangate.tools import ToolContext
from plangate.tools.mcp import close_all, open_mcp_servers
from plangate.tools.mcp.http_answers import MAX_ANSWER_BYTES as HTTP_ANSWER_BYTES
from plangate.tools.mcp.tool import MAX_DESCRIPTION_CHARS
from schemas.json_schema import MAX_SCHEMA_CHARS, MAX_SCHEMA_DEPTH, errors_of, validator_for
from schemas.tool_spec import ToolSpec
from tests.support import outer_environment, write_yaml

ROOT = Path(__file__).resolve().parents[1]


def server_list(folder: Path, mode: str, timeout: float = 5) -> Path:
    entry = {
        "command": sys.executable,
        "args": ["-m", "tests.mcp_raw_server", mode],
        "cwd": str(ROOT),
        "timeout_seconds": timeout,
    }
    path = folder / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"raw": entry}}), encoding="utf-8")
    return path


def run(
    folder: Path, mode: str, timeout: float = 5, q: str = "hi"
) -> subprocess.CompletedProcess[str]:
    """`plangate run` of a goal that calls the server's `probe` tool with `q`."""
    playbook = {
        "playbooks": [
            {
                "name": "p",
                "pattern": "probe",
                "steps": [{"id": "p", "tool": "raw.probe", "args": {"q": q}}],
            }
        ]
    }
    env = outer_environment() | {
        "PLANGATE_DATA_DIR": str(folder / "data"),
        "PLANGATE_MCP_SERVERS": str(server_list(folder, mode, timeout)),
        "PLANGATE_PLAYBOOK_FILE": str(write_yaml(folder / "playbook.yaml", playbook)),
        "PLANGATE_PLANNER": "playbook",
    }
    return subprocess.run(
        [sys.executable, "-m", "plangate", "run", "probe it", "--yes", "--timeout", "30"],
        capture_output=True,
        text=True,
        env=env,
        cwd=folder,
        timeout=90,
        check=False,
    )


@pytest.fixture(autouse=True)
def _close_servers() -> object:
    yield
    close_all()


@pytest.mark.parametrize(
    ("mode", "said"),
    [
        ("bad-listing", "could not list its tools: ValidationError: "),
        ("die-listing", "could not list its tools: "),
    ],
)
def test_a_broken_tool_listing_is_one_error_naming_the_server(
    tmp_path: Path, mode: str, said: str
) -> None:
    """Given a server whose listing MCP does not allow, or which exits while listing,
    When its list is loaded,
    Then a ToolLoadError names the server, says it could not list its tools and to fix it.
    """
    with pytest.raises(ToolLoadError) as refused:
        open_mcp_servers(server_list(tmp_path, mode))

    message = str(refused.value)
    assert message.startswith("MCP server 'raw' (from ")
    assert said in message
    assert message.endswith("; fix the server")
    assert "\n" not in message


@pytest.mark.parametrize("mode", ["bad-listing", "hang-init", "refuse-init"])
def test_run_with_a_server_that_breaks_at_start_says_one_line(tmp_path: Path, mode: str) -> None:
    """Given a server that lists tools MCP does not allow, or never answers `initialize`,
    When `plangate run` starts with it,
    Then it ends with exit 2 and one line naming the server, within the server's timeout;
    it printed a traceback (three, for the hang).
    """
    started = time.monotonic()
    result = run(tmp_path, mode, timeout=2)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: MCP server 'raw'")
    assert "\x1b" not in result.stderr  # a server's escape is shown, not obeyed
    assert time.monotonic() - started < 20


def test_a_line_that_is_not_json_rpc_is_logged_in_one_line(tmp_path: Path) -> None:
    """Given a server that answers a call with a line that is not JSON-RPC,
    When a goal calls it,
    Then the step fails at the server's timeout naming it, and the run prints no traceback.
    """
    result = run(tmp_path, "garbage", timeout=2)

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "Failed to parse JSONRPC message from server: ValidationError:" in result.stderr
    assert "probe gave no answer within 2 s" in " ".join(result.stdout.split())


def test_a_listing_no_catalog_should_hold_is_refused_or_cut(tmp_path: Path) -> None:
    """Given servers listing a schema nested 40 deep, 1,001 tools, or a 5 MB description,
    When each list is loaded,
    Then the deep schema and the thousand tools are refused saying what to do ("include"),
    and the description is cut to its bound: each would go into every plan prompt.
    """
    with pytest.raises(ToolLoadError, match=r"tool 'probe' .*nested too deeply.*\"include\""):
        open_mcp_servers(server_list(tmp_path, "deep-schema"))
    with pytest.raises(ToolLoadError, match=r"lists 1001 tools; plangate offers at most 128 .*"):
        open_mcp_servers(server_list(tmp_path, "many-tools"))

    servers = open_mcp_servers(server_list(tmp_path, "long-description"))
    description = servers.tools[0].spec.description
    assert len(description) == MAX_DESCRIPTION_CHARS
    assert description.endswith("…")


def test_a_tool_schema_is_bounded_in_depth_and_size_whatever_offers_it() -> None:
    """Given a Python tool's or a published catalog's schema past the depth or size bound,
    Then the spec is refused saying which bound, before any plan or prompt meets it.
    """
    deep: dict[str, object] = {"type": "string"}
    for _ in range(MAX_SCHEMA_DEPTH):
        deep = {"type": "object", "properties": {"a": deep}}
    wide = {"type": "object", "description": "d" * MAX_SCHEMA_CHARS}

    with pytest.raises(ValidationError, match="nested too deeply"):
        ToolSpec(name="deep", effect="read", args_schema=deep)
    with pytest.raises(ValidationError, match=f"the limit is {MAX_SCHEMA_CHARS}"):
        ToolSpec(name="wide", effect="read", args_schema=wide)


def test_a_listing_that_never_ends_is_cut_off(tmp_path: Path) -> None:
    """Given a server whose every page of tools names a next page,
    When its list is loaded,
    Then it is refused once more than 1,000 tools are listed, saying the listing may never
    end; it used to be read until memory ran out.
    """
    started = time.monotonic()
    with pytest.raises(ToolLoadError, match=r"lists more than 1000 tools \(a listing that may"):
        open_mcp_servers(server_list(tmp_path, "endless-pages", timeout=30))
    assert time.monotonic() - started < 30


def test_a_server_refusing_its_session_is_named_in_one_short_line(tmp_path: Path) -> None:
    """Given a server that answers `initialize` with a megabyte of error holding an escape,
    When its list is loaded,
    Then the error says it refused to start a session (not that it could not be started),
    in one line of at most a few hundred characters; it quoted all of it.
    """
    with pytest.raises(ToolLoadError) as refused:
        open_mcp_servers(server_list(tmp_path, "refuse-init"))

    message = str(refused.value)
    assert "refused to start a session: MCPError: no " in message
    assert "could not be started" not in message
    assert len(message) < 800
    assert "\n" not in message


def test_a_schema_reaching_outside_itself_is_refused_at_listing(tmp_path: Path) -> None:
    """Given a server whose tool's schema refers to file:///etc/passwd,
    When its list is loaded,
    Then the tool is refused saying a schema must be self-contained; the file was read (and
    quoted to the model in plan problems) by the schema library's default resolver.
    """
    with pytest.raises(ToolLoadError, match=r"refers to 'file:///etc/passwd', outside itself"):
        open_mcp_servers(server_list(tmp_path, "file-ref"))


def test_a_catastrophic_pattern_is_matched_in_linear_time(tmp_path: Path) -> None:
    """Given a server whose tool's `q` must match `^(\\w+\\s?)*$`, and a goal whose step passes
    fifty letters and a `!` (a backtracking matcher takes longer than the universe's age),
    When `plangate run` runs it,
    Then the plan is refused at once saying `q` does not match; the process froze, deaf to
    `--timeout` and Ctrl-C.
    """
    started = time.monotonic()
    result = run(tmp_path, "redos", q="a" * 50 + "!")

    assert result.returncode == 1, result.stderr
    assert "does not match" in result.stdout + result.stderr
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("schema", "said"),
    [
        ({"$ref": "https://example.com/s.json"}, "outside itself"),
        ({"$ref": "#"}, "refers to itself without end"),
        ({"allOf": [{"$ref": "#/$defs/a"}], "$defs": {"a": {"$ref": "#"}}}, "without end"),
        ({"$ref": "#/$defs/missing"}, "which it does not define"),
        ({"properties": {"a": {"$ref": "#/properties/b"}}}, "which it does not define"),
        ({"properties": {"a": {"$schema": "http://json-schema.org/draft-07/schema#"}}}, "once"),
        ({"unevaluatedProperties": False, "patternProperties": {"a": {}}}, "use additional"),
        (
            {"properties": {"default": {"unevaluatedProperties": False, "patternProperties": {}}}},
            "use additional",
        ),
        (
            {
                "properties": {"p": {"pattern": "a"}}
                | {f"q{n}": {"pattern": "b"} for n in range(100)}
            },
            "the limit is 100",
        ),
    ],
)
def test_a_schema_plangate_cannot_run_safely_is_refused_saying_why(
    schema: dict[str, object], said: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(said)):
        ToolSpec(name="t", effect="read", args_schema=schema)


def test_a_recursive_schema_that_reads_the_value_is_kept() -> None:
    """A tree of nodes refers to itself through its children: it ends with the value."""
    tree = {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#"}}}}

    ToolSpec(name="t", effect="read", args_schema=tree)


class _HugeAnswers(BaseHTTPRequestHandler):
    """A streamable-HTTP MCP server whose every tool call answers 20 MB of JSON."""

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ident, method = request.get("id"), request.get("method")
        if ident is None:
            self.send_response(202)
            self.end_headers()
            return
        if method == "initialize":
            version = request["params"]["protocolVersion"]
            info = {"name": "huge", "version": "1"}
            result: object = {
                "protocolVersion": version,
                "capabilities": {"tools": {}},
                "serverInfo": info,
            }
        elif method == "tools/list":
            probe = {"name": "probe", "inputSchema": {"type": "object"}}
            result = {"tools": [{**probe, "annotations": {"readOnlyHint": True}}]}
        else:
            result = {"content": [{"type": "text", "text": "R" * 20_000_000}], "isError": False}
        body = json.dumps({"jsonrpc": "2.0", "id": ident, "result": result}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.send_response(405)  # no server-initiated stream
        self.end_headers()

    def do_DELETE(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_an_http_server_answering_more_than_the_bound_fails_the_call_at_once(
    tmp_path: Path,
) -> None:
    """Given a streamable-HTTP server whose tool answers 20 MB of JSON,
    When the tool is called with a 30 s timeout,
    Then the call fails within seconds saying the answer is over the bound; the answer was
    read whole (2.7 GB for a larger one) and the call waited out its timeout.
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HugeAnswers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/mcp"
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"huge": {"url": url, "timeout_seconds": 30}}}))
    try:
        (probe,) = open_mcp_servers(path).tools
        started = time.monotonic()
        with pytest.raises(ToolError, match=f"over {HTTP_ANSWER_BYTES} bytes"):
            probe.invoke({}, ToolContext("g", "p", "s", "k"))
        assert time.monotonic() - started < 20
    finally:
        server.shutdown()
        server.server_close()


def test_patterns_below_a_named_draft_and_a_reference_to_the_top_match_in_linear_time() -> None:
    """Given a draft-07 schema whose `child` refers back to the top, and a catastrophic pattern,
    When a nested value is checked,
    Then it is refused at once: the reference back to the top used to pick jsonschema's own
    draft-07 class by its `$schema`, which matches with `re`, and froze.
    """
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"name": {"pattern": "^(a+)+$"}, "child": {"$ref": "#"}},
    }
    ToolSpec(name="t", effect="read", args_schema=schema)
    started = time.monotonic()

    errors = errors_of(validator_for(schema), {"child": {"child": {"name": "a" * 40 + "b"}}})

    assert [error.message for error in errors] == [f"{'a' * 40 + 'b'!r} does not match '^(a+)+$'"]
    assert time.monotonic() - started < 1


def test_a_pattern_re2_cannot_run_is_kept_but_not_enforced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Given a lookahead (RE2 has no lookaround) in a server's schema,
    Then the tool is kept and its pattern not enforced by plangate, with a warning saying so;
    such tools were refused. pydantic's own for a Decimal is run as its RE2 equivalent, with
    no warning (one, naming no tool, was on every command).
    """
    decimal = "^(?!^[-+.]*$)[+-]?0*\\d*\\.?\\d*$"
    schema = {
        "type": "object",
        "properties": {"d": {"pattern": decimal}, "e": {"pattern": "^(?=e)e+$"}},
    }
    ToolSpec(name="decimal_tool", effect="read", args_schema=schema)

    assert errors_of(validator_for(schema), {"d": "1.5", "e": "ee"}) == []
    assert len(errors_of(validator_for(schema), {"d": "lots", "e": "ee"})) == 1
    assert "'^(?=e)e+$' is not checked by plangate" in caplog.text
    assert decimal not in caplog.text


def test_a_tool_listed_twice_by_one_server_is_refused(tmp_path: Path) -> None:
    """A server listing `wipe` as a write and again as a read: the last one won, and the
    write ran unreviewed under the read's annotations."""
    with pytest.raises(ToolLoadError, match=r"the server lists wipe more than once"):
        open_mcp_servers(server_list(tmp_path, "listed-twice"))


def test_a_token_a_server_quotes_in_its_listing_is_redacted_from_the_catalog(
    tmp_path: Path,
) -> None:
    """Given a server given a token in its environment, quoting it in a tool's description and
    in an argument's, When its tools are loaded, Then the catalog says `[redacted]`: it was
    stored in clear and sent to the model server in every planning prompt."""
    path = server_list(tmp_path, "quotes-its-token")
    servers = json.loads(path.read_text())
    servers["mcpServers"]["raw"]["env"] = {"RAW_TOKEN": "raw-server-token-7f3e9a1c"}
    path.write_text(json.dumps(servers))

    spec = open_mcp_servers(path).tools[0].spec
    close_all()

    shown = spec.description + json.dumps(spec.args_schema)
    assert "raw-server-token-7f3e9a1c" not in shown
    assert "token=[redacted]" in spec.description


def test_a_result_mcp_does_not_allow_fails_the_step_in_one_short_line(tmp_path: Path) -> None:
    """A result of twenty blocks MCP has no type for failed the step with pydantic's report,
    about a hundred lines, twice; the step's error is one line naming the server's fault."""
    result = run(tmp_path, "malformed-result", timeout=5)

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stdout.splitlines() if "tool raw.probe failed" in line]
    assert "ValidationError" in line
    assert len(line) < 600


@pytest.mark.parametrize("mode", ["malformed-write-result", "unstructured-write-result"])
def test_a_write_answered_in_a_form_mcp_does_not_allow_is_of_unknown_outcome(
    tmp_path: Path, mode: str
) -> None:
    """Given a non-idempotent write whose server does the write, then answers a result MCP
    does not allow (`"content": 5`), or no structured content where its output schema
    promised some,
    When it is called,
    Then the call's outcome is unknown (a person settles it), not a failure: marked failed,
    the `goals retry` an operator then ran wrote a second time.
    """
    effects = tmp_path / "effects.txt"
    path = server_list(tmp_path, mode)
    servers = json.loads(path.read_text())
    servers["mcpServers"]["raw"]["env"] = {"RAW_EFFECTS": str(effects)}
    path.write_text(json.dumps(servers))
    (probe,) = open_mcp_servers(path).tools
    assert (probe.spec.effect, probe.spec.idempotent) == ("write", False)

    with pytest.raises(OutcomeUnknown) as raised:
        probe.invoke({"q": "x"}, ToolContext("g", "p", "s", "k"))

    said = str(raised.value)
    assert "answered in a form MCP does not allow" in said, said
    assert "whether it took effect is unknown" in said
    assert len(said) < 600
    assert effects.read_text(encoding="utf-8") == "written\n"
