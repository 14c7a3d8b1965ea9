"""Processor heartbeats: small items in the results table that say which processors are alive.

A heartbeat's key is ``heartbeat#<processor id>``, which no image ID (22 URL-safe characters)
can equal. Its ``feed`` is ``heartbeat`` and its ``created_at`` the time of the last beat, so
the by_created index lists recent processors with one query; heartbeats carry none of the other
indexes' keys, so they never show up among results, counts or content lookups.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from botocore.exceptions import ClientError

from imagepipe.core.aws import error_code
from imagepipe.core.records import StoreError
from imagepipe.core.records.codec import from_dynamo, to_dynamo
from imagepipe.core.records.indexes import BY_CREATED
from imagepipe.core.timestamps import format_utc

KEY_PREFIX = "heartbeat#"
FEED_HEARTBEAT = "heartbeat"


@dataclass(frozen=True)
class ProcessorBeat:
    """What a processor last said about itself."""

    processor_id: str
    host: str
    pid: int
    model: str
    started_at: str
    last_seen: str
    batches: int
    images: int


def processor_id(pid: int) -> str:
    """This process's ID among processors: host name and process ID."""
    return f"{socket.gethostname()}:{pid}"


def write_beat(dynamodb: Any, table: str, beat: ProcessorBeat) -> None:
    """Record that a processor is alive now (an unconditional put; the last beat wins)."""
    item = {
        "image_id": f"{KEY_PREFIX}{beat.processor_id}",
        BY_CREATED.partition: FEED_HEARTBEAT,
        BY_CREATED.sort: beat.last_seen,
        "host": beat.host,
        "pid": beat.pid,
        "model": beat.model,
        "started_at": beat.started_at,
        "batches": beat.batches,
        "images": beat.images,
    }
    try:
        dynamodb.put_item(TableName=table,
                          Item={k: to_dynamo(v) for k, v in item.items()})
    except ClientError as exc:
        raise StoreError(f"writing heartbeat: {exc}", error_code(exc)) from exc


def recent_beats(dynamodb: Any, table: str, within_seconds: float) -> list[ProcessorBeat]:
    """Processors that beat within the last `within_seconds`, most recent first."""
    since_text = format_utc(datetime.now(timezone.utc) - timedelta(seconds=within_seconds))
    request: dict[str, Any] = {
        "TableName": table,
        "IndexName": BY_CREATED.name,
        "KeyConditionExpression": "#p = :p AND #s >= :since",
        "ExpressionAttributeNames": {"#p": BY_CREATED.partition, "#s": BY_CREATED.sort},
        "ExpressionAttributeValues": {":p": {"S": FEED_HEARTBEAT}, ":since": {"S": since_text}},
        "ScanIndexForward": False,
    }
    beats = []
    while True:
        try:
            response = dynamodb.query(**request)
        except ClientError as exc:
            raise StoreError(f"reading heartbeats: {exc}", error_code(exc)) from exc
        for item in response.get("Items", []):
            attrs = from_dynamo(item)
            beats.append(ProcessorBeat(
                processor_id=str(attrs["image_id"]).removeprefix(KEY_PREFIX),
                host=str(attrs.get("host", "")),
                pid=int(attrs.get("pid", 0)),
                model=str(attrs.get("model", "")),
                started_at=str(attrs.get("started_at", "")),
                last_seen=str(attrs[BY_CREATED.sort]),
                batches=int(attrs.get("batches", 0)),
                images=int(attrs.get("images", 0)),
            ))
        if not response.get("LastEvaluatedKey"):
            return beats
        request["ExclusiveStartKey"] = response["LastEvaluatedKey"]
