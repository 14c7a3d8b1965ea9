"""ResultStore: reads, queries and writes of result records in the DynamoDB table."""

from __future__ import annotations

import dataclasses
import heapq
import logging
import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from imagepipe.core.aws import error_code
from imagepipe.core.records import writes
from imagepipe.core.records.codec import decimal, from_dynamo, to_dynamo
from imagepipe.core.records.cursors import (
    decode_cursor,
    decode_shards_cursor,
    encode_cursor,
    encode_shards_cursor,
)
from imagepipe.core.records.indexes import (
    BY_CONTENT,
    BY_CREATED,
    BY_LABEL,
    BY_OWNER,
    BY_OWNER_LABEL,
    BY_OWNER_STATUS,
    BY_STATUS,
    FEED_PARTITIONS,
    OPEN_STATUSES,
    Index,
    label_key,
    model_key,
    owner_key,
)
from imagepipe.core.records.parts import Status
from imagepipe.core.records.record import ResultRecord
from imagepipe.core.records.search import answers_to, result_of, word_writes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Page:
    """One page of results and the cursor of the next, if there is one."""

    records: list[ResultRecord]
    next_cursor: str | None


class StoreError(Exception):
    """The table could not be read or written; the caller decides whether to retry."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


# BatchGetItem takes at most 100 keys a call, BatchWriteItem 25 requests.
BATCH_GET_MAX = 100
BATCH_WRITE_MAX = 25
_UNPROCESSED_RETRIES = 8


def _record_from_item(item: dict[str, Any]) -> ResultRecord:
    attrs = from_dynamo(item)
    return ResultRecord.from_attributes(attrs.pop("image_id"), attrs)


class Unread:
    """The type of UNREAD."""


# A caller of save_result that has not read the record's creation time.
UNREAD = Unread()


class ResultStore:
    """Reads and writes result records in the DynamoDB table through a low-level client."""

    def __init__(self, dynamodb: Any, table: str,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._db = dynamodb
        self.table = table
        self._sleep = sleep

    def get(self, image_id: str) -> ResultRecord | None:
        """The record of an image, read consistently, or None."""
        try:
            response = self._db.get_item(
                TableName=self.table, Key={"image_id": {"S": image_id}}, ConsistentRead=True
            )
        except ClientError as exc:
            raise StoreError(f"reading {image_id}: {exc}", error_code(exc)) from exc
        item = response.get("Item")
        return _record_from_item(item) if item else None

    def create_pending(self, record: ResultRecord) -> bool:
        """Write a pending record unless the image already has one; True if written."""
        try:
            self._db.put_item(**writes.pending_put(self.table, record))
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise StoreError(f"writing {record.image_id}: {exc}", error_code(exc)) from exc
        return True

    def delete(self, record: ResultRecord) -> None:
        """Remove an image's record with its index entries, and its search items first."""
        # The search module's own diff: from the words the record has to none.
        gone = dataclasses.replace(record, status="failed", words={})
        self._batch_write(word_writes(gone, record.words), f"search items of {record.image_id}")
        try:
            self._db.delete_item(**writes.delete(self.table, record.image_id))
        except ClientError as exc:
            raise StoreError(f"deleting {record.image_id}: {exc}", error_code(exc)) from exc

    def save_result(self, record: ResultRecord, *,
                    existing_created_at: str | Unread | None = UNREAD) -> bool:
        """Write a done or failed record; False if a newer outcome is already there.

        A result never goes backwards (see `writes`): a done record is replaced only by another
        done record from an event at least as recent (a re-run, a new upload to the key, a
        re-process with a new model). The creation time of a pending record is kept.

        `existing_created_at` is the creation time of the image's record as the caller read it
        (see `creation_times`; None: no record). With it the result is one conditional
        PutItem that also checks the record still has that creation time; without it, or if
        the record changed since it was read, one UpdateItem keeps the creation time itself.

        Then its search items (`search`) follow it in one BatchWriteItem per 25 words: the
        words it has put, those the item it replaced had (returned by that write) deleted. A
        StoreError there leaves the result written; a retry writes the words again, and a
        stale word item is never shown (the search reads the result back).
        """
        if record.status == "pending":
            raise ValueError("save_result writes outcomes; use create_pending for pending")
        old: dict[str, Any] | None = None
        if not isinstance(existing_created_at, Unread):
            old = self._put_result(record, existing_created_at)
        if old is None:
            old = self._update_result(record)
        if old is None:
            return False
        # The search items follow the result written: its words put, the old ones deleted.
        previous = from_dynamo(old).get("search_words") or {}
        self._batch_write(word_writes(record, previous), f"search items of {record.image_id}")
        return True

    def creation_times(self, image_ids: Iterable[str]) -> dict[str, str]:
        """The creation time of each of these images that has a record (BatchGetItem)."""
        found = self.get_many(image_ids, attributes=["created_at"])
        return {image_id: record.created_at for image_id, record in found.items()}

    def _put_result(self, record: ResultRecord, existing_created_at: str | None
                    ) -> dict[str, Any] | None:
        """The result as one conditional PutItem; the item it replaced ({} if none), or None if
        the table is not as the caller read.

        PutItem and UpdateItem cost the same on DynamoDB, but a whole-item put is several
        times cheaper for the local endpoint (moto) to evaluate than an 18-clause update.
        """
        try:
            response = self._db.put_item(
                **writes.result_put(self.table, record, existing_created_at),
                ReturnValues="ALL_OLD")
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                # Another write came between (or a newer result is there): let the update,
                # which reads nothing beforehand, decide.
                return None
            raise StoreError(f"writing {record.image_id}: {exc}", error_code(exc)) from exc
        return dict(response.get("Attributes") or {})

    def _update_result(self, record: ResultRecord) -> dict[str, Any] | None:
        """The result as one UpdateItem that reads nothing first; the item as it was ({} if
        none), or None if a newer one is there."""
        try:
            response = self._db.update_item(**writes.result_update(self.table, record),
                                            ReturnValues="ALL_OLD")
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                logger.info("kept the newer result of %s over a %s one",
                            record.image_id, record.status)
                return None
            raise StoreError(f"writing {record.image_id}: {exc}", error_code(exc)) from exc
        return dict(response.get("Attributes") or {})

    def _until_processed(self, call: Callable[[dict[str, Any]], dict[str, Any]],
                         request: dict[str, Any], unprocessed: str) -> dict[str, Any]:
        """Make a batch call, then again for what DynamoDB left unprocessed, with backoff;
        what is still unprocessed after the retries ({} when nothing)."""
        for attempt in range(_UNPROCESSED_RETRIES + 1):
            request = call(request).get(unprocessed) or {}
            if not request:
                break
            if attempt < _UNPROCESSED_RETRIES:
                # Full jitter, as AWS recommends for batch retries.
                self._sleep(random.uniform(0, min(2.0, 0.05 * 2 ** attempt)))
        return request

    def _batch_write(self, requests: list[dict[str, Any]], doing: str) -> None:
        """Send write requests 25 to a call, asking again for what DynamoDB leaves unprocessed."""
        def write(pending: dict[str, Any]) -> dict[str, Any]:
            try:
                return self._db.batch_write_item(RequestItems=pending)
            except ClientError as exc:
                raise StoreError(f"{doing}: {exc}", error_code(exc)) from exc

        for start in range(0, len(requests), BATCH_WRITE_MAX):
            left = self._until_processed(
                write, {self.table: requests[start:start + BATCH_WRITE_MAX]}, "UnprocessedItems")
            if left:
                raise StoreError(f"{doing}: {len(left.get(self.table, []))} writes still "
                                 "unprocessed", "UnprocessedItems")

    def get_many(self, image_ids: Iterable[str], attributes: Iterable[str] | None = None
                 ) -> dict[str, ResultRecord]:
        """The records of many images, read consistently by BatchGetItem; absent IDs are left out.

        With `attributes`, only those are read (the rest of each record keeps its defaults):
        cheaper for polling. Keys DynamoDB leaves unprocessed (throttling, the 16 MB response
        cap) are asked for again with backoff; a StoreError if some are still unprocessed.
        """
        wanted = list(dict.fromkeys(image_ids))
        found: dict[str, ResultRecord] = {}
        projection: dict[str, Any] = {}
        if attributes is not None:
            names = {f"#p{i}": name for i, name in enumerate(["image_id", *attributes])}
            projection = {"ProjectionExpression": ", ".join(names),
                          "ExpressionAttributeNames": names}
        def read(request: dict[str, Any]) -> dict[str, Any]:
            try:
                response = self._db.batch_get_item(RequestItems=request)
            except ClientError as exc:
                keys = len(request[self.table]["Keys"])
                raise StoreError(f"reading {keys} results: {exc}", error_code(exc)) from exc
            for item in response.get("Responses", {}).get(self.table, []):
                record = _record_from_item(item)
                found[record.image_id] = record
            return response

        for start in range(0, len(wanted), BATCH_GET_MAX):
            keys = [{"image_id": {"S": i}} for i in wanted[start:start + BATCH_GET_MAX]]
            left = self._until_processed(
                read, {self.table: {"Keys": keys, "ConsistentRead": True, **projection}},
                "UnprocessedKeys")
            if left:
                raise StoreError(f"{len(left.get(self.table, {}).get('Keys', []))} results "
                                 "still unprocessed after retries", "UnprocessedKeys")
        return found

    def count(self, status: Status) -> int:
        """How many results have this status, counted in an index (no items returned).

        Pending and failed results are counted in the sparse by_open_status index, which holds
        nothing else. Done results are counted over the feed's shards: that reads every
        result's index entry, as counting a done partition did before the feed was sharded.
        """
        if status in OPEN_STATUSES:
            return self._count(status, BY_STATUS, status)
        return sum(self._each_shard(
            lambda partition: self._count(status, BY_CREATED, partition, filtered=True)))

    def _count(self, status: str, index: Index, partition: str, filtered: bool = False) -> int:
        """Results of this status in one partition of an index, every page."""
        request: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": index.name,
            "KeyConditionExpression": "#p = :p",
            "ExpressionAttributeNames": {"#p": index.partition},
            "ExpressionAttributeValues": {":p": to_dynamo(partition)},
            "Select": "COUNT",
        }
        if filtered:
            # The feed holds results of every status: count this one only.
            request["FilterExpression"] = "#st = :st"
            request["ExpressionAttributeNames"]["#st"] = "status"
            request["ExpressionAttributeValues"][":st"] = to_dynamo(status)
        total = 0
        while True:
            try:
                response = self._db.query(**request)
            except ClientError as exc:
                raise StoreError(f"counting {status} results: {exc}", error_code(exc)) from exc
            total += int(response.get("Count", 0))
            if not response.get("LastEvaluatedKey"):
                return total
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def _each_shard(self, read: Callable[[str], Any]) -> list[Any]:
        """`read` of every shard of the feed, in parallel (the client is thread-safe), in order."""
        with ThreadPoolExecutor(max_workers=len(FEED_PARTITIONS)) as pool:
            return list(pool.map(read, FEED_PARTITIONS))

    def oldest(self, status: Status) -> ResultRecord | None:
        """The record of this status created first (the by_open_status index, oldest end).

        Only pending and failed results are in that index; the oldest done result is not
        something anyone asks for.
        """
        if status not in OPEN_STATUSES:
            raise ValueError(f"the oldest result is kept for {OPEN_STATUSES}, not {status!r}")
        index = BY_STATUS
        return self._first(f"reading the oldest {status} result", {
            "IndexName": index.name,
            "KeyConditionExpression": "#p = :p",
            "ExpressionAttributeNames": {"#p": index.partition},
            "ExpressionAttributeValues": {":p": to_dynamo(status)},
            "ScanIndexForward": True,
        })

    def find_by_content(self, sha256: str, model_name: str, model_version: str,
                        owner: str | None = None) -> ResultRecord | None:
        """A done result of these bytes by this model among one owner's, if any (by_content).

        The index is eventually consistent: a result written a moment ago may not be found.
        """
        index = BY_CONTENT
        return self._first(f"looking up content {sha256[:12]}", {
            "IndexName": index.name,
            "KeyConditionExpression": "#p = :p AND #s = :s",
            "ExpressionAttributeNames": {"#p": index.partition, "#s": index.sort},
            "ExpressionAttributeValues": {
                ":p": to_dynamo(sha256),
                ":s": to_dynamo(model_key(model_name, model_version, owner)),
            },
        })

    def _first(self, doing: str, query: dict[str, Any]) -> ResultRecord | None:
        """The first record an index query finds, or None."""
        try:
            response = self._db.query(TableName=self.table, Limit=1, **query)
        except ClientError as exc:
            raise StoreError(f"{doing}: {exc}", error_code(exc)) from exc
        items = response.get("Items", [])
        return _record_from_item(items[0]) if items else None

    def list_results(
        self,
        *,
        label: str | None = None,
        status: Status | None = None,
        min_score: float | None = None,
        limit: int = 20,
        cursor: str | None = None,
        owner: str | None = None,
    ) -> Page:
        """A page of results from an index, never a scan.

        With a label: results that answer to the word (a label, a synonym, a category; see
        records.search) with at least `min_score`, best score first; only done results do.
        Otherwise newest first, of one status or of all. With an owner, only that user's
        results, from indexes whose partitions hold the owner; without, everyone's:
        pending or failed ones from the sparse by_open_status index, done ones or all from the
        shards of the feed, merged. A cursor continues where the previous page ended.
        """
        filters: list[str] = []
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        if label is not None:
            if status not in (None, "done"):
                return Page([], None)
            index = BY_LABEL if owner is None else BY_OWNER_LABEL
            partition = (label_key(label) if owner is None
                         else owner_key(owner, label_key(label)))
            key_condition = "#p = :p"
            if min_score is not None:
                key_condition += " AND #s >= :min"
                names["#s"] = index.sort
                values[":min"] = to_dynamo(decimal(min_score))
        else:
            if owner is None:
                # Done results, the most of them, are only in the feed: filtered by status.
                shards = status not in OPEN_STATUSES
                index = BY_CREATED if shards else BY_STATUS
                partition = None if shards else status
                if shards and status is not None:
                    filters.append("#st = :st")
                    names["#st"] = "status"
                    values[":st"] = to_dynamo(status)
            else:
                index = BY_OWNER_STATUS if status is not None else BY_OWNER
                partition = owner_key(owner, status) if status is not None else owner
            key_condition = "#p = :p"
            if min_score is not None:
                filters.append("top_score >= :min")
                values[":min"] = to_dynamo(decimal(min_score))
        names["#p"] = index.partition
        request: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": index.name,
            "KeyConditionExpression": key_condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
        }
        if filters:
            request["FilterExpression"] = " AND ".join(filters)
        if partition is None:
            return self._list_shards(request, status or "all", limit, cursor)
        values[":p"] = to_dynamo(partition)
        start = decode_cursor(cursor, index, partition) if cursor else None
        items, more = self._read_partition(request, start, limit)
        records = (self._answering(items, label) if label is not None
                   else [_record_from_item(item) for item in items])
        if not more or not items:
            return Page(records, None)
        # Resume after the last item returned, which may be mid-page.
        return Page(records, encode_cursor(index, _key_of(items[-1], index)))

    def _answering(self, items: list[dict[str, Any]], word: str) -> list[ResultRecord]:
        """The results the label indexes' items stand for, in their order, read consistently,
        kept only if they still answer to the word (a stale search item shows nothing)."""
        ids = list(dict.fromkeys(result_of(item) for item in items))
        found = self.get_many(ids)
        return [found[i] for i in ids if i in found and answers_to(found[i], word)]

    def _read_partition(self, request: dict[str, Any], start: dict[str, Any] | None,
                        limit: int) -> tuple[list[dict[str, Any]], bool]:
        """Up to `limit` items of one partition's query from `start`; True if more may follow."""
        request = dict(request)
        filtered = "FilterExpression" in request
        items: list[dict[str, Any]] = []
        # A filter is applied after DynamoDB's Limit, so a page may need several queries.
        while len(items) < limit:
            request["Limit"] = max(limit, 25) if filtered else limit - len(items)
            if start:
                request["ExclusiveStartKey"] = start
            try:
                response = self._db.query(**request)
            except ClientError as exc:
                raise StoreError(f"listing results: {exc}", error_code(exc)) from exc
            found = response.get("Items", [])
            room = limit - len(items)
            items.extend(found[:room])
            start = response.get("LastEvaluatedKey")
            if len(found) > room:
                return items, True
            if not start:
                return items, False
        return items, True

    def _list_shards(self, request: dict[str, Any], query: str, limit: int,
                     cursor: str | None) -> Page:
        """A page of the feed: every shard read newest first, merged, each resumed on its own.

        Each shard gives up to `limit` items, so the newest `limit` of all are among them;
        the cursor keeps each shard's position after what this page took from it.
        """
        index = BY_CREATED
        positions: dict[str, dict[str, Any] | None] = (
            decode_shards_cursor(cursor, index, query, FEED_PARTITIONS) if cursor
            else dict.fromkeys(FEED_PARTITIONS))

        def read(partition: str) -> tuple[list[dict[str, Any]], bool]:
            if partition not in positions:
                return [], False
            shard_request = {**request, "ExpressionAttributeValues": {
                **request["ExpressionAttributeValues"], ":p": to_dynamo(partition)}}
            return self._read_partition(shard_request, positions[partition], limit)

        reads = dict(zip(FEED_PARTITIONS, self._each_shard(read), strict=True))
        # A merge, not a sort, so each shard's items stay in the order DynamoDB gave them
        # (ties of created_at included) and what a page takes is a prefix of each shard.
        merged = heapq.merge(
            *([(item[index.sort]["S"], partition, item) for item in items]
              for partition, (items, _) in reads.items()),
            key=lambda entry: entry[0], reverse=True)
        page = [entry for _, entry in zip(range(limit), merged, strict=False)]
        taken: dict[str, int] = {}
        for _, partition, _item in page:
            taken[partition] = taken.get(partition, 0) + 1
        following: dict[str, dict[str, Any] | None] = {}
        for partition, (items, more) in reads.items():
            if partition not in positions:
                continue
            count = taken.get(partition, 0)
            if count == len(items) and not more:
                continue
            following[partition] = (_key_of(items[count - 1], index) if count
                                    else positions[partition])
        records = [_record_from_item(item) for _, _, item in page]
        if not following:
            return Page(records, None)
        return Page(records, encode_shards_cursor(index, query, following))


def _key_of(item: dict[str, Any], index: Index) -> dict[str, Any]:
    """The start key that resumes a query of `index` after this item."""
    return {k: item[k] for k in ("image_id", index.partition, index.sort)}
