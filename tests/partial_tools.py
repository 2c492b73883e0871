"""The seed example's reads without its write: an executor started with other tools.

Loaded by one executor of a fleet (`PLANGATE_TOOLS=tests.partial_tools`) beside one with
every demo tool, as during a rollout or with modules split by team.
"""

from plangate.demo.tools import sla_threshold, ticket_count

__all__ = ["sla_threshold", "ticket_count"]
