"""DELETE /api/results/<id> and the pending uploads that never come: nothing left behind."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone

from imagepipe.core.ids import new_image_id, upload_key
from imagepipe.core.quota import DAILY_QUOTA, utc_day
from imagepipe.core.records import Label, ResultRecord, ResultStore
from imagepipe.core.settings import Settings
from imagepipe.core.webhooks import WebhookStore
from tests.conftest import count_results, signed_in


def _done_image(clients, store: ResultStore, settings: Settings, owner: str | None) -> str:
    """A done result of an object in the bucket, as the processor leaves it."""
    image_id = new_image_id()
    key = upload_key(image_id, ".jpg", owner)
    clients.s3.put_object(Bucket=settings.bucket, Key=key, Body=b"\xff\xd8\xff jpeg")
    record = ResultRecord(image_id=image_id, bucket=settings.bucket, key=key, source="upload",
                          owner=owner, sha256="ab" * 32)
    store.save_result(record.done([Label("tabby", 0.9, 281)], "efficientnet_lite0", "1",
                                  words={"tabby": 0.9, "cat": 0.9}))
    return image_id


def _objects(clients, settings: Settings) -> set[str]:
    listing = clients.s3.list_objects_v2(Bucket=settings.bucket)
    return {item["Key"] for item in listing.get("Contents", [])}


def test_the_owner_deletes_object_record_and_index_entries(app, users, clients, store,
                                                           settings: Settings) -> None:
    owner = signed_in(app, users.token("alice"))
    image_id = _done_image(clients, store, settings, users.subs["alice"])
    key = store.get(image_id).key
    rows = count_results(clients.dynamodb, settings.table)

    response = owner.delete(f"/api/results/{image_id}")

    assert response.status_code == 204
    assert key not in _objects(clients, settings)
    assert store.get(image_id) is None
    assert count_results(clients.dynamodb, settings.table) == rows - 1
    # Its index entries are attributes of the item: no listing or content lookup finds it.
    assert owner.get("/api/results").get_json()["results"] == []
    assert owner.get("/api/results?label=tabby").get_json()["results"] == []
    # The search items (one per word) went with it: nothing in the table starts with its ID.
    items = clients.dynamodb.scan(TableName=settings.table)["Items"]
    assert not [i for i in items if i["image_id"]["S"].startswith(image_id)]
    assert store.find_by_content("ab" * 32, "efficientnet_lite0", "1",
                                 users.subs["alice"]) is None
    assert owner.get(f"/api/results/{image_id}").status_code == 404
    # Idempotent: deleting again answers the same and changes nothing.
    assert owner.delete(f"/api/results/{image_id}").status_code == 204


def test_someone_elses_image_is_left_alone_and_the_answer_tells_nothing(
        app, users, clients, store, settings: Settings) -> None:
    image_id = _done_image(clients, store, settings, users.subs["alice"])
    bob = signed_in(app, users.token("bob"))

    assert bob.delete(f"/api/results/{image_id}").status_code == 204
    assert bob.delete(f"/api/results/{new_image_id()}").status_code == 204

    assert store.get(image_id) is not None
    assert store.get(image_id).key in _objects(clients, settings)


def test_an_admin_deletes_anyones_and_strangers_none(app, users, clients, store,
                                                    settings: Settings) -> None:
    image_id = _done_image(clients, store, settings, users.subs["bob"])

    assert signed_in(app, None).delete(f"/api/results/{image_id}").status_code == 401
    assert signed_in(app, users.token("tester")).delete(
        f"/api/results/{image_id}").status_code == 204
    assert store.get(image_id) is None


def test_a_bad_id_is_400(client) -> None:
    response = client.delete("/api/results/not-an-id")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_image_id"


def test_cancelling_a_presigned_upload_leaves_no_pending_record(app, users, clients, store,
                                                               settings: Settings) -> None:
    alice = signed_in(app, users.token("alice"))
    body = alice.post("/api/uploads", json={"filename": "a.jpg", "content_type": "image/jpeg",
                                            "size": 10}).get_json()

    assert quota(app).used(users.subs["alice"], today()) == 1

    assert alice.delete(f"/api/results/{body['image_id']}").status_code == 204

    assert store.get(body["image_id"]) is None
    assert alice.get("/api/results?status=pending").get_json()["results"] == []
    # Never sent, so it does not count on the day's quota; deleting again gives nothing more.
    assert quota(app).used(users.subs["alice"], today()) == 0
    assert alice.delete(f"/api/results/{body['image_id']}").status_code == 204
    assert quota(app).used(users.subs["alice"], today()) == 0


def test_deleting_an_upload_that_arrived_keeps_its_count(app, users, clients, store,
                                                         settings: Settings) -> None:
    alice = signed_in(app, users.token("alice"))
    body = alice.post("/api/uploads", json={"filename": "a.jpg", "content_type": "image/jpeg",
                                            "size": 10}).get_json()
    key = store.get(body["image_id"]).key
    clients.s3.put_object(Bucket=settings.bucket, Key=key, Body=b"\xff\xd8\xff sent")

    assert alice.delete(f"/api/results/{body['image_id']}").status_code == 204

    assert store.get(body["image_id"]) is None
    assert key not in _objects(clients, settings)
    assert quota(app).used(users.subs["alice"], today()) == 1


def quota(app):
    return app.extensions[DAILY_QUOTA]


def today():
    return utc_day(datetime.now(timezone.utc))


def test_a_never_sent_upload_is_gone_after_its_expiry(settings: Settings, client_for,
                                                      store: ResultStore, monkeypatch) -> None:
    """Never shown as processing: read as missing once the TTL is due, before DynamoDB acts."""
    client = client_for(dataclasses.replace(settings, presign_expires_seconds=1))
    body = client.post("/api/uploads", json={"filename": "a.jpg", "content_type": "image/jpeg",
                                             "size": 10}).get_json()
    image_id = body["image_id"]
    assert client.get(f"/api/results/{image_id}").get_json()["status"] == "pending"
    expires_at = store.get(image_id).expires_at

    later = expires_at + 1.0
    monkeypatch.setattr(time, "time", lambda: later)

    assert client.get(f"/api/results/{image_id}").status_code == 404
    listed = client.get("/api/results?status=pending").get_json()["results"]
    assert image_id not in {r["image_id"] for r in listed}
    batch = client.post("/api/results/batch", json={"ids": [image_id]}).get_json()
    assert batch["results"][0]["status"] == "not_found"


def test_an_outcome_drops_the_pending_expiry(store: ResultStore, settings: Settings,
                                             clients) -> None:
    """A result kept for good must not inherit the short TTL of its pending record."""
    pending = ResultRecord(image_id=new_image_id(), bucket=settings.bucket, key="uploads/p.jpg",
                           source="upload", expires_at=int(time.time()) + 60)
    store.create_pending(pending)
    done = dataclasses.replace(pending, expires_at=None).done(
        [Label("tabby", 0.9, 281)], "efficientnet_lite0", "1")

    store.save_result(done)

    item = clients.dynamodb.get_item(TableName=settings.table,
                                     Key={"image_id": {"S": pending.image_id}})["Item"]
    assert "expires_at" not in item
    assert store.get(pending.image_id).status == "done"


def test_delete_removes_the_uploads_callback_too(settings: Settings, client_for, store,
                                                clients) -> None:
    alice = client_for(dataclasses.replace(settings, callback_allow_hosts="127.0.0.1"), "alice")
    alice.post("/api/webhook/secret")
    body = alice.post("/api/uploads", json={
        "filename": "a.png", "content_type": "image/png", "size": 10,
        "callback_url": "http://127.0.0.1:9/hook"}).get_json()
    hooks = WebhookStore(clients.dynamodb, settings.table)
    assert hooks.callback(body["image_id"]) == "http://127.0.0.1:9/hook"

    assert alice.delete(f"/api/results/{body['image_id']}").status_code == 204

    assert hooks.callback(body["image_id"]) == ""
    assert store.get(body["image_id"]) is None
