"""`step.finished` is progress for observers: a broker that does not take it stops nothing."""

from __future__ import annotations

import logging

import pytest

from executor_worker.engine import StepOutcome
from executor_worker.handler import ExecutorHandler
from plangate.bus import Envelope
from plangate.errors import BrokerUnavailable
from plangate.signing import TrustedKeys
from plangate.store import Store
from plangate.tools import load_tools


def test_a_step_the_broker_would_not_take_is_said_in_one_line_without_a_traceback(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """During a Redis outage each step's announcement logged a 15 KB traceback ending in
    BrokerUnavailable, a warning that read as if something needed doing. One line says what
    happened and that nothing does."""

    def unreachable(envelope: Envelope) -> None:
        raise BrokerUnavailable("the broker does not answer (Connection refused)")

    tools = load_tools(["plangate.demo.tools"])
    handler = ExecutorHandler(store, tools, TrustedKeys(), notify=unreachable)
    outcome = StepOutcome("count", "ticket_count", "succeeded", output={"count": 3})
    with caplog.at_level(logging.WARNING, logger="executor_worker.handler"):
        handler._step_finished("g1", "p1", outcome)

    [record] = caplog.records
    assert record.exc_info is None
    said = record.getMessage()
    assert said.startswith("could not announce step count to observers (the broker does not")
    assert "nothing to do" in said
