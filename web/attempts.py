"""Failed sign-ins per client address: too many in a while, and that address must wait."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable


class FailedSignIns:
    """At most `limit` failed sign-ins per address in any `window` seconds.

    Only failures count, and a success does not wipe them: otherwise someone with one account
    could sign into it between guesses at other people's passwords. Each gunicorn worker keeps
    its own counts; memory is bounded by forgetting the addresses seen least recently.
    """

    def __init__(self, limit: int = 10, window: float = 300.0, max_addresses: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def wait(self, address: str) -> float:
        """Seconds until this address may try again; 0 when it may now."""
        now = self._clock()
        with self._lock:
            failures = self._recent(address, now)
            if len(failures) < self.limit:
                return 0.0
            # The oldest failure kept has to age out of the window before one more try.
            return failures[0] + self.window - now

    def failed(self, address: str) -> None:
        """Count one failed sign-in from this address."""
        now = self._clock()
        with self._lock:
            failures = self._recent(address, now)
            failures.append(now)
            self._failures[address] = failures
            self._failures.move_to_end(address)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)

    def _recent(self, address: str, now: float) -> deque[float]:
        # Only the last `limit` failures matter, which bounds the memory of each address too.
        failures = self._failures.get(address) or deque(maxlen=self.limit)
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            self._failures.pop(address, None)
        return failures
