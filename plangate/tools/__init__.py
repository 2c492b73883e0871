"""Tools: typed functions the executor runs, described to the planner by their specs only."""

from plangate.tools.context import ToolContext
from plangate.tools.decorator import Tool, tool
from plangate.tools.registry import ToolRegistry, load_tools

__all__ = ["Tool", "ToolContext", "ToolRegistry", "load_tools", "tool"]
