"""Waiting for something to change by asking again: the one polling loop of the project.

The synchronous API waits for one result in DynamoDB, `imagepipe classify` for results over
HTTP, and `imagepipe upload --wait` for thousands of them; all three back off the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(
    read: Callable[[], T],
    finished: Callable[[T], bool],
    timeout: float,
    *,
    first_delay: float = 0.05,
    max_delay: float = 0.5,
    factor: float = 1.5,
    delay_for: Callable[[T], float] | None = None,
    progressed: Callable[[T], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `read` until `finished` says so, or `timeout` seconds pass; the last value read.

    Between reads it sleeps `first_delay`, growing by `factor` up to `max_delay`, unless
    `delay_for` names the delay after each value. Where `progressed` is given, the timeout
    counts from the last read that made progress rather than from the start.
    """
    deadline = clock() + timeout
    delay = first_delay
    value = read()
    while not finished(value):
        now = clock()
        if progressed is not None and progressed(value):
            deadline = now + timeout
        remaining = deadline - now
        if remaining <= 0:
            break
        sleep(min(delay_for(value) if delay_for is not None else delay, remaining))
        delay = min(delay * factor, max_delay)
        value = read()
    return value
