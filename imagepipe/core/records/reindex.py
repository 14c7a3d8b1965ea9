"""Give results written before the feed was sharded the index keys they lack, once per table.

Results written by an older version carry ``feed = "all"`` (one partition) and no
``open_status``: the sharded listing, the status counts and the failed listing do not see
them. `reindex` scans the table once, in parallel segments, and rewrites those two
attributes on each such result. It is a one-off migration, the only scan in the project.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from imagepipe.core.aws import error_code
from imagepipe.core.records.indexes import (
    BY_CREATED,
    BY_STATUS,
    FEED_ALL,
    OPEN_STATUSES,
    feed_partition,
)
from imagepipe.core.records.store import StoreError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reindexed:
    """What a reindex did: results rewritten, and those a newer write had already moved."""

    rewritten: int
    skipped: int


def reindex(dynamodb: Any, table: str, segments: int = 4) -> Reindexed:
    """Move every result still in the unsharded feed to its shard and the sparse status index."""
    with ThreadPoolExecutor(max_workers=segments) as pool:
        done = list(pool.map(lambda segment: _segment(dynamodb, table, segment, segments),
                             range(segments)))
    result = Reindexed(sum(d.rewritten for d in done), sum(d.skipped for d in done))
    logger.info("reindexed %d results of %s (%d already moved)", result.rewritten, table,
                result.skipped)
    return result


def _segment(dynamodb: Any, table: str, segment: int, segments: int) -> Reindexed:
    request: dict[str, Any] = {
        "TableName": table, "Segment": segment, "TotalSegments": segments,
        "FilterExpression": "#feed = :all",
        "ProjectionExpression": "image_id, #status",
        "ExpressionAttributeNames": {"#feed": BY_CREATED.partition, "#status": "status"},
        "ExpressionAttributeValues": {":all": {"S": FEED_ALL}},
    }
    rewritten = skipped = 0
    while True:
        try:
            page = dynamodb.scan(**request)
        except ClientError as exc:
            raise StoreError(f"scanning {table}: {exc}", error_code(exc)) from exc
        for item in page.get("Items", []):
            if _rewrite(dynamodb, table, item["image_id"]["S"], item["status"]["S"]):
                rewritten += 1
            else:
                skipped += 1
        if not page.get("LastEvaluatedKey"):
            return Reindexed(rewritten, skipped)
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _rewrite(dynamodb: Any, table: str, image_id: str, status: str) -> bool:
    """The result's new index keys, unless a write since the scan has given it them already."""
    names = {"#feed": BY_CREATED.partition, "#status": "status", "#open": BY_STATUS.partition}
    values = {":all": {"S": FEED_ALL}, ":shard": {"S": feed_partition(image_id)},
              ":status": {"S": status}}
    if status in OPEN_STATUSES:
        update = "SET #feed = :shard, #open = :status"
    else:
        update = "SET #feed = :shard REMOVE #open"
    try:
        # Only as the scan saw it: a result written meanwhile has its keys from that write.
        dynamodb.update_item(TableName=table, Key={"image_id": {"S": image_id}},
                             UpdateExpression=update,
                             ConditionExpression="#feed = :all AND #status = :status",
                             ExpressionAttributeNames=names, ExpressionAttributeValues=values)
    except ClientError as exc:
        if error_code(exc) == "ConditionalCheckFailedException":
            return False
        raise StoreError(f"reindexing {image_id}: {exc}", error_code(exc)) from exc
    return True
