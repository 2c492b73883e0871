"""plangate: the planner decides, the gate authorises, the executor does.

What all stages share lives here: configuration, the bus, the store, telemetry, tools, the CLI
and the embedded single-process runner.
"""

__version__ = "0.1.0"
