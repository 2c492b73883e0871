"""When a lasting trouble's log lines are due: its start, then at most every so often, its end."""

from __future__ import annotations

from plangate.lasting import Lasting


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_a_trouble_noted_every_5_s_is_said_as_it_begins_then_once_a_minute_then_ended() -> None:
    """Given a trouble noted every 5 s for 150 s (a sweep finding the broker lost),
    When it ends,
    Then it was to be said at its start and at 60 s and 120 s, each time with how long it had
    lasted, and its end says it lasted 150 s; a trouble after that begins anew.
    """
    clock = Clock()
    outage = Lasting(60.0, clock)
    said: list[tuple[str, float]] = []

    for _ in range(31):  # at 0, 5, ... 150 s
        if (kind := outage.note()) is not None:
            said.append((kind, outage.seconds()))
        clock.now += 5
    clock.now -= 5

    assert said == [("began", 0.0), ("goes on", 60.0), ("goes on", 120.0)]
    assert outage.end() == 150.0
    assert outage.end() is None
    assert not outage.active
    assert outage.note() == "began"
