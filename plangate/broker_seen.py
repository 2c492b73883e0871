"""What a worker's sweep tells of its broker: answered, lost, refused; said once, then rarely."""

from __future__ import annotations

import logging

from plangate import metrics
from plangate.errors import BrokerRefused, BrokerUnavailable, BrokerUnreadable
from plangate.lasting import Lasting

log = logging.getLogger("plangate.worker")  # the worker's words, under the worker's name


# A lost broker is said when the sweeps find it, then at most this often while it lasts: said
# at every sweep, it was 8 lines a minute a worker.
SAY_LOST_BROKER_EVERY = 60.0


class BrokerSeen:
    """What the sweep's reads tell of the broker: a hang the consume loop never notices.

    A broker that stops answering (stopped, its packets dropped) leaves the loop waiting on a
    read that never fails: the sweep's reads time out, and say it, in the gauge and the log.
    """

    def __init__(self, stage: str) -> None:
        self._stage = stage
        self._outage = Lasting(SAY_LOST_BROKER_EVERY)
        self._answered = False  # ever: "lost" and "again" of a broker never reached misled

    def answered(self, *, consuming: bool) -> None:
        """Note that the broker answered this sweep's reads (and say so, after a loss)."""
        if consuming:
            metrics.broker_up(self._stage, True)
        if (waited := self._outage.end()) is not None:
            again = " again" if self._answered else ""
            said = "the broker answers the %s's reads%s, after %.0f s"
            log.info(said, self._stage, again, waited)
        self._answered = True

    def lost(
        self,
        exc: BrokerUnavailable,
        interval: float,
        *,
        reached: bool = False,
        since: float | None = None,
    ) -> None:
        """Note that the sweep's reads failed (`reached`: the loop had the broker); say so.

        `since` (time.monotonic()): when the reads that failed began (None: now). Counted from
        when their timeouts ran out, an outage of 63 s was said to have lasted 32 s.
        """
        metrics.broker_up(self._stage, False)
        self._answered = self._answered or reached
        said = self._outage.note(since)
        if said == "began":
            log.warning(
                "sweep skipped: the %s %s the broker (%s); trying again every %g s",
                self._stage,
                self._how(exc),
                exc,
                interval,
            )
        elif said == "goes on":
            log.warning(
                "sweeps skipped for %.0f s: the %s still cannot use the broker (%s)",
                self._outage.seconds(),
                self._stage,
                exc,
            )

    def _how(self, exc: BrokerUnavailable) -> str:
        if isinstance(exc, BrokerRefused):
            return "is refused by"
        if isinstance(exc, BrokerUnreadable):
            return "cannot read"
        return "lost" if self._answered else "cannot reach"
