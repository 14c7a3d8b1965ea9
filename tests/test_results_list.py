"""Listing results: newest first, by status, by label best first, cursors, bad parameters."""

from __future__ import annotations

import random

import pytest

from imagepipe.core.ids import new_image_id
from imagepipe.core.records import Label, ResultRecord, ResultStore

LABELS = ["tabby", "espresso", "missile"]


@pytest.fixture
def filled(store: ResultStore) -> dict[str, ResultRecord]:
    """31 results: done with one of three labels, failed, and pending, at distinct times."""
    rng = random.Random(7)
    records = {}
    for i in range(31):
        base = ResultRecord(image_id=new_image_id(), bucket="test-images", key=f"k/{i}.jpg",
                            created_at=f"2026-11-25T10:{i // 60:02d}:{i % 60:02d}.000Z")
        if i % 10 == 3:
            record = base.failed("not_an_image", "no")
        elif i % 10 == 7:
            record = base
            store.create_pending(record)
            records[record.image_id] = record
            continue
        else:
            score = round(rng.uniform(0.05, 0.99), 4)
            record = base.done([Label(LABELS[i % 3], score, 281 + i % 3),
                                Label("other", score / 10, 1)], "m", "1")
        store.save_result(record)
        records[record.image_id] = record
    return records


def _all_pages(client, **params) -> list[dict]:
    seen: list[dict] = []
    cursor = None
    for _ in range(100):
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        response = client.get("/api/results", query_string=query)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert len(body["results"]) <= int(params.get("limit", 20))
        seen.extend(body["results"])
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("pagination did not end")


@pytest.mark.parametrize("limit", [1, 7, 100])
def test_pages_hold_every_record_once_newest_first(client, filled, limit: int) -> None:
    seen = _all_pages(client, limit=limit)

    ids = [r["image_id"] for r in seen]
    assert sorted(ids) == sorted(filled)
    assert len(set(ids)) == len(ids)
    times = [r["created_at"] for r in seen]
    assert times == sorted(times, reverse=True)


def test_status_filter(client, filled) -> None:
    for status in ("done", "failed", "pending"):
        seen = _all_pages(client, status=status, limit=6)
        expected = {i for i, r in filled.items() if r.status == status}
        assert {r["image_id"] for r in seen} == expected
        assert len(seen) == len(expected)


def test_label_search_only_matches_best_first(client, filled) -> None:
    seen = _all_pages(client, label="Tabby ", limit=4)

    expected = {i for i, r in filled.items() if r.labels and r.labels[0].label == "tabby"}
    assert {r["image_id"] for r in seen} == expected
    assert len(seen) == len(expected)
    scores = [r["labels"][0]["score"] for r in seen]
    assert scores == sorted(scores, reverse=True)


def test_min_score_with_and_without_label(client, filled) -> None:
    with_label = _all_pages(client, label="espresso", min_score=0.5, limit=3)
    assert with_label and all(r["labels"][0]["score"] >= 0.5 for r in with_label)
    assert {r["image_id"] for r in with_label} == {
        i for i, r in filled.items()
        if r.labels and r.labels[0].label == "espresso" and r.labels[0].score >= 0.5}

    any_label = _all_pages(client, min_score=0.5, limit=5)
    assert {r["image_id"] for r in any_label} == {
        i for i, r in filled.items() if r.labels and r.labels[0].score >= 0.5}


def test_label_with_non_done_status_is_empty(client, filled) -> None:
    assert _all_pages(client, label="tabby", status="failed") == []


def test_a_rerun_moves_the_record_to_its_new_label(client, store, filled) -> None:
    image_id, record = next((i, r) for i, r in filled.items() if r.status == "done")
    store.save_result(record.done([Label("lynx", 0.5, 287)], "m", "2"))
    assert [r["image_id"] for r in _all_pages(client, label="lynx")] == [image_id]
    assert image_id not in {r["image_id"] for r in _all_pages(client, label=record.labels[0].label)}


def test_empty_table_lists_nothing(client, store) -> None:
    body = client.get("/api/results").get_json()
    assert body == {"results": [], "next_cursor": None}


@pytest.mark.parametrize("params,code", [
    ({"limit": "0"}, "invalid_parameter"),
    ({"limit": "101"}, "invalid_parameter"),
    ({"limit": "ten"}, "invalid_parameter"),
    ({"min_score": "1.5"}, "invalid_parameter"),
    ({"min_score": "nan"}, "invalid_parameter"),
    ({"min_score": "high"}, "invalid_parameter"),
    ({"status": "finished"}, "invalid_parameter"),
    ({"label": " "}, "invalid_parameter"),
    ({"label": "x" * 101}, "invalid_parameter"),
    ({"cursor": "%%%"}, "invalid_cursor"),
    ({"cursor": "eyJpIjoiYnlfbGFiZWwifQ"}, "invalid_cursor"),
    ({"cursor": "x" * 3000}, "invalid_cursor"),
])
def test_bad_parameters_get_400(client, store, params: dict, code: str) -> None:
    response = client.get("/api/results", query_string=params)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == code


def test_cursor_of_another_query_is_refused(client, filled) -> None:
    cursor = client.get("/api/results?limit=2").get_json()["next_cursor"]
    response = client.get("/api/results", query_string={"label": "tabby", "cursor": cursor})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_cursor"
