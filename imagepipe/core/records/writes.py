"""The table writes of a record, and the never-backwards conditions, written once for both paths.

A result never goes backwards: a done record is replaced only by another done record from an
event at least as recent, never by a failure, a pending record or a late duplicate of an older
event. `forward_condition` says that in DynamoDB's words; the conditional PutItem and the
UpdateItem that save a result both carry it.
"""

from __future__ import annotations

from typing import Any

from imagepipe.core.records.codec import TTL_ATTRIBUTE, to_dynamo
from imagepipe.core.records.indexes import BY_LABEL, BY_OWNER_LABEL, BY_STATUS
from imagepipe.core.records.record import ResultRecord


def item(record: ResultRecord, attrs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record as a typed item, key included; `attrs` replaces its attribute values."""
    typed = {"image_id": {"S": record.image_id}}
    attrs = record.to_attributes() if attrs is None else attrs
    typed.update({name: to_dynamo(value) for name, value in attrs.items()})
    return typed


def pending_put(table: str, record: ResultRecord) -> dict[str, Any]:
    """A PutItem of a pending record that writes nothing if the image has a record."""
    return {"TableName": table, "Item": item(record),
            "ConditionExpression": "attribute_not_exists(image_id)"}


def delete(table: str, image_id: str) -> dict[str, Any]:
    """A DeleteItem of an image's record: its index entries go with it (they are its attributes)."""
    return {"TableName": table, "Key": {"image_id": {"S": image_id}}}


def delete_pending(table: str, image_id: str) -> dict[str, Any]:
    """A Delete of an image's record that holds only while it is still pending."""
    return {**delete(table, image_id), "ConditionExpression": "#status = :pending",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {":pending": to_dynamo("pending")}}


def abandon_put(table: str, record: ResultRecord) -> dict[str, Any]:
    """A PutItem of a failed record that holds only while the image's record is still pending.

    The front gives up this way on an upload that never came: a record that turned done or
    failed meanwhile is left as it is, and of two fronts giving up at once only one writes.
    A put rather than an update, because the web role may update only quota counters.
    """
    if record.status != "failed":
        raise ValueError("abandon_put writes a failed record")
    return {"TableName": table, "Item": item(record),
            "ConditionExpression": "#status = :pending",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {":pending": to_dynamo("pending")}}


def forward_condition(record: ResultRecord, names: dict[str, str],
                      values: dict[str, Any]) -> str:
    """The condition under which `record` may replace what is in the table ("" if any)."""
    if record.status == "failed":
        condition = "#status <> :done"
    elif record.event_time:
        condition = "#status <> :done OR attribute_not_exists(#event) OR #event <= :event"
        names["#event"] = "event_time"
        values[":event"] = to_dynamo(record.event_time)
    else:
        return ""
    names["#status"] = "status"
    values[":done"] = to_dynamo("done")
    return condition


def result_put(table: str, record: ResultRecord, existing_created_at: str | None
               ) -> dict[str, Any]:
    """A PutItem of a result that holds only if the table is as the caller read it.

    `existing_created_at` is the creation time the caller read (None: no record); the item
    keeps it, and the put fails if the record has another one by now or a newer outcome.
    """
    attrs = record.to_attributes()
    names: dict[str, str] = {}
    values: dict[str, Any] = {}
    if existing_created_at is None:
        condition = "attribute_not_exists(image_id)"
    else:
        attrs["created_at"] = existing_created_at
        names["#created"] = "created_at"
        values[":created"] = to_dynamo(existing_created_at)
        condition = "#created = :created"
        forward = forward_condition(record, names, values)
        if forward:
            condition += f" AND ({forward})"
    request: dict[str, Any] = {"TableName": table, "Item": item(record, attrs),
                               "ConditionExpression": condition}
    if names:
        request.update(ExpressionAttributeNames=names, ExpressionAttributeValues=values)
    return request


def result_update(table: str, record: ResultRecord) -> dict[str, Any]:
    """An UpdateItem of a result that keeps the record's creation time and never goes back."""
    attrs = record.to_attributes()
    created_at = attrs.pop("created_at")
    names = {f"#a{i}": name for i, name in enumerate(attrs)}
    values = {f":v{i}": to_dynamo(value) for i, value in enumerate(attrs.values())}
    sets = [f"#a{i} = :v{i}" for i in range(len(attrs))]
    names["#created"] = "created_at"
    values[":created"] = to_dynamo(created_at)
    sets.append("#created = if_not_exists(#created, :created)")
    update = "SET " + ", ".join(sets)
    removed = [BY_LABEL.partition, BY_OWNER_LABEL.partition]
    if BY_STATUS.partition not in attrs:
        # A result that is done leaves the sparse by_open_status index it was in while pending.
        removed.append(BY_STATUS.partition)
    if TTL_ATTRIBUTE not in attrs:
        # A result kept for good drops the short expiry its pending record had (see uploads).
        removed.append(TTL_ATTRIBUTE)
    # Results written before the search items kept their top label on the label indexes;
    # the search items hold it now, so an older record leaves those indexes when rewritten.
    names.update({f"#r{i}": name for i, name in enumerate(removed)})
    update += " REMOVE " + ", ".join(f"#r{i}" for i in range(len(removed)))
    request: dict[str, Any] = {
        "TableName": table,
        "Key": {"image_id": {"S": record.image_id}},
        "UpdateExpression": update,
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }
    forward = forward_condition(record, names, values)
    if forward:
        request["ConditionExpression"] = "attribute_not_exists(image_id) OR " + forward
    return request
