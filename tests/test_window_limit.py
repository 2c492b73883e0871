"""The per-address limits of `serve` (failed logins and tokens, goals a minute) stay bounded."""

from __future__ import annotations

from plangate.server.ratelimit import MAX_ADDRESSES, WindowLimit


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_addresses_gone_quiet_are_forgotten_once_many_are_known() -> None:
    """Given a limit that counted one failure from each of 2x MAX_ADDRESSES addresses,
    When its window has passed and one more address fails,
    Then only that one is still held: the quiet ones were kept for good (20,001 held an hour
    later, 22 MB of a serve's memory), and each count scanned them all.
    """
    clock = Clock()
    limit = WindowLimit(limit=10, window=300.0, clock=clock)
    for n in range(2 * MAX_ADDRESSES):
        limit.count(f"10.0.{n // 256}.{n % 256}")

    clock.now += 301
    limit.count("192.0.2.1")

    assert len(limit._failures) == 1
    assert limit.retry_after("192.0.2.1") is None


def test_no_more_than_ten_times_the_most_addresses_are_held_while_all_still_count() -> None:
    """Given failures from 12x MAX_ADDRESSES addresses within one window (an IPv6 /64 holds
    that many),
    When one more is counted after a tenth of the window,
    Then at most 10x MAX_ADDRESSES are held (those known the longest are forgotten), and the
    newest address is still limited.
    """
    clock = Clock()
    limit = WindowLimit(limit=1, window=3.0, clock=clock)
    for n in range(12 * MAX_ADDRESSES):
        limit.count(f"2001:db8::{n:x}")
        clock.now += 0.000001  # every one within the window

    clock.now += 0.31  # the next sweep is due
    limit.count("2001:db8::newest")

    assert len(limit._failures) <= 10 * MAX_ADDRESSES
    assert limit.retry_after("2001:db8::newest") is not None
