"""The one exception type the HTTP services raise, and its JSON shape."""

from __future__ import annotations

import math
from typing import Any


class ApiError(Exception):
    """An error answered as {"error": {"code", "message"}} with an HTTP status."""

    def __init__(self, status_code: int, code: str, message: str,
                 headers: dict[str, str] | None = None, **details: Any) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update(self.details)
        return {"error": body}


def too_many_requests(code: str, message: str, wait: float, **details: Any) -> ApiError:
    """A 429 whose Retry-After is the wait in whole seconds, at least one."""
    retry_after = max(1, math.ceil(wait))
    return ApiError(429, code, f"{message}; retry in {retry_after} s",
                    headers={"Retry-After": str(retry_after)}, **details)
