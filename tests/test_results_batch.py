"""POST /api/results/batch and the BatchGetItem reads behind it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from imagepipe.core.ids import new_image_id
from imagepipe.core.records import Label, ResultRecord, ResultStore, StoreError


def _done(store: ResultStore, key: str) -> ResultRecord:
    record = ResultRecord(image_id=new_image_id(), bucket="test-images", key=key).done(
        [Label("tabby", 0.7, 281)], "m", "1")
    store.save_result(record)
    return record


def test_batch_keeps_the_order_and_reports_unknown_ids(client, store) -> None:
    # Given two results, and IDs asked for in an order of the caller's choosing
    a, b = _done(store, "a.jpg"), _done(store, "b.jpg")
    unknown = new_image_id()
    pending = ResultRecord(image_id=new_image_id(), bucket="test-images", key="p.jpg")
    store.create_pending(pending)

    response = client.post("/api/results/batch",
                           json={"ids": [b.image_id, unknown, a.image_id, pending.image_id,
                                         b.image_id]})

    assert response.status_code == 200
    results = response.get_json()["results"]
    assert [r["image_id"] for r in results] == [b.image_id, unknown, a.image_id,
                                                pending.image_id, b.image_id]
    assert results[0] == b.to_json()
    assert results[1] == {"image_id": unknown, "status": "not_found",
                          "error": {"code": "not_found", "message": f"no image {unknown}"}}
    assert results[2]["image"]["key"] == "a.jpg"
    assert results[3]["status"] == "pending"


def test_a_hundred_ids_in_one_request(client, store) -> None:
    records = [_done(store, f"k/{i}.jpg") for i in range(60)]
    ids = [r.image_id for r in records] + [new_image_id() for _ in range(40)]

    results = client.post("/api/results/batch", json={"ids": ids}).get_json()["results"]

    assert [r["image_id"] for r in results] == ids
    assert sum(1 for r in results if r["status"] == "not_found") == 40


@pytest.mark.parametrize("body,code", [
    ({"ids": []}, "invalid_ids"),
    ({"ids": ["a" * 22] * 101}, "invalid_ids"),
    ({"ids": "a" * 22}, "invalid_ids"),
    ({"id": ["a" * 22]}, "invalid_ids"),
    ([], "invalid_ids"),
    ({"ids": ["a" * 22, "not-an-id"]}, "invalid_image_id"),
    ({"ids": ["a" * 22, 7]}, "invalid_image_id"),
    ({"ids": ["../" + "a" * 19]}, "invalid_image_id"),
])
def test_bad_batches_get_400(client, store, body: Any, code: str) -> None:
    response = client.post("/api/results/batch", json=body)

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == code


def test_not_json_gets_400(client, store) -> None:
    response = client.post("/api/results/batch", data="ids=1",
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_ids"


class _Throttled:
    """A DynamoDB client that leaves keys unprocessed for the first `times` batch calls."""

    def __init__(self, real: Any, times: int, keep: int = 1) -> None:
        self.real = real
        self.times = times
        self.keep = keep
        self.calls: list[int] = []

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        (table, request), = RequestItems.items()
        self.calls.append(len(request["Keys"]))
        if self.times > 0:
            self.times -= 1
            answered, left = request["Keys"][:self.keep], request["Keys"][self.keep:]
            response: dict[str, Any] = {"Responses": {table: []}}
            if answered:
                response = self.real.batch_get_item(
                    RequestItems={table: dict(request, Keys=answered)})
            response["UnprocessedKeys"] = {table: dict(request, Keys=left)} if left else {}
            return response
        return self.real.batch_get_item(RequestItems=RequestItems)

    def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        (table, requests), = RequestItems.items()
        self.calls.append(len(requests))
        if self.times > 0:
            self.times -= 1
            done, left = requests[:self.keep], requests[self.keep:]
            if done:
                self.real.batch_write_item(RequestItems={table: done})
            return {"UnprocessedItems": {table: left} if left else {}}
        return self.real.batch_write_item(RequestItems=RequestItems)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_unprocessed_keys_are_asked_again(clients, settings, store) -> None:
    records = [_done(store, f"u/{i}.jpg") for i in range(5)]
    throttled = _Throttled(clients.dynamodb, times=3)
    sleeps: list[float] = []
    flaky = ResultStore(throttled, settings.table, sleep=sleeps.append)

    found = flaky.get_many([r.image_id for r in records] + [new_image_id()])

    assert set(found) == {r.image_id for r in records}
    assert found[records[2].image_id] == records[2]
    # Each call answers one key and leaves the rest: 6, 5, 4 then the remaining 3 at once.
    assert throttled.calls == [6, 5, 4, 3]
    assert len(sleeps) == 3


def test_keys_left_unprocessed_for_good_are_an_error(client, app, clients, settings,
                                                     store) -> None:
    records = [_done(store, f"v/{i}.jpg") for i in range(3)]
    stuck = ResultStore(_Throttled(clients.dynamodb, times=100, keep=0), settings.table,
                        sleep=lambda s: None)
    with pytest.raises(StoreError):
        stuck.get_many([r.image_id for r in records])

    # The API answers 503, in the one error shape.
    app.extensions["imagepipe"] = dataclasses.replace(app.extensions["imagepipe"], store=stuck)
    response = client.post("/api/results/batch", json={"ids": [records[0].image_id]})
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "backend_unavailable"


def _labelled(words: int) -> ResultRecord:
    labels = [Label(f"label {i}", 0.5 - i / 100, i) for i in range(words)]
    return ResultRecord(image_id=new_image_id(), bucket="test-images", key="s.jpg").done(
        labels, "m", "1")


def test_unprocessed_search_items_are_written_again(clients, settings, store) -> None:
    throttled = _Throttled(clients.dynamodb, times=2)
    sleeps: list[float] = []
    flaky = ResultStore(throttled, settings.table, sleep=sleeps.append)
    record = _labelled(4)

    flaky.save_result(record)

    # Each throttled call writes one item and leaves the rest: 4, 3, then the remaining 2.
    assert throttled.calls == [4, 3, 2]
    assert len(sleeps) == 2
    for word in record.words:
        assert [r.image_id for r in store.list_results(label=word).records] == [record.image_id]


def test_search_items_left_unprocessed_for_good_are_an_error(clients, settings, store) -> None:
    stuck = ResultStore(_Throttled(clients.dynamodb, times=100, keep=0), settings.table,
                        sleep=lambda s: None)
    with pytest.raises(StoreError) as raised:
        stuck.save_result(_labelled(3))
    assert raised.value.code == "UnprocessedItems"


def test_get_many_reads_more_than_a_hundred(store) -> None:
    records = [_done(store, f"w/{i}.jpg") for i in range(230)]

    found = store.get_many([r.image_id for r in records])

    assert len(found) == 230
