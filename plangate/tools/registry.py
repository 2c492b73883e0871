"""The tools an executor offers, by name, loaded from the modules `PLANGATE_TOOLS` lists."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from plangate.errors import ToolError, ToolLoadError
from plangate.tools.decorator import Tool
from schemas.tool_spec import ToolSpec


class ToolRegistry:
    """Tools by name; the catalog of their specs is what the planner and the policy see."""

    def __init__(self, tools: Iterable[Tool[..., Any]] = ()) -> None:
        self._tools: dict[str, Tool[..., Any]] = {}
        self._running = 0  # pipelines running with these tools (`hold`)
        for each in tools:
            self.register(each)

    def register(self, tool: Tool[..., Any]) -> None:
        """Add `tool`; ToolLoadError for another tool under the same name, or while in use.

        A plain function is refused too (it failed with AttributeError): decorate it.
        """
        if not isinstance(tool, Tool):
            name = getattr(tool, "__name__", None) or repr(tool)[:80]
            raise ToolLoadError(
                f"{name} is not a tool: decorate it with @tool(effect=...) (a LangChain tool: "
                "from_langchain(...))"
            )
        if self._running:
            # Taken silently, it was in no catalog: the planner never used it, and a plan
            # naming it failed "not in the catalog".
            raise ToolLoadError(
                f"cannot register {tool.name!r} while a Pipeline runs with these tools: it "
                "published their catalog as it started; register every tool before starting it"
            )
        known = self._tools.get(tool.name)
        # The same object seen twice is one tool: a module may re-export another module's tools.
        if known is not None and known is not tool:
            raise ToolLoadError(
                f"two tools are named {tool.name!r}: one in {known.module}, one in {tool.module}; "
                "rename one with @tool(name=...) (an MCP server's tools: give it a `prefix`), or "
                "load only one of them"
            )
        self._tools[tool.name] = tool

    def hold(self) -> None:
        """Count a pipeline that starts with these tools: until it `release`s, none is added."""
        self._running += 1

    def release(self) -> None:
        """Count a pipeline that stopped: once none runs, tools may be registered again."""
        self._running = max(0, self._running - 1)

    def get(self, name: str) -> Tool[..., Any]:
        """Return the tool called `name`."""
        try:
            return self._tools[name]
        except KeyError:
            known = ", ".join(sorted(self._tools)) or "none"
            raise ToolError(
                f"unknown tool {name!r}; known tools: {known}; check PLANGATE_TOOLS or --tools"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool[..., Any]]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    def catalog(self) -> dict[str, ToolSpec]:
        """Return every tool's spec by name."""
        return {name: each.spec for name, each in self._tools.items()}

    def load_module(self, dotted_name: str) -> list[Tool[..., Any]]:
        """Import `dotted_name` and register every tool among its globals; return those tools."""
        if dotted_name.endswith(".py") or "/" in dotted_name:  # a file named, not a module
            raise ToolLoadError(
                f"tool module {dotted_name!r} is a file's name: {_as_module(dotted_name)}"
            )
        try:
            module = importlib.import_module(dotted_name)
        except ToolLoadError:
            raise
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if missing and not f"{dotted_name}.".startswith(f"{missing}."):
                # Found, but what it imports is not: "check PLANGATE_TOOLS" sent people
                # looking at a name that was right.
                raise ToolLoadError(
                    f"tool module {dotted_name!r} imports {missing!r}, which is not installed "
                    f"here: install it where the tools run (pip install ...), or check the "
                    f"module's imports"
                ) from exc
            hint = _where_to_look(dotted_name)
            raise ToolLoadError(
                f"could not import tool module {dotted_name!r}: {exc}; {hint}"
            ) from exc
        except ImportError as exc:
            if exc.name and not f"{dotted_name}.".startswith(f"{exc.name}."):
                # `from json import not_a_name`: what it imports is installed, but not as it
                # expects (most often, another version).
                raise ToolLoadError(
                    f"tool module {dotted_name!r} could not import what it needs from "
                    f"{exc.name!r}: {exc}; check the module's imports, and the version of "
                    f"{exc.name.split('.')[0]!r} installed where the tools run"
                ) from exc
            raise ToolLoadError(
                f"could not import tool module {dotted_name!r}: {exc}; "
                "check PLANGATE_TOOLS or --tools"
            ) from exc
        except Exception as exc:
            raise ToolLoadError(
                f"tool module {dotted_name!r} failed while importing: {type(exc).__name__}: {exc}"
            ) from exc
        found = [value for value in vars(module).values() if isinstance(value, Tool)]
        if not found:
            raise ToolLoadError(
                f"tool module {dotted_name!r} defines no tools; "
                "decorate its functions with @tool(effect='read') or @tool(effect='write')"
            )
        for each in found:
            self.register(each)
        return found


def load_tools(module_names: Iterable[str]) -> ToolRegistry:
    """Return a registry holding the tools of every module named."""
    registry = ToolRegistry()
    for name in module_names:
        registry.load_module(name)
    return registry


def _where_to_look(dotted_name: str) -> str:
    """Say what to check for a tool module not found: its name, or where Python looks.

    `--tools shop_tools` beside ./shop_tools.py was "No module named 'shop_tools'": the
    `plangate` command does not look in the current folder, as `python` does.
    """
    parts = dotted_name.split(".")
    candidates = (Path(*parts).with_suffix(".py"), Path(*parts) / "__init__.py")
    found = next((path for path in candidates if all(parts) and path.is_file()), None)
    if found is not None and not {"", ".", os.getcwd()} & set(sys.path):
        where = found.parent if found.name == "__init__.py" else found
        return (
            f"./{where} is here, but plangate does not look in the current folder: run it "
            "with PYTHONPATH=. (or install the module)"
        )
    return "check PLANGATE_TOOLS or --tools"


def _as_module(path: str) -> str:
    """Say how to name a tool module given as its file: by its name, its folder on the path."""
    file = Path(path)
    folder = str(file.parent) if str(file.parent) != "." else "."
    return (
        f"give the module's name ({file.stem!r}) in PLANGATE_TOOLS or --tools, and put the "
        f"folder it is in on Python's path (PYTHONPATH={folder})"
    )
