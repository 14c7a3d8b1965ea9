"""POST /api/imports and GET /api/config, with moto in process and a local web server."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from imagepipe.core.ids import is_image_id
from imagepipe.core.settings import Settings
from tests.conftest import LocalWebServer, Reply


@pytest.fixture
def importing(settings: Settings, client_for, web_server: LocalWebServer) -> Any:
    """A test client of an app whose imports may reach the local web server."""
    allowed = replace(settings, import_allow_hosts=f"127.0.0.1:{web_server.port}",
                      import_timeout_seconds=5)
    return client_for(allowed)


def test_an_import_is_stored_like_an_upload(importing, web_server: LocalWebServer, photos,
                                            clients, store, settings: Settings, users) -> None:
    # Given a PNG served with a misleading content type, behind a redirect
    web_server.routes["/share/cat"] = Reply(302, headers={"Location": "/files/cat.bin"})
    web_server.routes["/files/cat.bin"] = Reply(
        body=photos.cat_png, headers={"Content-Type": "application/octet-stream"})

    # When it is imported
    response = importing.post("/api/imports", json={"url": web_server.url("/share/cat")})

    # Then it is answered like an upload, with a pending record and the object in the bucket
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    image_id = body["image_id"]
    assert is_image_id(image_id)
    assert body["status"] == "pending"
    assert body["result_url"].endswith(f"/api/results/{image_id}")
    record = store.get(image_id)
    assert record is not None and record.status == "pending"
    assert record.key == f"uploads/{users.subs['tester']}/{image_id}.png"
    assert record.owner == users.subs["tester"]
    stored = clients.s3.get_object(Bucket=settings.bucket, Key=record.key)
    assert stored["Body"].read() == photos.cat_png
    assert stored["ContentType"] == "image/png"
    assert importing.get(f"/api/results/{image_id}").get_json()["status"] == "pending"


@pytest.mark.parametrize("path,reply,status,code", [
    ("/page.jpg", Reply(body=b"<html>not a photo</html>"), 400, "not_an_image"),
    ("/huge.jpg", Reply(body=b"\xff\xd8\xff" + b"\0" * (3 * 1024 * 1024)), 413, "too_large"),
    ("/away", Reply(302, headers={"Location": "http://192.168.0.1/cat.jpg"}), 400,
     "forbidden_address"),
    ("/missing.jpg", Reply(404), 502, "fetch_failed"),
])
def test_import_failures_are_json_errors(importing, web_server: LocalWebServer, store,
                                         path: str, reply: Reply, status: int,
                                         code: str) -> None:
    web_server.routes[path] = reply

    response = importing.post("/api/imports", json={"url": web_server.url(path)})

    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code
    assert store.list_results().records == []


def test_imports_refuse_loopback_without_the_allow_list(client, web_server: LocalWebServer,
                                                        photos) -> None:
    web_server.routes["/cat.jpg"] = Reply(body=photos.cat_jpeg)

    response = client.post("/api/imports", json={"url": web_server.url("/cat.jpg")})

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "forbidden_address"
    assert web_server.requests == []


@pytest.mark.parametrize("body,code", [
    ({}, "missing_field"),
    ({"url": 42}, "invalid_url"),
    ({"url": "file:///etc/passwd"}, "invalid_url"),
    ({"url": "http://169.254.169.254/latest/meta-data/"}, "forbidden_address"),
])
def test_bad_import_requests_get_400(client, body: dict, code: str) -> None:
    response = client.post("/api/imports", json=body)

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == code


def test_imports_need_a_json_object(client) -> None:
    response = client.post("/api/imports", data="url=http://x", content_type="text/plain")

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"


def test_config_tells_the_page_the_limits(client, settings: Settings) -> None:
    body = client.get("/api/config").get_json()

    assert body["max_upload_bytes"] == settings.max_upload_bytes
    assert body["max_pixels"] == settings.max_pixels
    assert "image/jpeg" in body["content_types"]
    assert "image/heic" in body["content_types"]
