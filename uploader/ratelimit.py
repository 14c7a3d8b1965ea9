"""Rate limits for the endpoints that store images: token buckets in memory, one per signed-in
user, or per client address when sign-in is off."""

from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, request

from imagepipe.core.auth import current_caller
from imagepipe.core.errors import too_many_requests

RATE_LIMITER = "imagepipe.rate_limiter"

F = TypeVar("F", bound=Callable[..., Any])


class RateLimiter:
    """A token bucket per client (user or address): `burst` at once, then `per_minute` a minute.

    Each gunicorn worker keeps its own buckets, so the limit a client sees is per worker
    process; memory is bounded by forgetting the least recently seen clients.
    """

    def __init__(self, per_minute: int, burst: int, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, client: str) -> float:
        """Take a token; 0 if allowed, else the seconds until one is free."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1:
                tokens -= 1
                wait = 0.0
            else:
                wait = (1 - tokens) / self.rate
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return wait


def client_of_request() -> tuple[str, str]:
    """Whose bucket a request takes from, and what to call them: the user, else the address.

    Per user, so people behind one NAT or proxy do not share a limit, and one person cannot
    buy more by changing address. The address is the peer's, or X-Forwarded-For's as far as
    IMAGEPIPE_TRUSTED_PROXIES trusts it (ProxyFix set remote_addr).
    """
    caller = current_caller()
    if caller is not None:
        return f"user:{caller.sub}", "this user"
    return f"address:{request.remote_addr or 'unknown'}", "this address"


def rate_limited(view: F) -> F:
    """Answer 429 with Retry-After when the client is over its rate."""

    @functools.wraps(view)
    def limited(*args: Any, **kwargs: Any) -> Any:
        limiter: RateLimiter = current_app.extensions[RATE_LIMITER]
        client, name = client_of_request()
        wait = limiter.acquire(client)
        if wait > 0:
            raise too_many_requests("rate_limited", f"too many requests from {name}", wait)
        return view(*args, **kwargs)

    return limited  # type: ignore[return-value]
