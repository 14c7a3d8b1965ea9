"""Content hashes on records, the by_content index, counts by status and index upgrades."""

from __future__ import annotations

import pytest

from imagepipe.core.ids import new_image_id
from imagepipe.core.provision import provision, table_definition
from imagepipe.core.records import INDEXES, Label, ResultRecord, ResultStore

SHA = "ab" * 32


def _record(sha256: str | None = SHA, key: str = "photos/cat.jpg") -> ResultRecord:
    return ResultRecord(image_id=new_image_id(), bucket="test-images", key=key, sha256=sha256)


def test_hash_and_reuse_round_trip(store: ResultStore) -> None:
    original = _record().done([Label("tabby", 0.6, 281)], "m", "2")
    copy = _record(key="photos/copy.jpg").reusing(original)
    store.save_result(original)
    store.save_result(copy)

    read = store.get(copy.image_id)

    assert read == copy
    body = read.to_json()
    assert body["sha256"] == SHA
    assert body["duplicate_of"] == original.image_id
    assert body["reused"] is True
    assert body["labels"] == [{"label": "tabby", "score": 0.6, "class_id": 281, "parents": []}]
    assert body["model"] == {"name": "m", "version": "2"}
    assert store.get(original.image_id).to_json()["reused"] is False


def test_a_copy_of_a_copy_points_at_the_original() -> None:
    original = _record().done([Label("tabby", 0.6, 281)], "m", "2")
    first = _record().reusing(original)

    assert _record().reusing(first).duplicate_of == original.image_id
    # An image redelivered after it was done keeps its labels and stays what it was.
    again = ResultRecord(image_id=original.image_id, bucket="b", key="k").reusing(original)
    assert again.labels == original.labels
    assert again.duplicate_of is None and not again.reused
    copy_again = ResultRecord(image_id=first.image_id, bucket="b", key="k").reusing(first)
    assert copy_again.duplicate_of == original.image_id and copy_again.reused


def test_only_done_results_can_be_reused() -> None:
    with pytest.raises(ValueError, match="not a done result"):
        _record().reusing(_record().failed("not_an_image", "no"))


def test_content_lookup_finds_done_results_of_the_same_model_only(store: ResultStore) -> None:
    done = _record().done([Label("tabby", 0.6, 281)], "m", "2")
    store.save_result(done)
    store.save_result(_record(sha256="cd" * 32).failed("corrupt_image", "half a file"))
    store.create_pending(_record(sha256="ef" * 32))

    assert store.find_by_content(SHA, "m", "2") == done
    assert store.find_by_content(SHA, "m", "3") is None
    assert store.find_by_content(SHA, "other", "2") is None
    assert store.find_by_content("cd" * 32, "m", "2") is None  # failed
    assert store.find_by_content("ef" * 32, "m", "2") is None  # pending
    assert store.find_by_content("00" * 32, "m", "2") is None


def test_records_without_a_hash_are_stored(store: ResultStore) -> None:
    record = _record(sha256=None).done([Label("tabby", 0.6, 281)], "m", "2")
    assert store.save_result(record)
    assert store.get(record.image_id) == record


def test_counts_and_oldest_by_status(store: ResultStore) -> None:
    for _i in range(7):
        store.save_result(_record().done([Label("x", 0.5, 1)], "m", "1"))
    for _i in range(3):
        store.save_result(_record().failed("not_an_image", "no"))
    first = ResultRecord(image_id=new_image_id(), bucket="b", key="p/0",
                         created_at="2026-01-01T00:00:00.000Z")
    store.create_pending(first)
    store.create_pending(ResultRecord(image_id=new_image_id(), bucket="b", key="p/1",
                                      created_at="2026-01-02T00:00:00.000Z"))

    assert (store.count("done"), store.count("failed"), store.count("pending")) == (7, 3, 2)
    assert store.oldest("pending") == first
    assert store.oldest("failed").status == "failed"


def test_table_definition_declares_the_content_index() -> None:
    definition = table_definition("t")
    names = [g["IndexName"] for g in definition["GlobalSecondaryIndexes"]]
    assert names == [index.name for index in INDEXES]
    assert "by_content" in names
    types = {a["AttributeName"]: a["AttributeType"] for a in definition["AttributeDefinitions"]}
    assert types["sha256"] == "S" and types["content_model"] == "S"


def test_provision_adds_an_index_an_older_table_lacks(settings, clients) -> None:
    # Given a table made before the by_content index existed
    old = table_definition(settings.table)
    old["GlobalSecondaryIndexes"] = [g for g in old["GlobalSecondaryIndexes"]
                                     if g["IndexName"] != "by_content"]
    old["AttributeDefinitions"] = [a for a in old["AttributeDefinitions"]
                                   if a["AttributeName"] not in ("sha256", "content_model")]
    clients.dynamodb.create_table(**old)

    provision(settings, clients)

    table = clients.dynamodb.describe_table(TableName=settings.table)["Table"]
    assert "by_content" in {g["IndexName"] for g in table["GlobalSecondaryIndexes"]}
    store = ResultStore(clients.dynamodb, settings.table)
    done = _record().done([Label("tabby", 0.6, 281)], "m", "2")
    store.save_result(done)
    assert store.find_by_content(SHA, "m", "2") == done
