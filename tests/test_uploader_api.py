"""The upload front: presigned POST policy, validation, and the synchronous API's edges."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from datetime import datetime, timezone

import pytest

from imagepipe.core.ids import is_image_id
from imagepipe.core.records import ResultStore
from imagepipe.core.settings import Settings
from uploader.uploads import UNSENT_MARGIN


def _decode_policy(fields: dict[str, str]) -> dict:
    return json.loads(base64.b64decode(fields["policy"]))


def _new_upload(client, **overrides):
    body = {"filename": "cat.jpg", "content_type": "image/jpeg", "size": 12345, **overrides}
    return client.post("/api/uploads", json=body)


def test_presigned_post_pins_key_type_size_and_expiry(client, settings: Settings,
                                                      store: ResultStore, users) -> None:
    before = datetime.now(timezone.utc)

    response = _new_upload(client, filename="My Cat (1).PNG.JPG")

    assert response.status_code == 201
    body = response.get_json()
    image_id = body["image_id"]
    assert is_image_id(image_id)
    # The key is the server's choice, and names whose image it is.
    key = f"uploads/{users.subs['tester']}/{image_id}.jpg"
    fields = body["upload"]["fields"]
    assert fields["key"] == key
    assert fields["Content-Type"] == "image/jpeg"
    assert settings.bucket in body["upload"]["url"]
    assert body["result_url"].endswith(f"/api/results/{image_id}")

    policy = _decode_policy(fields)
    conditions = policy["conditions"]
    assert {"bucket": settings.bucket} in conditions
    assert {"key": key} in conditions
    assert {"Content-Type": "image/jpeg"} in conditions
    assert ["content-length-range", 1, settings.max_upload_bytes] in conditions
    # No condition may leave the key or the type open to the client.
    assert not [c for c in conditions if isinstance(c, list) and c[0] == "starts-with"]
    expiration = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    lifetime = (expiration - before).total_seconds()
    assert settings.presign_expires_seconds - 5 <= lifetime <= settings.presign_expires_seconds + 5
    expires_at = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert abs((expires_at - expiration).total_seconds()) < 5

    record = store.get(image_id)
    assert record is not None and record.status == "pending"
    assert record.key == key and record.source == "upload"


def test_result_url_answers_pending_at_once(client) -> None:
    body = _new_upload(client).get_json()
    result = client.get(body["result_url"])
    assert result.status_code == 200
    assert result.get_json()["status"] == "pending"


@pytest.mark.parametrize("content_type,ext", [
    ("image/jpeg", "jpg"), ("image/png", "png"), ("image/webp", "webp"), ("image/gif", "gif"),
    ("image/bmp", "bmp"), ("image/tiff", "tiff"), ("image/heic", "heic"), ("image/heif", "heif"),
    ("IMAGE/PNG", "png"),
])
def test_each_image_type_gets_its_extension(client, users, content_type: str, ext: str) -> None:
    body = _new_upload(client, content_type=content_type).get_json()
    owner = users.subs["tester"]
    assert body["upload"]["fields"]["key"] == f"uploads/{owner}/{body['image_id']}.{ext}"


def test_ids_differ_for_the_same_filename(client) -> None:
    ids = {_new_upload(client).get_json()["image_id"] for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize("body,code", [
    ({"content_type": "image/jpeg", "size": 10}, "missing_field"),
    ({"filename": "a.jpg", "size": 10}, "missing_field"),
    ({"filename": "a.jpg", "content_type": "image/jpeg"}, "missing_field"),
    ({"filename": "a.jpg", "content_type": "text/html", "size": 10}, "unsupported_content_type"),
    ({"filename": "a.jpg", "content_type": "image/svg+xml", "size": 10},
     "unsupported_content_type"),
    ({"filename": "a.jpg", "content_type": 5, "size": 10}, "unsupported_content_type"),
    ({"filename": "a.jpg", "content_type": "image/jpeg", "size": 0}, "invalid_size"),
    ({"filename": "a.jpg", "content_type": "image/jpeg", "size": -1}, "invalid_size"),
    ({"filename": "a.jpg", "content_type": "image/jpeg", "size": "10"}, "invalid_size"),
    ({"filename": "a.jpg", "content_type": "image/jpeg", "size": 1.5}, "invalid_size"),
    ({"filename": "a.jpg", "content_type": "image/jpeg", "size": True}, "invalid_size"),
    ({"filename": "a.jpg", "content_type": "image/jpeg", "size": 10**12}, "too_large"),
    ({"filename": "", "content_type": "image/jpeg", "size": 10}, "invalid_filename"),
    ({"filename": "x" * 256, "content_type": "image/jpeg", "size": 10}, "invalid_filename"),
    ({"filename": "a\x00.jpg", "content_type": "image/jpeg", "size": 10}, "invalid_filename"),
    ({"filename": "../../etc/passwd", "content_type": "image/jpeg", "size": 10},
     "invalid_filename"),
    ({"filename": "C:\\evil.jpg", "content_type": "image/jpeg", "size": 10}, "invalid_filename"),
    ({"filename": 7, "content_type": "image/jpeg", "size": 10}, "invalid_filename"),
])
def test_bad_upload_requests_get_400_json(client, body: dict, code: str) -> None:
    response = client.post("/api/uploads", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == code
    assert response.get_json()["error"]["message"]


@pytest.mark.parametrize("data,content_type", [
    ("not json", "application/json"),
    ("[1, 2]", "application/json"),
    ('{"filename": "a.jpg"', "application/json"),
    ("filename=a.jpg", "application/x-www-form-urlencoded"),
])
def test_non_json_bodies_get_400(client, data: str, content_type: str) -> None:
    response = client.post("/api/uploads", data=data, content_type=content_type)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"


def test_limit_is_the_setting(settings: Settings, client_for) -> None:
    small = dataclasses.replace(settings, max_upload_bytes=1000)
    client = client_for(small)
    assert _new_upload(client, size=1000).status_code == 201
    response = _new_upload(client, size=1001)
    assert response.status_code == 400
    assert response.get_json()["error"]["max_bytes"] == 1000


def test_unknown_routes_and_methods_are_json(client) -> None:
    response = client.get("/api/nothing-here")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"
    response = client.get("/api/uploads")
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"


def test_sync_api_without_a_processor_answers_202(settings: Settings, client_for, clients, users,
                                                   photos) -> None:
    quick = dataclasses.replace(settings, sync_wait_seconds=0.3)
    client = client_for(quick)

    response = client.post("/api/image_recognition",
                           data={"file": (__import__("io").BytesIO(photos.cat_jpeg), "cat.jpg")})

    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "pending"
    key = f"uploads/{users.subs['tester']}/{body['image_id']}.jpg"
    stored = clients.s3.get_object(Bucket=settings.bucket, Key=key)
    assert stored["Body"].read() == photos.cat_jpeg
    assert stored["ContentType"] == "image/jpeg"


def test_sync_api_takes_base64_and_data_urls(settings: Settings, client_for, clients, users,
                                            photos) -> None:
    client = client_for(dataclasses.replace(settings, sync_wait_seconds=0))
    encoded = base64.b64encode(photos.cat_png).decode()
    for value in (encoded, "data:image/png;base64," + encoded):
        response = client.post("/api/image_recognition", data={"img": value})
        assert response.status_code == 202
        key = f"uploads/{users.subs['tester']}/{response.get_json()['image_id']}.png"
        assert clients.s3.head_object(Bucket=settings.bucket, Key=key)["ContentLength"] == len(
            photos.cat_png)


@pytest.mark.parametrize("form,code,status", [
    ({}, "missing_field", 400),
    ({"img": "!!!not base64!!!"}, "invalid_base64", 400),
    ({"img": ""}, "empty_image", 400),
    ({"img": base64.b64encode(b"hello, I am text").decode()}, "not_an_image", 400),
])
def test_sync_api_bad_input(client, form: dict, code: str, status: int) -> None:
    response = client.post("/api/image_recognition", data=form)
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code


def test_sync_api_refuses_too_large(settings: Settings, client_for) -> None:
    client = client_for(dataclasses.replace(settings, max_upload_bytes=100))
    response = client.post("/api/image_recognition",
                           data={"img": base64.b64encode(b"\xff\xd8\xff" + b"0" * 200).decode()})
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] in ("too_large", "request_entity_too_large")


def test_a_presigned_upload_expires_soon_unless_its_image_comes(settings: Settings, client_for,
                                                                store) -> None:
    """Its TTL is the POST's expiry plus the margin, whatever the results' own expiry is."""
    settings = dataclasses.replace(settings, result_expiry_days=3, presign_expires_seconds=60)
    client = client_for(settings)
    before = time.time()

    body = _new_upload(client).get_json()

    record = store.get(body["image_id"])
    margin = UNSENT_MARGIN.total_seconds()
    assert before + 60 + margin - 1 <= record.expires_at <= time.time() + 60 + margin


def test_a_stored_image_pending_expires_by_setting(settings: Settings, client_for,
                                                   clients, store) -> None:
    """The synchronous API puts the object itself: its record keeps the results' expiry."""
    client = client_for(dataclasses.replace(settings, result_expiry_days=3, sync_wait_seconds=0))
    before = time.time()

    response = client.post("/api/image_recognition",
                           data={"img": base64.b64encode(_tiny_png()).decode()})

    record = store.get(response.get_json()["image_id"])
    assert before + 3 * 86400 - 1 <= record.expires_at <= time.time() + 3 * 86400


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (2, 2), "red").save(out, "PNG")
    return out.getvalue()
