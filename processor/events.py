"""Parse the S3 event notifications that arrive as SQS message bodies."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

logger = logging.getLogger(__name__)


class MalformedEvent(ValueError):
    """The body is not an S3 event notification the processor understands."""


@dataclass(frozen=True)
class ObjectCreated:
    """One object that appeared in a bucket."""

    bucket: str
    key: str
    size: int | None
    etag: str | None
    event_name: str
    event_time: str | None


def parse_body(body: str) -> list[ObjectCreated]:
    """The ObjectCreated records in one SQS message body.

    S3's test event and events of other types yield nothing; anything that is not an S3
    notification raises MalformedEvent.
    """
    try:
        message = json.loads(body)
    except (TypeError, ValueError) as exc:
        raise MalformedEvent(f"body is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise MalformedEvent("body is not a JSON object")
    if message.get("Event") == "s3:TestEvent":
        return []
    records = message.get("Records")
    if not isinstance(records, list):
        raise MalformedEvent("body has no Records list")
    found = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise MalformedEvent(f"record {index} is not an object")
        event_name = record.get("eventName")
        if not isinstance(event_name, str):
            raise MalformedEvent(f"record {index} has no eventName")
        if not event_name.startswith("ObjectCreated:"):
            logger.info("ignoring %s event", event_name)
            continue
        found.append(_object_created(index, record, event_name))
    return found


def _object_created(index: int, record: dict[str, Any], event_name: str) -> ObjectCreated:
    s3 = record.get("s3")
    bucket = s3.get("bucket") if isinstance(s3, dict) else None
    obj = s3.get("object") if isinstance(s3, dict) else None
    if not isinstance(bucket, dict) or not isinstance(obj, dict):
        raise MalformedEvent(f"record {index} has no s3.bucket or s3.object")
    name, key = bucket.get("name"), obj.get("key")
    if not isinstance(name, str) or not name or not isinstance(key, str) or not key:
        raise MalformedEvent(f"record {index} has no bucket name or object key")
    size = obj.get("size")
    etag = obj.get("eTag")
    event_time = record.get("eventTime")
    return ObjectCreated(
        bucket=name,
        # S3 URL-encodes keys in events, with + for spaces.
        key=unquote_plus(key),
        size=size if isinstance(size, int) and not isinstance(size, bool) else None,
        etag=etag if isinstance(etag, str) else None,
        event_name=event_name,
        event_time=event_time if isinstance(event_time, str) else None,
    )
