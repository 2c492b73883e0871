"""An MCP server's tool as a plangate tool: its policy from the server's hints, spec and calls."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from plangate.errors import OutcomeUnknown, ToolError, ToolLoadError, describe
from plangate.redaction import quoted, redact, redact_json
from plangate.tools.context import ToolContext
from plangate.tools.decorator import Tool
from plangate.tools.mcp.connection import Connection, leaves, one_line, urls_without_secrets
from plangate.tools.mcp.servers_file import ToolOverride
from schemas.json_schema import errors_of, validator_for
from schemas.tool_spec import Effect, ToolSpec

if TYPE_CHECKING:
    from mcp.types import Tool as RemoteTool
    from mcp.types import ToolAnnotations

META_PREFIX = "plangate/"
"""Prefix of the `_meta` keys a call carries: idempotency_key, goal_id, plan_id, step_id."""
MAX_TOOLS_PER_SERVER = 128
"""The most tools one server offers (the OpenAI API's limit on tools in one request)."""
MAX_DESCRIPTION_CHARS = 2000
"""The most of a tool's description kept; the rest is cut with `…`."""


def derive_policy(annotations: ToolAnnotations | None) -> tuple[Effect, bool, tuple[str, ...]]:
    """Return (effect, idempotent, tags) as the MCP spec reads a tool's hints, absent ones too."""
    read_only = bool(annotations and annotations.read_only_hint)
    destructive = not read_only
    idempotent = read_only  # reading again changes nothing more
    if annotations is not None:
        # An explicit destructiveHint counts even on a read-only tool: the safer reading.
        if annotations.destructive_hint is not None:
            destructive = annotations.destructive_hint
        if annotations.idempotent_hint is not None:
            idempotent = annotations.idempotent_hint
    return ("read" if read_only else "write"), idempotent, ("destructive",) if destructive else ()


class McpTool(Tool[..., Any]):
    """One tool of an MCP server: its arguments checked against its input schema, then sent."""

    def __init__(self, spec: ToolSpec, remote_name: str, connection: Connection) -> None:
        # Not Tool.__init__: that reads a Python signature, and this tool is a JSON schema.
        self.spec = spec
        self.module = connection.where
        self._remote = remote_name
        self._connection = connection
        self._preview = None
        self._func = self._call_outside_a_plan
        self._validator = validator_for(spec.args_schema)  # the spec has checked it

    def invoke(self, args: Mapping[str, Any], context: ToolContext) -> Any:
        """Check `args` against the input schema, call the tool on its server, return its output."""
        problems = errors_of(self._validator, dict(args))
        if problems:
            described = "; ".join(
                f"{'.'.join(str(p) for p in e.path) or 'arguments'}: {e.message}" for e in problems
            )
            raise ToolError(f"tool {self.name}: bad arguments: {described}")
        meta = {
            f"{META_PREFIX}idempotency_key": context.idempotency_key,
            f"{META_PREFIX}goal_id": context.goal_id,
            f"{META_PREFIX}plan_id": context.plan_id,
            f"{META_PREFIX}step_id": context.step_id,
        }
        return self._send(dict(args), meta)

    def _call_outside_a_plan(self, **args: Any) -> Any:
        return self._send(args, {})

    def _send(self, args: dict[str, Any], meta: dict[str, Any]) -> Any:
        repeatable = self.spec.effect == "read" or self.spec.idempotent
        try:
            result = self._connection.call(
                self._remote, args, meta, repeatable=repeatable, writes=self.spec.effect == "write"
            )
        except ToolError:
            raise
        except Exception as exc:
            # One line each (a result MCP does not allow was pydantic's hundred), and the URL
            # a transport error quotes without its query: step records keep the reason.
            reason = "; ".join(dict.fromkeys(one_line(e) for e in leaves(exc)))
            reason = redact(urls_without_secrets(reason))
            if not repeatable and _answered_unreadably(exc):
                # The server acted, or not, and then answered in a shape MCP does not allow:
                # marked failed, the retry an operator then ran did the write a second time.
                raise OutcomeUnknown(
                    f"tool {self.name}: its server answered in a form MCP does not allow "
                    f"({reason}); whether it took effect is unknown, so it is not sent again: "
                    "check the server"
                ) from exc
            raise ToolError(f"tool {self.name} failed: {reason}") from exc
        texts = [_describe_block(block) for block in result.content]
        if result.is_error:
            # The server's own words: it may echo the token it was sent.
            reason = redact(" ".join(texts)) or "the server gave no reason"
            raise ToolError(f"tool {self.name} failed: {reason}")
        if result.structured_content is not None:
            return result.structured_content
        if not texts:
            return None
        return texts[0] if len(texts) == 1 else texts


def _describe_block(block: Any) -> str:
    if block.type == "text":
        return str(block.text)
    if block.type in ("image", "audio"):
        return f"[{block.type} {block.mime_type}, {len(block.data)} base64 characters]"
    if block.type == "resource_link":
        return f"[resource link {block.uri}]"
    resource = block.resource
    text = getattr(resource, "text", None)
    return str(text) if text is not None else f"[resource {resource.uri}]"


def tools_of(connection: Connection) -> list[McpTool]:
    """Return the plangate tools of `connection`'s server, chosen and overridden as configured."""
    config = connection.config
    offered = connection.list_tools()
    remote = {tool.name: tool for tool in offered}
    if len(remote) < len(offered):
        # The last of two under one name won: a write listed again as a harmless read ran
        # unreviewed under the read's annotations.
        counts = Counter(tool.name for tool in offered)
        twice = sorted(name for name, count in counts.items() if count > 1)
        raise ToolLoadError(
            f"{connection.where}: the server lists {quoted(', '.join(twice), 200)} more than "
            "once (which of them would plangate believe?); fix the server"
        )
    for key, names in (("include", config.include or []), ("tools", list(config.tools))):
        if unknown := sorted(set(names) - set(remote)):
            listed = quoted(", ".join(sorted(remote)) or "nothing", 400)
            raise ToolLoadError(
                f'{connection.where}: "{key}" names {quoted(", ".join(unknown), 200)}, which the '
                f"server does not list; it lists: {listed}"
            )
    prefix = f"{connection.name}." if config.prefix is None else config.prefix
    chosen = config.include if config.include is not None else sorted(remote)
    if len(chosen) > MAX_TOOLS_PER_SERVER:
        raise ToolLoadError(
            f"{connection.where} lists {len(chosen)} tools; plangate offers at most "
            f"{MAX_TOOLS_PER_SERVER} of one server (each is in every plan prompt): name the ones "
            'to offer with "include"'
        )
    return [
        McpTool(_spec(remote[name], prefix, config.tools.get(name), connection), name, connection)
        for name in chosen
    ]


def _cut(description: str) -> str:
    # The server's text goes into every plan prompt: enough to say what the tool does.
    if len(description) <= MAX_DESCRIPTION_CHARS:
        return description
    return description[: MAX_DESCRIPTION_CHARS - 1] + "…"


def _spec(
    remote: RemoteTool, prefix: str, override: ToolOverride | None, connection: Connection
) -> ToolSpec:
    effect, idempotent, tags = derive_policy(remote.annotations)
    if override is not None:
        effect = override.effect or effect
        idempotent = idempotent if override.idempotent is None else override.idempotent
        tags = tags if override.tags is None else override.tags
    try:
        return ToolSpec(
            name=prefix + remote.name,
            # Redacted: the catalog is stored and sent to the model server in every prompt, and
            # a server may quote the token it was given (its environment, its headers).
            description=_cut(redact(remote.description or remote.title or "")),
            args_schema=_redacted(remote.input_schema),
            output_schema=_redacted(remote.output_schema),
            effect=effect,
            idempotent=idempotent,
            tags=tags,
        )
    except ValidationError as exc:
        fix = 'leave the tool out with "include"'
        if any(err["loc"] == ("name",) for err in exc.errors()):
            fix = f"a name has at most 64 letters, digits, _ . or -: set a shorter prefix, or {fix}"
        named = f"tool {quoted(remote.name, 100)!r} as {quoted(prefix + remote.name, 100)!r}"
        raise ToolLoadError(
            f"{connection.where}: {named}: {describe(exc, ToolSpec)}; {fix}"
        ) from exc


def _answered_unreadably(exc: BaseException) -> bool:
    """Say whether `exc` may come after the server acted: anything but its own error answer.

    A JSON-RPC error is the server saying the call failed, and a server that could not be
    started was never asked; anything else (a result in a shape MCP does not allow, content
    that does not match the tool's output schema, a claim the SDK did not expect) is raised
    by the client once the server answered, whatever the server did.
    """
    from mcp import MCPError

    return not all(isinstance(e, MCPError | ToolLoadError) for e in leaves(exc))


def _redacted(schema: Any) -> Any:
    """Return a schema with every known secret in its texts redacted (None stays None)."""
    return None if schema is None else redact_json(schema)
