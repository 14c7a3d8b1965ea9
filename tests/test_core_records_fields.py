"""The one field table: every field of a record survives the table, and its JSON and item shapes."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest

from imagepipe.core.aws import Clients
from imagepipe.core.ids import new_image_id
from imagepipe.core.records import (
    INDEXES,
    Category,
    ImageFacts,
    InvalidCursor,
    Label,
    ResultJson,
    ResultRecord,
    ResultStore,
    WebhookDelivery,
)
from imagepipe.core.records.codec import FIELDS
from imagepipe.core.records.cursors import decode_cursor
from imagepipe.core.records.indexes import feed_partition
from tests.conftest import Write

OWNER = "0b9ae6f2-3c61-4bd3-9e0a-4f1d2c8a7e55"

def _every_field_set(image_id: str) -> ResultRecord:
    """A record with every field, and every field of its parts, away from its default.

    Which fields go together in practice does not matter to the codec: a done record with an
    error here only makes sure both are written and read.
    """
    return ResultRecord(
        image_id=image_id,
        bucket="test-images",
        key="photos/cat.jpg",
        status="done",
        labels=(Label("Tabby ", 0.61, 281, ("domestic cat", "cat")),
                Label("tiger cat", 0.2, 282, ("domestic cat",))),
        categories=(Category("domestic cat", 0.81),),
        words={"tabby": 0.61, "domestic cat": 0.81},
        model_name="efficientnet_lite0",
        model_version="2",
        image=ImageFacts(format="JPEG", width=451, height=300, bytes=12345),
        error_code="was_retried",
        error_message="a transient error before it succeeded",
        created_at="2026-11-25T10:00:00.000Z",
        processed_at="2026-11-25T10:00:01.250Z",
        timings={"decode_ms": 3.25, "inference_ms": 20.5},
        etag="9b2cf535f27731c974343645a3985328",
        source="upload",
        event_time="2026-11-25T10:00:00.500Z",
        sha256="ab" * 32,
        duplicate_of="AAAAAAAAAAAAAAAAAAAAAA",
        reused=True,
        owner=OWNER,
        expires_at=1_900_000_000,
        webhook=WebhookDelivery(attempts=3, last_status=200,
                                delivered_at="2026-11-25T10:00:09.000Z"),
    )


def _defaults(cls: type) -> dict[str, Any]:
    defaults = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return defaults


def _assert_nothing_left_default(value: Any) -> None:
    defaults = _defaults(type(value))
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        assert item not in (None, "", (), {}, False, 0), f"{f.name} is left empty"
        if f.name in defaults:
            assert item != defaults[f.name], f"{f.name} is left at its default"


def test_the_record_under_test_sets_every_field() -> None:
    record = _every_field_set(new_image_id())

    _assert_nothing_left_default(record)
    _assert_nothing_left_default(record.image)
    for part in (*record.labels, *record.categories):
        _assert_nothing_left_default(part)


def test_every_field_has_one_row_in_the_table() -> None:
    rows = [row.name for row in FIELDS]
    assert len(rows) == len(set(rows))
    assert set(rows) == {f.name for f in dataclasses.fields(ResultRecord)}


def test_every_field_survives_the_table(store: ResultStore, write: Write) -> None:
    record = _every_field_set(new_image_id())

    assert write(record)

    assert store.get(record.image_id) == record
    assert store.get_many([record.image_id]) == {record.image_id: record}
    # Read back from the indexes too, whose items are projections of the table's.
    assert store.find_by_content("ab" * 32, "efficientnet_lite0", "2", OWNER) == record
    # Another owner's copy of the same bytes does not find it.
    assert store.find_by_content("ab" * 32, "efficientnet_lite0", "2") is None
    # By any of its words, through its search items (records.search).
    assert store.list_results(label="tabby").records == [record]
    assert store.list_results(label="Domestic Cat").records == [record]
    assert store.list_results(status="done").records == [record]
    # And from the owner's own indexes.
    assert store.list_results(owner=OWNER).records == [record]
    assert store.list_results(owner=OWNER, status="done").records == [record]
    assert store.list_results(owner=OWNER, label="tabby").records == [record]


def test_the_json_shape() -> None:
    image_id = new_image_id()

    body = _every_field_set(image_id).to_json()

    assert body == {
        "image_id": image_id,
        "status": "done",
        "labels": [{"label": "Tabby ", "score": 0.61, "class_id": 281,
                    "parents": ["domestic cat", "cat"]},
                   {"label": "tiger cat", "score": 0.2, "class_id": 282,
                    "parents": ["domestic cat"]}],
        "categories": [{"label": "domestic cat", "score": 0.81}],
        "model": {"name": "efficientnet_lite0", "version": "2"},
        "image": {"bucket": "test-images", "key": "photos/cat.jpg", "format": "JPEG",
                  "width": 451, "height": 300, "bytes": 12345},
        "error": {"code": "was_retried", "message": "a transient error before it succeeded"},
        "created_at": "2026-11-25T10:00:00.000Z",
        "processed_at": "2026-11-25T10:00:01.250Z",
        "timings": {"decode_ms": 3.25, "inference_ms": 20.5},
        "source": "upload",
        "sha256": "ab" * 32,
        "duplicate_of": "AAAAAAAAAAAAAAAAAAAAAA",
        "reused": True,
        "owner": OWNER,
        "webhook": {"attempts": 3, "last_status": 200, "delivered_at": "2026-11-25T10:00:09.000Z"},
    }
    # The keys in their documented order, which the JSON files of an export keep.
    assert list(body) == list(ResultJson.__annotations__)


def test_the_json_of_a_record_with_nothing_but_its_key() -> None:
    record = ResultRecord(image_id="AAAAAAAAAAAAAAAAAAAAAA", bucket="b", key="k",
                          created_at="2026-11-25T10:00:00.000Z", model_name="m",
                          error_code="c")

    body = record.to_json()

    # An object whose leading field is set shows its other fields as empty strings.
    assert body["model"] == {"name": "m", "version": ""}
    assert body["error"] == {"code": "c", "message": ""}
    bare = dataclasses.replace(record, model_name=None, error_code=None).to_json()
    assert bare["model"] is None and bare["error"] is None
    assert bare["image"] == {"bucket": "b", "key": "k", "format": None, "width": None,
                             "height": None, "bytes": None}
    assert (bare["labels"], bare["categories"], bare["timings"], bare["sha256"],
            bare["reused"]) == ([], [], {}, None, False)


def test_the_item_in_the_table(store: ResultStore, clients: Clients) -> None:
    record = _every_field_set(new_image_id())
    store.save_result(record)

    item = clients.dynamodb.get_item(TableName=store.table,
                                     Key={"image_id": {"S": record.image_id}})["Item"]

    assert item == {
        "image_id": {"S": record.image_id},
        "status": {"S": "done"},
        "bucket": {"S": "test-images"},
        "object_key": {"S": "photos/cat.jpg"},
        "labels": {"L": [
            {"M": {"label": {"S": "Tabby "}, "score": {"N": "0.61"}, "class_id": {"N": "281"},
                   "parents": {"L": [{"S": "domestic cat"}, {"S": "cat"}]}}},
            {"M": {"label": {"S": "tiger cat"}, "score": {"N": "0.2"},
                   "class_id": {"N": "282"}, "parents": {"L": [{"S": "domestic cat"}]}}},
        ]},
        "categories": {"L": [{"M": {"label": {"S": "domestic cat"}, "score": {"N": "0.81"}}}]},
        "search_words": {"M": {"tabby": {"N": "0.61"}, "domestic cat": {"N": "0.81"}}},
        "model_name": {"S": "efficientnet_lite0"},
        "model_version": {"S": "2"},
        "image": {"M": {"format": {"S": "JPEG"}, "width": {"N": "451"},
                        "height": {"N": "300"}, "bytes": {"N": "12345"}}},
        "error_code": {"S": "was_retried"},
        "error_message": {"S": "a transient error before it succeeded"},
        "created_at": {"S": "2026-11-25T10:00:00.000Z"},
        "processed_at": {"S": "2026-11-25T10:00:01.250Z"},
        "timings": {"M": {"decode_ms": {"N": "3.25"}, "inference_ms": {"N": "20.5"}}},
        "etag": {"S": "9b2cf535f27731c974343645a3985328"},
        "source": {"S": "upload"},
        "event_time": {"S": "2026-11-25T10:00:00.500Z"},
        "sha256": {"S": "ab" * 32},
        "duplicate_of": {"S": "AAAAAAAAAAAAAAAAAAAAAA"},
        "reused": {"BOOL": True},
        "owner": {"S": OWNER},
        "expires_at": {"N": "1900000000"},
        "webhook": {"M": {"attempts": {"N": "3"}, "last_status": {"N": "200"},
                          "delivered_at": {"S": "2026-11-25T10:00:09.000Z"}}},
        # The indexes' keys, beyond the record's own fields.
        "feed": {"S": feed_partition(record.image_id)},
        "top_score": {"N": "0.61"},
        "content_model": {"S": f"efficientnet_lite0@2#{OWNER}"},
        "owner_status": {"S": f"{OWNER}#done"},
    }


def test_unset_fields_are_null_but_index_keys_are_absent(store: ResultStore,
                                                         clients: Clients) -> None:
    record = ResultRecord(image_id=new_image_id(), bucket="b", key="k")
    store.create_pending(record)

    item = clients.dynamodb.get_item(TableName=store.table,
                                     Key={"image_id": {"S": record.image_id}})["Item"]

    assert item["model_name"] == {"NULL": True} and item["etag"] == {"NULL": True}
    assert not {"sha256", "top_label", "top_score", "content_model", "owner", "owner_status",
                "owner_label", "expires_at"} & set(item)
    assert item["open_status"] == {"S": "pending"}
    assert store.get(record.image_id) == record


@pytest.mark.parametrize("body", [b"[1]", b'"text"', b"3", b"null"])
def test_a_cursor_that_is_not_an_object_is_refused(body: bytes) -> None:
    cursor = base64.urlsafe_b64encode(body).decode().rstrip("=")

    with pytest.raises(InvalidCursor):
        decode_cursor(cursor, INDEXES[0])
