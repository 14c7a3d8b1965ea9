"""The sharded feed (by_created) and the sparse by_open_status index: writes spread, reads merge."""

from __future__ import annotations

import base64
import json
from collections import Counter
from typing import Any

import pytest

from imagepipe.core.ids import new_image_id
from imagepipe.core.records import InvalidCursor, Label, ResultRecord, ResultStore, writes
from imagepipe.core.records.indexes import (
    BY_CREATED,
    BY_STATUS,
    FEED_PARTITIONS,
    FEED_SHARDS,
    feed_partition,
)
from imagepipe.core.records.reindex import Reindexed, reindex


def _record(created_at: str, shard: str | None = None) -> ResultRecord:
    image_id = new_image_id()
    while shard is not None and feed_partition(image_id) != shard:
        image_id = new_image_id()
    return ResultRecord(image_id=image_id, bucket="b", key="k", created_at=created_at)


def _stamp(second: int) -> str:
    return f"2026-11-25T10:{second // 60:02d}:{second % 60:02d}.000Z"


@pytest.fixture
def mixed(store: ResultStore) -> list[ResultRecord]:
    """Forty results over every shard, some created in the same millisecond, of each status."""
    records = []
    for n in range(40):
        # Pairs share a creation time: a merge must not lose or repeat either of a tie.
        # Every shard holds some, unevenly: the first three hold most, so the other shards
        # run out first and drop out of the cursor while those three go on.
        record = _record(_stamp(n // 2), FEED_PARTITIONS[n % 8 if n < 16 else n % 3])
        store.create_pending(record)
        if n % 4 == 1:
            record = record.failed("not_an_image", "no")
            store.save_result(record)
        elif n % 4 != 3:
            record = record.done([Label("tabby", 0.1 + n / 100, 281)], "m", "1")
            store.save_result(record)
        records.append(record)
    assert {feed_partition(r.image_id) for r in records} == set(FEED_PARTITIONS)
    return records


def _pages(store: ResultStore, limit: int, **params: Any) -> list[list[ResultRecord]]:
    pages, cursor = [], None
    while True:
        page = store.list_results(limit=limit, cursor=cursor, **params)
        pages.append(page.records)
        cursor = page.next_cursor
        if cursor is None:
            return pages


def test_writes_spread_over_every_shard() -> None:
    shards = Counter(feed_partition(new_image_id()) for _ in range(8000))
    assert set(shards) == set(FEED_PARTITIONS) and len(shards) == FEED_SHARDS
    # About a thousand each: no shard takes much more than its share of the writes.
    assert max(shards.values()) < 1.15 * 8000 / FEED_SHARDS


def test_every_write_of_one_result_stays_in_its_shard(store: ResultStore, clients) -> None:
    record = _record(_stamp(0))
    store.create_pending(record)
    store.save_result(record.done([Label("tabby", 0.5, 281)], "m", "1"))
    item = clients.dynamodb.get_item(TableName=store.table,
                                     Key={"image_id": {"S": record.image_id}})["Item"]
    assert item["feed"] == {"S": feed_partition(record.image_id)}


@pytest.mark.parametrize("limit", [1, 3, 7, 40, 100])
def test_pages_of_all_shards_hold_every_result_once_newest_first(
        store: ResultStore, mixed: list[ResultRecord], limit: int) -> None:
    pages = _pages(store, limit)

    listed = [record for page in pages for record in page]
    assert sorted(r.image_id for r in listed) == sorted(r.image_id for r in mixed)
    assert [r.created_at for r in listed] == sorted((r.created_at for r in listed), reverse=True)
    assert all(len(page) == limit for page in pages[:-1])


@pytest.mark.parametrize("status", ["done", "failed", "pending"])
def test_pages_of_one_status(store: ResultStore, mixed: list[ResultRecord], status: str) -> None:
    listed = [record for page in _pages(store, 3, status=status) for record in page]

    expected = [r for r in mixed if r.status == status]
    assert sorted(r.image_id for r in listed) == sorted(r.image_id for r in expected)
    assert [r.created_at for r in listed] == sorted((r.created_at for r in listed), reverse=True)
    assert listed == [store.get(r.image_id) for r in listed]


def test_done_with_a_minimum_score(store: ResultStore, mixed: list[ResultRecord]) -> None:
    listed = [r for page in _pages(store, 2, status="done", min_score=0.3) for r in page]
    assert sorted(r.image_id for r in listed) == sorted(
        r.image_id for r in mixed if r.status == "done" and r.labels[0].score >= 0.3)


def test_counts_of_each_status(store: ResultStore, mixed: list[ResultRecord]) -> None:
    expected = Counter(r.status for r in mixed)
    assert {s: store.count(s) for s in ("pending", "done", "failed")} == expected


def test_a_page_of_the_feed_is_one_query_per_shard(store: ResultStore, clients, monkeypatch,
                                                  mixed: list[ResultRecord]) -> None:
    calls: list[str] = []
    original = clients.dynamodb.query

    def query(**request: Any) -> Any:
        calls.append(request["IndexName"])
        return original(**request)

    monkeypatch.setattr(clients.dynamodb, "query", query)
    store.list_results(limit=5)
    assert calls == [BY_CREATED.name] * FEED_SHARDS


def test_the_sparse_index_holds_only_pending_and_failed(store: ResultStore, clients) -> None:
    pending, failed_then_done, done = (_record(_stamp(n)) for n in range(3))
    for record in (pending, failed_then_done, done):
        store.create_pending(record)
    # Both outcomes by the UpdateItem path, which must remove the attribute, not leave it.
    store.save_result(failed_then_done.failed("decode_error", "no"))
    store.save_result(failed_then_done.done([Label("tabby", 0.5, 281)], "m", "1"))
    store.save_result(done.done([Label("tabby", 0.5, 281)], "m", "1"))

    items = clients.dynamodb.scan(TableName=store.table)["Items"]
    held = {i["image_id"]["S"]: i[BY_STATUS.partition]["S"] for i in items
            if BY_STATUS.partition in i}
    assert held == {pending.image_id: "pending"}
    assert (store.count("pending"), store.count("failed"), store.count("done")) == (1, 0, 2)


def _cursor_body(cursor: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))


def _cursor(body: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


def test_a_feed_cursor_is_bound_to_its_query(store: ResultStore,
                                             mixed: list[ResultRecord]) -> None:
    cursor = store.list_results(limit=3).next_cursor
    assert cursor is not None
    body = _cursor_body(cursor)

    with pytest.raises(InvalidCursor):
        store.list_results(limit=3, status="done", cursor=cursor)
    with pytest.raises(InvalidCursor):
        store.list_results(limit=3, status="pending", cursor=cursor)
    done_cursor = store.list_results(limit=3, status="done").next_cursor
    with pytest.raises(InvalidCursor):
        store.list_results(limit=3, cursor=done_cursor)
    # A shard's key moved to another shard, a shard that does not exist, no shard at all.
    shards = body["s"]
    keyed = next(p for p, key in shards.items() if key)
    other = next(p for p in FEED_PARTITIONS if p != keyed)
    for positions in ({other: shards[keyed]}, {"all#99": None}, {}, [None]):
        with pytest.raises(InvalidCursor):
            store.list_results(limit=3, cursor=_cursor({**body, "s": positions}))


def _old_item(record: ResultRecord) -> dict[str, Any]:
    """A result as the version before the sharded feed wrote it."""
    attrs = record.to_attributes()
    attrs["feed"] = "all"
    attrs.pop(BY_STATUS.partition, None)
    return writes.item(record, attrs)


def test_reindex_moves_older_results_into_the_shards(store: ResultStore, clients) -> None:
    # Given results written before the feed was sharded, of every status
    old = [_record(_stamp(n)) for n in range(12)]
    old = [r if n % 3 == 0 else r.failed("decode_error", "no") if n % 3 == 1
           else r.done([Label("tabby", 0.5, 281)], "m", "1") for n, r in enumerate(old)]
    for record in old:
        clients.dynamodb.put_item(TableName=store.table, Item=_old_item(record))
    assert store.list_results(limit=50).records == []

    result = reindex(clients.dynamodb, store.table, segments=3)

    assert result == Reindexed(rewritten=12, skipped=0)
    listed = store.list_results(limit=50).records
    assert sorted(r.image_id for r in listed) == sorted(r.image_id for r in old)
    assert {s: store.count(s) for s in ("pending", "done", "failed")} == Counter(
        r.status for r in old)
    assert reindex(clients.dynamodb, store.table) == Reindexed(0, 0)


def test_reindex_leaves_a_result_written_since_its_scan(store: ResultStore, clients,
                                                        monkeypatch) -> None:
    record = _record(_stamp(0))
    clients.dynamodb.put_item(TableName=store.table, Item=_old_item(record))
    original = clients.dynamodb.scan

    def scan_then_a_newer_write(**request: Any) -> Any:
        page = original(**request)
        if page.get("Items"):
            # The result turns done, by the current version, between the scan and the rewrite.
            store.save_result(record.done([Label("tabby", 0.5, 281)], "m", "1"))
        return page

    monkeypatch.setattr(clients.dynamodb, "scan", scan_then_a_newer_write)
    assert reindex(clients.dynamodb, store.table, segments=1) == Reindexed(0, 1)
    item = clients.dynamodb.get_item(TableName=store.table,
                                     Key={"image_id": {"S": record.image_id}})["Item"]
    assert item["feed"] == {"S": feed_partition(record.image_id)}
    assert BY_STATUS.partition not in item
