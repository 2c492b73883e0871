"""`from_langchain`: register a `langchain_core` tool (a `BaseTool`, or an `@tool` function)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from plangate.errors import ToolLoadError
from plangate.tools.decorator import Preview, Tool
from schemas.tool_spec import Effect


def from_langchain(
    lc_tool: Any,
    *,
    effect: Effect = "write",
    idempotent: bool = False,
    tags: Iterable[str] = (),
    preview: Preview | None = None,
    trusted: bool = False,
) -> Tool[..., Any]:
    """Return a plangate tool that calls `lc_tool.invoke(args)`.

    Name, description and argument schema come from the LangChain tool. Its effect cannot be
    read off it, so it is declared here; undeclared, it is a `write`, which the policy holds.
    `preview` says what a call would do, for a held plan's dry run.
    """
    try:
        from langchain_core.tools import BaseTool
    except ImportError as exc:
        raise ToolLoadError(
            f"LangChain tools need langchain-core ({exc}); pip install 'plangate[langchain]'"
        ) from exc
    if not isinstance(lc_tool, BaseTool):
        raise ToolLoadError(
            f"{lc_tool!r} is not a LangChain tool; pass a BaseTool or an @tool function "
            "from langchain_core.tools"
        )
    module = type(lc_tool).__module__
    func = getattr(lc_tool, "func", None)
    if func is not None:
        module = getattr(func, "__module__", module)

    asynchronous = func is None and getattr(lc_tool, "coroutine", None) is not None

    def call(args: BaseModel) -> Any:
        given = args.model_dump(by_alias=True, exclude_unset=True)
        if asynchronous:
            # An `async def` LangChain tool has no sync call ("StructuredTool does not support
            # sync invocation" failed every goal at run time): each call runs in a thread of
            # its own, where an event loop of its own is free to run it.
            return asyncio.run(lc_tool.ainvoke(given))
        return lc_tool.invoke(given)

    return Tool.from_model_callable(
        call,
        args_model=_args_model(lc_tool),
        name=lc_tool.name,
        description=lc_tool.description,
        effect=effect,
        module=module,
        idempotent=idempotent,
        tags=tags,
        preview=preview,
        trusted=trusted,
    )


def _args_model(lc_tool: Any) -> type[BaseModel]:
    # `tool_call_schema` leaves out injected arguments (a callback, a tool-call id): the model
    # never supplies those, so neither does a plan.
    for candidate in (getattr(lc_tool, "tool_call_schema", None), lc_tool.get_input_schema()):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    raise ToolLoadError(
        f"LangChain tool {lc_tool.name!r}: its args_schema is not a pydantic v2 model; "
        "give it one (args_schema=MyArgs) to register it with plangate"
    )
