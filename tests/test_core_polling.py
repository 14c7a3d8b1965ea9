"""The one polling loop: backoff, deadline, and a deadline that progress pushes back."""

from __future__ import annotations

from imagepipe.core.polling import poll


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 4))
        self.now += seconds


def test_backs_off_up_to_the_cap_and_returns_once_finished() -> None:
    clock = Clock()
    values = iter(range(10))

    last = poll(lambda: next(values), lambda v: v == 6, 100, first_delay=0.1, max_delay=0.3,
                factor=2, clock=clock, sleep=clock.sleep)

    assert last == 6
    assert clock.sleeps == [0.1, 0.2, 0.3, 0.3, 0.3, 0.3]


def test_gives_up_at_the_deadline_with_the_last_value() -> None:
    clock = Clock()
    reads = []

    last = poll(lambda: reads.append(clock.now) or "pending", lambda v: v != "pending", 1.0,
                first_delay=0.4, max_delay=0.4, clock=clock, sleep=clock.sleep)

    assert last == "pending"
    # Never sleeps past the deadline: 0.4 + 0.4 + 0.2.
    assert clock.sleeps == [0.4, 0.4, 0.2]
    assert reads == [0.0, 0.4, 0.8, 1.0]


def test_progress_pushes_the_deadline_back() -> None:
    clock = Clock()
    progress = iter([True, True, True, False, False, False, False])

    poll(lambda: next(progress), lambda v: False, 1.5, delay_for=lambda v: 1.0,
         progressed=lambda v: v, clock=clock, sleep=clock.sleep)

    # Progress at 0, 1 and 2 s; then 1.5 s without any ends the wait at 3.5 s.
    assert clock.now == 3.5
