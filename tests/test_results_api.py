"""The results API: by image ID, by object key, errors."""

from __future__ import annotations

import dataclasses

from imagepipe.core.ids import image_id_for_object, new_image_id
from imagepipe.core.records import Label, ResultRecord, ResultStore
from imagepipe.core.settings import Settings


def test_result_by_id(client, store: ResultStore) -> None:
    record = ResultRecord(image_id=new_image_id(), bucket="test-images", key="uploads/x.jpg")
    store.save_result(record.done([Label("espresso", 0.8, 967)], "efficientnet_lite0", "1"))

    response = client.get(f"/api/results/{record.image_id}")

    assert response.status_code == 200
    body = response.get_json()
    assert body["image_id"] == record.image_id
    assert body["status"] == "done"
    assert body["labels"] == [{"label": "espresso", "score": 0.8, "class_id": 967, "parents": []}]
    assert body["categories"] == []
    assert set(body) >= {"image_id", "status", "labels", "model", "image", "error",
                         "created_at", "processed_at"}


def test_result_by_key(client, store: ResultStore, settings: Settings) -> None:
    key = "holiday/day 1/IMG 0001+final.jpg"
    image_id = image_id_for_object(settings.bucket, key)
    store.save_result(ResultRecord(image_id=image_id, bucket=settings.bucket, key=key)
                      .failed("not_an_image", "no"))

    response = client.get("/api/results", query_string={"key": key})

    assert response.status_code == 200
    assert response.get_json()["image_id"] == image_id
    assert response.get_json()["image"]["key"] == key


def test_unknown_id_is_404(client) -> None:
    response = client.get(f"/api/results/{new_image_id()}")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_unknown_key_is_404(client) -> None:
    response = client.get("/api/results?key=nothing.jpg")
    assert response.status_code == 404


def test_malformed_ids_are_400(client) -> None:
    for bad in ("short", "x" * 23, "a" * 21 + "$", "x" * 5000):
        response = client.get(f"/api/results/{bad}")
        assert response.status_code == 400, bad
        assert response.get_json()["error"]["code"] == "invalid_image_id"


def test_key_parameter_is_checked(client) -> None:
    assert client.get("/api/results?key=").status_code == 400
    assert client.get("/api/results", query_string={"key": "k" * 1025}).status_code == 400


def test_healthz(app) -> None:
    # Anonymous, as a load balancer asks.
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "auth": "on"}


def test_healthz_says_in_words_when_sign_in_is_off(settings, client_for) -> None:
    response = client_for(dataclasses.replace(settings, auth=False), user=None).get("/healthz")
    assert response.status_code == 200
    assert response.get_json()["auth"].startswith("off: sign-in is off, anyone")
