"""The S3 event notification, as S3 puts it on the queue: the one builder of its shape.

The processor parses these bodies (processor/events.py); the backfill command, the benchmark
and the tests build them here, so every synthetic event looks like the real one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

from imagepipe.core.timestamps import utc_now

OBJECT_CREATED_PUT = "ObjectCreated:Put"


@dataclass(frozen=True)
class S3Object:
    """An object to announce: its bucket and key, and what S3 says of it."""

    bucket: str
    key: str
    size: int = 0
    etag: str = ""


def event_record(obj: S3Object, *, event_name: str = OBJECT_CREATED_PUT,
                 event_time: str | None = None, region: str = "us-east-1",
                 principal: str = "imagepipe") -> dict[str, Any]:
    """One record of a notification; the event time is now unless given."""
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": event_time or utc_now(),
        "eventName": event_name,
        "userIdentity": {"principalId": principal},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": principal,
            "bucket": {"name": obj.bucket, "ownerIdentity": {"principalId": principal},
                       "arn": f"arn:aws:s3:::{obj.bucket}"},
            # S3 URL-encodes keys in events (space as +), keeping slashes.
            "object": {"key": quote_plus(obj.key, safe="/"), "size": obj.size,
                       "eTag": obj.etag.strip('"'), "sequencer": f"{time.time_ns():016X}"},
        },
    }


def notification_body(records: Iterable[dict[str, Any]]) -> str:
    """An SQS message body holding these records, as S3 sends it."""
    return json.dumps({"Records": list(records)}, separators=(",", ":"))


def object_created_body(obj: S3Object, **options: Any) -> str:
    """The body S3 sends when this object is created (options as for event_record)."""
    return notification_body([event_record(obj, **options)])
