"""The result record and its DynamoDB table: the one definition all services share."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal, TypedDict

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from imagepipe.core.aws import error_code
from imagepipe.core.timestamps import utc_now

logger = logging.getLogger(__name__)

Status = Literal["pending", "done", "failed"]
STATUSES: tuple[Status, ...] = ("pending", "done", "failed")


class LabelJson(TypedDict):
    label: str
    score: float
    class_id: int


class ErrorJson(TypedDict):
    code: str
    message: str


class ResultJson(TypedDict):
    """The wire shape of GET /api/results/<image_id>."""

    image_id: str
    status: Status
    labels: list[LabelJson]
    model: dict[str, str] | None
    image: dict[str, Any]
    error: ErrorJson | None
    created_at: str
    processed_at: str | None
    timings: dict[str, float]
    source: str
    sha256: str | None
    duplicate_of: str | None
    reused: bool


@dataclass(frozen=True)
class Label:
    label: str
    score: float
    class_id: int


@dataclass(frozen=True)
class ImageFacts:
    """What the processor learned about the object and the decoded image."""

    format: str | None = None
    width: int | None = None
    height: int | None = None
    bytes: int | None = None


@dataclass(frozen=True)
class ResultRecord:
    """One image's result; the image ID is the table's key."""

    image_id: str
    bucket: str
    key: str
    status: Status = "pending"
    labels: tuple[Label, ...] = ()
    model_name: str | None = None
    model_version: str | None = None
    image: ImageFacts = field(default_factory=ImageFacts)
    error_code: str | None = None
    error_message: str | None = None
    created_at: str = field(default_factory=utc_now)
    processed_at: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    etag: str | None = None
    source: str = "bucket"
    # When the S3 event that produced this outcome happened; orders outcomes of one image.
    event_time: str | None = None
    # Hex SHA-256 of the object's bytes, as the processor read them.
    sha256: str | None = None
    # Set when the labels were copied from an earlier result of the same bytes and model.
    duplicate_of: str | None = None
    reused: bool = False

    def done(self, labels: list[Label], model_name: str, model_version: str, **changes: Any
             ) -> ResultRecord:
        """This record, classified."""
        return replace(self, status="done", labels=tuple(labels), model_name=model_name,
                       model_version=model_version, error_code=None, error_message=None,
                       processed_at=utc_now(), **changes)

    def failed(self, code: str, message: str, **changes: Any) -> ResultRecord:
        """This record, failed for a reason the code names."""
        return replace(self, status="failed", labels=(), error_code=code, error_message=message,
                       processed_at=utc_now(), **changes)

    def reusing(self, original: ResultRecord) -> ResultRecord:
        """This record, done with the labels of an earlier result of the same bytes and model."""
        if original.status != "done" or not original.model_name:
            raise ValueError(f"result {original.image_id} is not a done result to reuse")
        if original.image_id == self.image_id:
            # A redelivery of an image already done: it stays what it was, copy or original.
            return self.done(list(original.labels), original.model_name,
                             original.model_version or "", duplicate_of=original.duplicate_of,
                             reused=original.reused)
        # Point at the result that ran the model, not at another copy of it.
        return self.done(list(original.labels), original.model_name,
                         original.model_version or "",
                         duplicate_of=original.duplicate_of or original.image_id, reused=True)

    def to_json(self) -> ResultJson:
        """The record as the results API returns it."""
        error: ErrorJson | None = None
        if self.error_code:
            error = {"code": self.error_code, "message": self.error_message or ""}
        model = None
        if self.model_name:
            model = {"name": self.model_name, "version": self.model_version or ""}
        return {
            "image_id": self.image_id,
            "status": self.status,
            "labels": [
                {"label": x.label, "score": x.score, "class_id": x.class_id} for x in self.labels
            ],
            "model": model,
            "image": {
                "bucket": self.bucket,
                "key": self.key,
                "format": self.image.format,
                "width": self.image.width,
                "height": self.image.height,
                "bytes": self.image.bytes,
            },
            "error": error,
            "created_at": self.created_at,
            "processed_at": self.processed_at,
            "timings": dict(self.timings),
            "source": self.source,
            "sha256": self.sha256,
            "duplicate_of": self.duplicate_of,
            "reused": self.reused,
        }

    def to_attributes(self) -> dict[str, Any]:
        """The record as plain attribute values (numbers as Decimal), without the key."""
        return {
            "status": self.status,
            "bucket": self.bucket,
            "object_key": self.key,
            "labels": [
                {"label": x.label, "score": _decimal(x.score), "class_id": x.class_id}
                for x in self.labels
            ],
            "model_name": self.model_name,
            "model_version": self.model_version,
            "image": {
                "format": self.image.format,
                "width": self.image.width,
                "height": self.image.height,
                "bytes": self.image.bytes,
            },
            "error_code": self.error_code,
            "error_message": self.error_message,
            "created_at": self.created_at,
            "processed_at": self.processed_at,
            "timings": {k: _decimal(v) for k, v in self.timings.items()},
            "etag": self.etag,
            "source": self.source,
            "event_time": self.event_time,
            "duplicate_of": self.duplicate_of,
            "reused": self.reused,
            **self._index_attributes(),
        }

    def _index_attributes(self) -> dict[str, Any]:
        """The attributes the table's indexes are keyed on (see INDEXES)."""
        attrs: dict[str, Any] = {"feed": FEED_ALL}
        if self.status == "done" and self.labels:
            attrs["top_label"] = label_key(self.labels[0].label)
            attrs["top_score"] = _decimal(self.labels[0].score)
        # Key attributes must be absent rather than null; by_content holds done results only.
        if self.sha256:
            attrs["sha256"] = self.sha256
            if self.status == "done" and self.model_name:
                attrs["content_model"] = model_key(self.model_name, self.model_version or "")
        return attrs

    @classmethod
    def from_attributes(cls, image_id: str, attrs: dict[str, Any]) -> ResultRecord:
        """Rebuild a record from the attribute values the table holds."""
        image = attrs.get("image") or {}
        return cls(
            image_id=image_id,
            bucket=attrs.get("bucket", ""),
            key=attrs.get("object_key", ""),
            status=attrs.get("status", "pending"),
            labels=tuple(
                Label(label=x["label"], score=float(x["score"]), class_id=int(x["class_id"]))
                for x in attrs.get("labels") or ()
            ),
            model_name=attrs.get("model_name"),
            model_version=attrs.get("model_version"),
            image=ImageFacts(
                format=image.get("format"),
                width=_int_or_none(image.get("width")),
                height=_int_or_none(image.get("height")),
                bytes=_int_or_none(image.get("bytes")),
            ),
            error_code=attrs.get("error_code"),
            error_message=attrs.get("error_message"),
            created_at=attrs.get("created_at", ""),
            processed_at=attrs.get("processed_at"),
            timings={k: float(v) for k, v in (attrs.get("timings") or {}).items()},
            etag=attrs.get("etag"),
            source=attrs.get("source", "bucket"),
            event_time=attrs.get("event_time"),
            sha256=attrs.get("sha256"),
            duplicate_of=attrs.get("duplicate_of"),
            reused=bool(attrs.get("reused")),
        )


# One partition holds the newest-first feed of every result. A GSI partition takes about 1,000
# writes/s, far above what one account's processors write here; shard "feed" if that changes.
FEED_ALL = "all"


@dataclass(frozen=True)
class Index:
    """A global secondary index: its name and its partition and sort attributes."""

    name: str
    partition: str
    sort: str
    sort_type: str


INDEXES = (
    Index("by_created", "feed", "created_at", "S"),
    Index("by_status", "status", "created_at", "S"),
    # Sparse: only done results have a top label.
    Index("by_label", "top_label", "top_score", "N"),
    # Sparse: done results by the SHA-256 of their bytes and the model that labelled them.
    Index("by_content", "sha256", "content_model", "S"),
)
_INDEX = {index.name: index for index in INDEXES}


def label_key(label: str) -> str:
    """How a label is matched: case and surrounding spaces do not matter."""
    return label.strip().lower()


def model_key(name: str, version: str) -> str:
    """One string for a model and its version, as the by_content index holds it."""
    return f"{name}@{version}"


def _decimal(value: float) -> Decimal:
    # DynamoDB numbers are decimals; six places are plenty for scores and milliseconds.
    return Decimal(str(round(float(value), 6)))


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


class InvalidCursor(ValueError):
    """A pagination cursor that this store did not hand out."""


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


_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _to_dynamo(value: Any) -> dict[str, Any]:
    return _serializer.serialize(value)


# BatchGetItem takes at most 100 keys a call.
BATCH_GET_MAX = 100
_UNPROCESSED_RETRIES = 8


def _record_from_item(item: dict[str, Any]) -> ResultRecord:
    attrs = {k: _deserializer.deserialize(v) for k, v in item.items()}
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
        item = {"image_id": {"S": record.image_id}}
        item.update({k: _to_dynamo(v) for k, v in record.to_attributes().items()})
        try:
            self._db.put_item(
                TableName=self.table,
                Item=item,
                ConditionExpression="attribute_not_exists(image_id)",
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise StoreError(f"writing {record.image_id}: {exc}", error_code(exc)) from exc
        return True

    def save_result(self, record: ResultRecord, *,
                    existing_created_at: str | Unread | None = UNREAD) -> bool:
        """Write a done or failed record; False if a newer outcome is already there.

        A result never goes backwards: a done record is replaced only by another done record
        from an event at least as recent (a re-run, a new upload to the key, a re-process
        with a new model), never by a failure, a pending record or a late duplicate of an
        older event. The creation time of a pending record is kept.

        `existing_created_at` is the creation time of the image's record as the caller read it
        (see `creation_times`; None: no record). With it the result is one conditional
        PutItem that also checks the record still has that creation time; without it, or if
        the record changed since it was read, one UpdateItem keeps the creation time itself.
        """
        if record.status == "pending":
            raise ValueError("save_result writes outcomes; use create_pending for pending")
        if not isinstance(existing_created_at, Unread):
            written = self._put_result(record, existing_created_at)
            if written:
                return True
        return self._update_result(record)

    def creation_times(self, image_ids: Iterable[str]) -> dict[str, str]:
        """The creation time of each of these images that has a record (BatchGetItem)."""
        found = self.get_many(image_ids, attributes=["created_at"])
        return {image_id: record.created_at for image_id, record in found.items()}

    def _put_result(self, record: ResultRecord, existing_created_at: str | None) -> bool:
        """The result as one conditional PutItem; False if the table is not as the caller read.

        PutItem and UpdateItem cost the same on DynamoDB, but a whole-item put is several
        times cheaper for the local endpoint (moto) to evaluate than an 18-clause update.
        """
        attrs = record.to_attributes()
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        if existing_created_at is None:
            condition = "attribute_not_exists(image_id)"
        else:
            attrs["created_at"] = existing_created_at
            names["#created"] = "created_at"
            values[":created"] = _to_dynamo(existing_created_at)
            condition = "#created = :created"
            forward = self._forward_condition(record, names, values)
            if forward:
                condition += f" AND ({forward})"
        item = {"image_id": {"S": record.image_id}}
        item.update({k: _to_dynamo(v) for k, v in attrs.items()})
        request: dict[str, Any] = {"TableName": self.table, "Item": item,
                                   "ConditionExpression": condition}
        if names:
            request.update(ExpressionAttributeNames=names, ExpressionAttributeValues=values)
        try:
            self._db.put_item(**request)
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                # Another write came between (or a newer result is there): let the update,
                # which reads nothing beforehand, decide.
                return False
            raise StoreError(f"writing {record.image_id}: {exc}", error_code(exc)) from exc
        return True

    @staticmethod
    def _forward_condition(record: ResultRecord, names: dict[str, str],
                           values: dict[str, Any]) -> str:
        """The condition under which `record` may replace what is in the table ("" if any)."""
        if record.status == "failed":
            condition = "#status <> :done"
        elif record.event_time:
            condition = "#status <> :done OR attribute_not_exists(#event) OR #event <= :event"
            names["#event"] = "event_time"
            values[":event"] = _to_dynamo(record.event_time)
        else:
            return ""
        names["#status"] = "status"
        values[":done"] = _to_dynamo("done")
        return condition

    def _update_result(self, record: ResultRecord) -> bool:
        attrs = record.to_attributes()
        created_at = attrs.pop("created_at")
        names = {f"#a{i}": name for i, name in enumerate(attrs)}
        values = {f":v{i}": _to_dynamo(value) for i, value in enumerate(attrs.values())}
        sets = [f"#a{i} = :v{i}" for i in range(len(attrs))]
        names["#created"] = "created_at"
        values[":created"] = _to_dynamo(created_at)
        sets.append("#created = if_not_exists(#created, :created)")
        request: dict[str, Any] = {
            "TableName": self.table,
            "Key": {"image_id": {"S": record.image_id}},
            "UpdateExpression": "SET " + ", ".join(sets),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }
        forward = self._forward_condition(record, names, values)
        if forward:
            request["ConditionExpression"] = "attribute_not_exists(image_id) OR " + forward
        try:
            self._db.update_item(**request)
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                logger.info("kept the newer result of %s over a %s one",
                            record.image_id, record.status)
                return False
            raise StoreError(f"writing {record.image_id}: {exc}", error_code(exc)) from exc
        return True

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
        for start in range(0, len(wanted), BATCH_GET_MAX):
            keys = [{"image_id": {"S": i}} for i in wanted[start:start + BATCH_GET_MAX]]
            request: dict[str, Any] = {
                self.table: {"Keys": keys, "ConsistentRead": True, **projection}}
            for attempt in range(_UNPROCESSED_RETRIES + 1):
                try:
                    response = self._db.batch_get_item(RequestItems=request)
                except ClientError as exc:
                    raise StoreError(f"reading {len(keys)} results: {exc}", error_code(exc)
                                     ) from exc
                for item in response.get("Responses", {}).get(self.table, []):
                    record = _record_from_item(item)
                    found[record.image_id] = record
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
                if attempt < _UNPROCESSED_RETRIES:
                    # Full jitter, as AWS recommends for batch retries.
                    self._sleep(random.uniform(0, min(2.0, 0.05 * 2 ** attempt)))
            else:
                left = len(request.get(self.table, {}).get("Keys", []))
                raise StoreError(f"{left} results still unprocessed after retries",
                                 "UnprocessedKeys")
        return found

    def count(self, status: Status) -> int:
        """How many results have this status, counted in the by_status index (no items read)."""
        index = _INDEX["by_status"]
        request: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": index.name,
            "KeyConditionExpression": "#p = :p",
            "ExpressionAttributeNames": {"#p": index.partition},
            "ExpressionAttributeValues": {":p": _to_dynamo(status)},
            "Select": "COUNT",
        }
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

    def oldest(self, status: Status) -> ResultRecord | None:
        """The record of this status created first (the by_status index, oldest end)."""
        index = _INDEX["by_status"]
        return self._first(f"reading the oldest {status} result", {
            "IndexName": index.name,
            "KeyConditionExpression": "#p = :p",
            "ExpressionAttributeNames": {"#p": index.partition},
            "ExpressionAttributeValues": {":p": _to_dynamo(status)},
            "ScanIndexForward": True,
        })

    def find_by_content(self, sha256: str, model_name: str, model_version: str
                        ) -> ResultRecord | None:
        """A done result of these bytes by this model, if any (the by_content index).

        The index is eventually consistent: a result written a moment ago may not be found.
        """
        index = _INDEX["by_content"]
        return self._first(f"looking up content {sha256[:12]}", {
            "IndexName": index.name,
            "KeyConditionExpression": "#p = :p AND #s = :s",
            "ExpressionAttributeNames": {"#p": index.partition, "#s": index.sort},
            "ExpressionAttributeValues": {
                ":p": _to_dynamo(sha256),
                ":s": _to_dynamo(model_key(model_name, model_version)),
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
    ) -> Page:
        """A page of results from an index, never a scan.

        With a label: results whose top label it is, best score first. Otherwise newest
        first, of one status or of all. A cursor continues where the previous page ended.
        """
        if label is not None:
            index = _INDEX["by_label"]
            values: dict[str, Any] = {":p": _to_dynamo(label_key(label))}
            key_condition = "#p = :p"
            names = {"#p": index.partition}
            if min_score is not None:
                key_condition += " AND #s >= :min"
                names["#s"] = index.sort
                values[":min"] = _to_dynamo(_decimal(min_score))
            filters = []
            if status is not None:
                filters.append("#status = :status")
                names["#status"] = "status"
                values[":status"] = _to_dynamo(status)
        else:
            index = _INDEX["by_status"] if status is not None else _INDEX["by_created"]
            names = {"#p": index.partition}
            values = {":p": _to_dynamo(status if status is not None else FEED_ALL)}
            key_condition = "#p = :p"
            filters = []
            if min_score is not None:
                filters.append("top_score >= :min")
                values[":min"] = _to_dynamo(_decimal(min_score))
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
        start = _decode_cursor(cursor, index) if cursor else None
        records: list[ResultRecord] = []
        last_item: dict[str, Any] | None = None
        exhausted = False
        # A filter is applied after DynamoDB's Limit, so a page may need several queries.
        while len(records) < limit:
            request["Limit"] = max(limit, 25) if filters else limit - len(records)
            if start:
                request["ExclusiveStartKey"] = start
            try:
                response = self._db.query(**request)
            except ClientError as exc:
                raise StoreError(f"listing results: {exc}", error_code(exc)) from exc
            items = response.get("Items", [])
            taken = items[: limit - len(records)]
            for item in taken:
                records.append(_record_from_item(item))
                last_item = item
            start = response.get("LastEvaluatedKey")
            if len(taken) < len(items):
                break
            if not start:
                exhausted = True
                break
        if exhausted or last_item is None:
            return Page(records, None)
        # Resume after the last record returned, which may be mid-page.
        resume = {k: last_item[k] for k in ("image_id", index.partition, index.sort)}
        return Page(records, _encode_cursor(index, resume))


def _encode_cursor(index: Index, key: dict[str, Any]) -> str:
    raw = json.dumps({"i": index.name, "k": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, index: Index) -> dict[str, Any]:
    """The start key in a cursor, checked against the index it must belong to."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        body = json.loads(raw)
    except (binascii.Error, ValueError):
        raise InvalidCursor("the cursor is not one this API handed out") from None
    key = body.get("k") if isinstance(body, dict) else None
    expected = {"image_id": "S", index.partition: "S", index.sort: index.sort_type}
    if body.get("i") != index.name or not isinstance(key, dict) or set(key) != set(expected):
        raise InvalidCursor("the cursor belongs to another query")
    for name, kind in expected.items():
        value = key[name]
        if not isinstance(value, dict) or set(value) != {kind} or not isinstance(value[kind], str):
            raise InvalidCursor("the cursor is malformed")
    return key
