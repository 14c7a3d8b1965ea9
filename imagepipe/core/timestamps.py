"""The one timestamp format the project writes: ISO 8601 in UTC, with a trailing Z.

Records, S3 events, presigned-upload expiries and processor liveness items all use it, and
sorting the strings sorts the moments (the by_created index relies on that).
"""

from __future__ import annotations

from datetime import datetime, timezone


def format_utc(moment: datetime | float, timespec: str = "milliseconds") -> str:
    """`2026-12-01T05:17:01.123Z` for a datetime or a POSIX timestamp."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


def utc_now() -> str:
    """Now, in the project's timestamp format."""
    return format_utc(datetime.now(timezone.utc))


def parse_utc(text: str) -> datetime:
    """The moment a timestamp names, timezone-aware; ValueError when it is not one.

    Accepts the trailing Z that Python before 3.11 does not.
    """
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment
