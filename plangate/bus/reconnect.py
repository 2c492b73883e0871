"""Running a consume loop again after it fails: a broker outage backs off; a recovery resets it.

An outage is said as it begins, then at most once a minute while it lasts (`Lasting`); the
consumer says when it consumes again.

Only a connection error is an outage. A malformed message never gets here (each transport turns
it into a dead letter); a broker refusing plangate's settings, or a port answering what no
broker does, is said as an outage is, with the setting to fix; anything else that ends the
loop is a fault of ours, logged with its traceback, and the loop restarts after the same
backoff so that a fault that repeats does not spin. A channel RabbitMQ closed because a
handler outlasted its `consumer_timeout` is neither: it is said with what to set.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from plangate.errors import BrokerUnreadable
from plangate.lasting import Lasting

log = logging.getLogger(__name__)

FIRST_DELAY = 0.5
MAX_DELAY = 30.0
# A consume loop tries the broker at least this often: at 30 s, a worker took up its work
# 16 s after Redis was back from a minute's outage.
BROKER_MAX_DELAY = 10.0
# A lost broker is said when the loop loses it, then at most this often while it lasts.
SAY_LOST_EVERY = 60.0


class Backoff:
    """Delays that double from `first` up to `most`, and start over after `reset`."""

    def __init__(self, first: float = FIRST_DELAY, most: float = MAX_DELAY) -> None:
        self._first = first
        self._most = most
        self._next = first

    def next(self) -> float:
        """Return the delay before the next attempt, and double the one after it."""
        delay = self._next
        self._next = min(self._most, delay * 2)
        return delay

    def reset(self) -> None:
        """Start from the first delay again (the broker came back)."""
        self._next = self._first


def refusal_hint(exc: BaseException) -> str | None:
    """Return what to fix if the broker refused plangate's settings, else None.

    Refused: a Redis database it lacks (`/99`, said only once connected); on AMQP, a login or
    a permission (403), or an exchange or queue of the namespace declared before with other
    arguments (406, e.g. as a quorum queue). Nothing but a change of the settings helps, and
    to whoever connects the broker is as unusable as a stopped one: said in one line, with
    what to fix, not as a fault of plangate's.
    """
    if "DB index is out of range" in str(exc):
        return "check PLANGATE_BROKER_URL: the server has no database of that number"
    if type(exc).__module__.startswith("redis") and _redis_refusal(exc):
        # A wrong password was said as "cannot reach the broker", as if it were down.
        return (
            "check the user and password in PLANGATE_BROKER_URL (redis://USER:PASSWORD@HOST:"
            "PORT/DB) against the server's requirepass or ACL; an ACL user needs the list, "
            "hash, set, sorted-set and pub/sub commands on every key (kombu's)"
        )
    code = getattr(exc, "code", None) if type(exc).__module__.startswith("amqp") else None
    if code == 403:  # ACCESS_REFUSED: the login, or a permission
        return (
            "check the user and password in PLANGATE_BROKER_URL, and that the user may "
            "configure, write and read the namespace's exchange and queues (every plangate "
            "process declares them), and, for `plangate dlq`, write to amq.default (deploy.md)"
        )
    if code == 406 and "inequivalent arg" in str(exc):  # declared before, otherwise
        return (
            "an exchange or queue of the namespace was declared with other arguments (plangate "
            "declares a durable topic exchange and classic durable queues with none): delete "
            "them, or set another PLANGATE_NAMESPACE"
        )
    if code == 530:  # NOT_ALLOWED: a virtual host the user may not open
        return "check the virtual host in PLANGATE_BROKER_URL and the user's access to it"
    return None


def out_of_reach(where: str, exc: BaseException) -> str:
    """Say what an outage at `where` is, and what to check: not answering, or not reached.

    A broker that takes connections but answers nothing (a timeout) is running: "check that it
    is running" sent its operator to look at a process that was up.
    """
    if timed_out(exc):
        return (
            f"the broker at {where} does not answer ({exc}): it is stuck or overloaded, or the "
            "network drops its packets; check the broker's host and the network to it"
        )
    return (
        f"cannot reach the broker at {where} ({exc}); check PLANGATE_BROKER_URL and that the "
        "broker is running"
    )


def timed_out(exc: BaseException) -> bool:
    """Return True if the error, or one it was raised from, is a wait for an answer that ran out."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain's depth, bounded: a cycle of causes must not spin
        if seen is None:
            return False
        if isinstance(seen, TimeoutError) or type(seen).__name__ == "TimeoutError":  # redis'
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def unreadable(exc: BaseException) -> bool:
    """Return True if the broker's port answered what the client cannot parse (junk).

    A server that is no broker (another service on the port, a hostile one) or not the kind
    the URL names: the client's protocol error is no fault of plangate's, and no outage.
    """
    return type(exc).__module__.startswith("redis") and type(exc).__name__ == "InvalidResponse"


def _redis_refusal(exc: BaseException) -> bool:
    """Return True if Redis refused the login or a command of the user's (ACL)."""
    refusals = ("AuthenticationError", "AuthenticationWrongNumberOfArgsError", "NoPermissionError")
    return type(exc).__name__ in refusals or str(exc).startswith(("NOAUTH", "WRONGPASS", "NOPERM"))


def held_too_long(exc: BaseException) -> bool:
    """Return True if RabbitMQ closed the channel because a message went unacked too long.

    RabbitMQ closes a consumer's channel (406 PRECONDITION_FAILED) once a delivery waits for
    its ack longer than its `consumer_timeout`, 30 minutes by default: a handler ran that long.
    """
    code = getattr(exc, "code", None) if type(exc).__module__.startswith("amqp") else None
    return code == 406 and "delivery acknowledgement" in str(exc)


def run_reconnecting(
    run: Callable[[threading.Event], None],
    stop: threading.Event,
    connected: threading.Event,
    outages: tuple[type[BaseException], ...],
    backoff: Backoff,
    name: str,
) -> None:
    """Call `run(stop)` until `stop` is set, waiting out `backoff` between failed runs.

    `connected` is set by `run` once it consumes: a run that got that far recovered from any
    outage before it, so the next failure waits the first delay again, not the last one.
    """
    outage = Lasting(SAY_LOST_EVERY)
    reached = False  # "lost the broker" of one never reached misled: it was never there
    while not stop.is_set():
        connected.clear()
        try:
            run(stop)
        except Exception as exc:
            if connected.is_set():
                reached = True
                backoff.reset()
                outage.end()
            connected.clear()
            delay = backoff.next()
            _say_failure(exc, outages, outage, name, delay, reached=reached)
            stop.wait(delay)


def _say_failure(
    exc: Exception,
    outages: tuple[type[BaseException], ...],
    outage: Lasting,
    name: str,
    delay: float,
    *,
    reached: bool = True,
) -> None:
    # A refusal first: a virtual host refused is a connection error too, and said as a lost
    # broker it gave no hint of what to fix.
    if (problem := _settings_problem(exc)) is not None:
        # As an outage is: when it begins, then at most once a minute (it was every try, six
        # lines in 16 s and one each 10 s for good, for one wrong password; a port answering
        # junk, a traceback of 95 lines at every try).
        if (said := outage.note()) is not None:
            what, hint = problem
            lasted = "" if said == "began" else f" still, after {outage.seconds():.0f} s"
            log.error(
                "%s: %s%s (%s); %s; trying again in %g s", name, what, lasted, exc, hint, delay
            )
    elif held_too_long(exc):  # said as a fault of ours, with a traceback: nothing said why
        log.warning(
            "%s: RabbitMQ closed its channel: a handler held a message unacknowledged past "
            "the broker's consumer_timeout (%s); its messages went back to the queue, and it "
            "consumes again in %g s, its handlers still running. Set RabbitMQ's "
            "consumer_timeout above PLANGATE_HANDLER_TIMEOUT_SECONDS and the longest tool "
            "timeout, or lower those (docs/how-to/deploy.md)",
            name,
            getattr(exc, "reply_text", exc),  # py-amqp's str() starts "(0, 0): "
            delay,
        )
    elif isinstance(exc, outages):
        _say_lost(outage, name, exc, delay, reached=reached)
    else:
        log.error("%s failed (not a broker outage); restarting in %g s", name, delay, exc_info=exc)


def _settings_problem(exc: BaseException) -> tuple[str, str] | None:
    """Return what is wrong and what to fix if the broker's settings are, else None."""
    if (hint := refusal_hint(exc)) is not None:
        return "the broker refuses its settings", hint
    if unreadable(exc):
        return BrokerUnreadable.reason, BrokerUnreadable.fix
    return None


def _say_lost(
    outage: Lasting, name: str, exc: Exception, delay: float, *, reached: bool = True
) -> None:
    said = outage.note()
    if said == "began" and not reached:
        log.warning("%s cannot reach the broker (%s); trying again in %g s", name, exc, delay)
    elif said == "began":
        log.warning("%s lost the broker (%s); reconnecting in %g s", name, exc, delay)
    elif said == "goes on":
        log.warning(
            "%s still cannot reach the broker after %.0f s (%s); reconnecting in %g s",
            name,
            outage.seconds(),
            exc,
            delay,
        )
