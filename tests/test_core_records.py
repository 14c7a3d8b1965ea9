"""The result record, its table round trip and its never-backwards writes."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from imagepipe.core.ids import image_id_for_object, is_image_id, new_image_id, upload_key
from imagepipe.core.records import UNREAD, ImageFacts, Label, ResultRecord, ResultStore
from tests.conftest import Write


def _record(image_id: str | None = None) -> ResultRecord:
    return ResultRecord(image_id=image_id or new_image_id(), bucket="test-images",
                        key="photos/cat.jpg", etag="abc")


def test_new_ids_are_random_url_safe_128_bit() -> None:
    ids = {new_image_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(is_image_id(i) and len(i) == 22 for i in ids)


def test_object_ids_are_stable_and_distinct() -> None:
    a = image_id_for_object("b", "photos/cat.jpg")
    assert a == image_id_for_object("b", "photos/cat.jpg")
    assert is_image_id(a)
    assert a != image_id_for_object("b", "photos/cat.jpeg")
    assert a != image_id_for_object("other", "photos/cat.jpg")


def test_upload_keys_carry_their_id() -> None:
    image_id = new_image_id()
    assert image_id_for_object("b", upload_key(image_id, "jpg")) == image_id
    assert image_id_for_object("b", f"elsewhere/{image_id}.jpg") != image_id


@pytest.mark.parametrize("value", ["", "short", "x" * 23, "a" * 21 + "!", "../" + "a" * 19])
def test_malformed_ids(value: str) -> None:
    assert not is_image_id(value)


def test_round_trip_through_the_table(store: ResultStore) -> None:
    pending = _record()
    assert store.create_pending(pending)
    done = pending.done(
        [Label("tabby", 0.61, 281), Label("tiger cat", 0.2, 282)],
        "efficientnet_lite0", "1",
        image=ImageFacts(format="JPEG", width=451, height=300, bytes=12345),
        timings={"decode_ms": 3.25, "inference_ms": 20.5},
    )
    assert store.save_result(done)

    read = store.get(pending.image_id)

    assert read == done
    body = read.to_json()
    assert body["status"] == "done"
    assert body["labels"][0] == {"label": "tabby", "score": 0.61, "class_id": 281,
                                 "parents": []}
    assert body["model"] == {"name": "efficientnet_lite0", "version": "1"}
    assert body["image"] == {"bucket": "test-images", "key": "photos/cat.jpg", "format": "JPEG",
                             "width": 451, "height": 300, "bytes": 12345}
    assert body["error"] is None
    assert body["created_at"] == pending.created_at


def test_pending_never_overwrites(store: ResultStore, write: Write) -> None:
    record = _record()
    assert store.create_pending(record)
    write(record.done([Label("tabby", 0.9, 281)], "m", "1"))
    assert not store.create_pending(record)
    assert store.get(record.image_id).status == "done"


def test_failure_never_replaces_done(store: ResultStore, write: Write) -> None:
    record = _record()
    write(record.done([Label("tabby", 0.9, 281)], "m", "1"))
    assert not write(record.failed("object_missing", "gone"))
    assert store.get(record.image_id).status == "done"


def test_done_replaces_failed_and_done(store: ResultStore, write: Write) -> None:
    record = _record()
    write(record.failed("corrupt_image", "truncated"))
    assert write(record.done([Label("tabby", 0.9, 281)], "m", "1"))
    assert write(record.done([Label("tiger cat", 0.8, 282)], "m", "2"))
    assert store.get(record.image_id).labels[0].label == "tiger cat"


def test_failed_record_json(store: ResultStore) -> None:
    record = _record().failed("not_an_image", "the object is not an image")
    store.save_result(record)
    body = store.get(record.image_id).to_json()
    assert body["status"] == "failed"
    assert body["labels"] == []
    assert body["error"] == {"code": "not_an_image", "message": "the object is not an image"}
    assert body["model"] is None


def test_unknown_id_is_none(store: ResultStore) -> None:
    assert store.get(new_image_id()) is None


def test_late_duplicate_of_an_older_event_cannot_undo_a_newer_result(
        store: ResultStore, write: Write) -> None:
    record = _record()
    newer = record.done([Label("lynx", 0.7, 287)], "m", "2")
    newer = dataclasses.replace(newer, event_time="2026-11-25T12:00:05.000Z")
    older = record.done([Label("tabby", 0.9, 281)], "m", "1")
    older = dataclasses.replace(older, event_time="2026-11-25T12:00:01.000Z")
    assert write(newer)

    assert not write(older)
    assert store.get(record.image_id).labels[0].label == "lynx"
    # The same event again is an idempotent re-run.
    assert write(newer)


def test_the_put_keeps_the_creation_time_it_read(store: ResultStore) -> None:
    pending = dataclasses.replace(_record(), created_at="2026-11-25T10:00:00.000Z")
    assert store.create_pending(pending)
    created = store.creation_times([pending.image_id, "unknown-id"])
    assert created == {pending.image_id: "2026-11-25T10:00:00.000Z"}

    done = pending.done([Label("tabby", 0.9, 281)], "m", "1")
    done = dataclasses.replace(done, created_at="2026-11-25T10:00:09.000Z")
    assert store.save_result(done, existing_created_at=created[pending.image_id])

    assert store.get(pending.image_id).created_at == "2026-11-25T10:00:00.000Z"


def test_a_stale_read_falls_back_to_the_update(store: ResultStore) -> None:
    # Read "no record", then the pending record appears before the result is written
    record = _record()
    pending = dataclasses.replace(record, created_at="2026-11-25T10:00:00.000Z")
    assert store.create_pending(pending)
    done = dataclasses.replace(record.done([Label("tabby", 0.9, 281)], "m", "1"),
                               created_at="2026-11-25T10:00:09.000Z")

    assert store.save_result(done, existing_created_at=None)

    read = store.get(record.image_id)
    assert read.status == "done" and read.created_at == "2026-11-25T10:00:00.000Z"
    # A creation time that no longer matches falls back the same way
    again = done.done([Label("lynx", 0.7, 287)], "m", "2")
    assert store.save_result(again, existing_created_at="2020-01-01T00:00:00.000Z")
    assert store.get(record.image_id).labels[0].label == "lynx"


def test_a_known_creation_time_costs_one_put(store: ResultStore, clients: Any) -> None:
    calls: list[str] = []

    def seen(model: Any, **_: Any) -> None:
        calls.append(model.name)

    events = clients.dynamodb.meta.events
    events.register("before-call.dynamodb.*", seen)
    try:
        record = _record()
        store.save_result(record.done([Label("tabby", 0.9, 281)], "m", "1"),
                          existing_created_at=None)
        store.save_result(record.done([Label("lynx", 0.7, 287)], "m", "2"),
                          existing_created_at=UNREAD)
    finally:
        events.unregister("before-call.dynamodb.*", seen)

    # Each result's search items go in one BatchWriteItem after it (records.search).
    assert calls == ["PutItem", "BatchWriteItem", "UpdateItem", "BatchWriteItem"]
