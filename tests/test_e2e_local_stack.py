"""End to end: moto's server, the processor and the front as real processes, like `make run`."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from imagepipe.core.ids import is_image_id
from imagepipe.local.stack import LocalStack

pytestmark = pytest.mark.slow

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}
RESULT_TIMEOUT = 180  # the first result waits for TensorFlow and the model to load


@pytest.fixture(scope="module")
def s3(stack: LocalStack) -> Any:
    return boto3.client("s3", endpoint_url=stack.endpoint_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _wait_done(url: str, **params: Any) -> dict[str, Any]:
    deadline = time.monotonic() + RESULT_TIMEOUT
    while True:
        response = requests.get(url, params=params, timeout=10)
        body = response.json()
        if response.status_code == 200 and body["status"] != "pending":
            return body
        assert response.status_code in (200, 404), body
        assert time.monotonic() < deadline, f"still {body} after {RESULT_TIMEOUT} s"
        time.sleep(0.3)


def test_browser_style_upload_gets_a_cat(front: str, photos) -> None:
    # Given a presigned POST from the front
    response = requests.post(f"{front}/api/uploads", json={
        "filename": "chelsea.jpg", "content_type": "image/jpeg", "size": len(photos.cat_jpeg),
    }, timeout=10)
    assert response.status_code == 201
    body = response.json()
    assert is_image_id(body["image_id"])
    assert requests.get(body["result_url"], timeout=10).json()["status"] == "pending"

    # When the bytes go straight to S3 as a browser form would send them
    upload = requests.post(body["upload"]["url"], data=body["upload"]["fields"],
                           files={"file": ("chelsea.jpg", photos.cat_jpeg, "image/jpeg")},
                           timeout=30)
    assert upload.status_code in (200, 201, 204), upload.text

    # Then the result URL gives a cat with the full result shape
    result = _wait_done(body["result_url"])
    assert result["status"] == "done", result
    assert result["labels"][0]["label"] in CAT_CLASSES
    assert len(result["labels"]) == 5
    assert result["model"]["name"] == "efficientnet_lite0"
    assert result["image"]["key"] == f"uploads/{body['image_id']}.jpg"
    assert (result["image"]["width"], result["image"]["height"]) == (451, 300)
    assert result["error"] is None
    assert result["created_at"] <= result["processed_at"]


def test_direct_drop_is_found_by_key(front: str, s3: Any, stack: LocalStack, photos) -> None:
    key = "camera roll/2026 11/coffee + cake é.jpg"
    s3.put_object(Bucket=stack.settings.bucket, Key=key, Body=photos.coffee_jpeg)

    result = _wait_done(f"{front}/api/results", key=key)

    assert result["status"] == "done"
    assert result["labels"][0]["label"] == "espresso"
    assert result["image"]["key"] == key
    assert result["source"] == "bucket"
    again = requests.get(f"{front}/api/results/{result['image_id']}", timeout=10).json()
    assert again["image_id"] == result["image_id"]


def test_broken_drop_fails_with_a_reason(front: str, s3: Any, stack: LocalStack) -> None:
    key = "broken/readme.jpg"
    s3.put_object(Bucket=stack.settings.bucket, Key=key, Body=b"<html>not an image</html>")

    result = _wait_done(f"{front}/api/results", key=key)

    assert result["status"] == "failed"
    assert result["error"]["code"] == "not_an_image"


def test_synchronous_api_multipart_and_base64(front: str, photos) -> None:
    response = requests.post(f"{front}/api/image_recognition",
                             files={"file": ("rocket.jpg", photos.rocket_jpeg, "image/jpeg")},
                             timeout=90)
    assert response.status_code == 200, response.text
    assert response.json()["labels"][0]["label"] in {"missile", "projectile"}

    encoded = base64.b64encode(photos.cat_png).decode()
    response = requests.post(f"{front}/api/image_recognition", data={"img": encoded}, timeout=90)
    assert response.status_code == 200, response.text
    assert response.json()["labels"][0]["label"] in CAT_CLASSES
    assert response.json()["image"]["format"] == "PNG"


def test_classify_command_prints_a_cat(front: str, photos, tmp_path: Path) -> None:
    photo = tmp_path / "my cat.jpg"
    photo.write_bytes(photos.cat_jpeg)

    run = subprocess.run(
        [sys.executable, "-m", "imagepipe", "classify", str(photo), "--url", front],
        capture_output=True, text=True, timeout=300,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert "my cat.jpg" in run.stdout
    assert any(name in run.stdout for name in CAT_CLASSES), run.stdout
    assert "done" in run.stdout


def test_bucket_cors_answers_only_the_page_origin(front: str, stack: LocalStack) -> None:
    # moto's own permissive CORS is off: what the browser sees comes from the bucket's rule.
    bucket_url = f"{stack.endpoint_url}/{stack.settings.bucket}"
    upload = requests.post(f"{front}/api/uploads", json={
        "filename": "x.png", "content_type": "image/png", "size": 10}, timeout=10).json()

    for origin, allowed in ((front, True), ("http://localhost:1", False),
                            ("https://evil.example", False)):
        preflight = requests.options(bucket_url, headers={
            "Origin": origin, "Access-Control-Request-Method": "POST"}, timeout=10)
        post = requests.post(upload["upload"]["url"], data=upload["upload"]["fields"],
                             files={"file": ("x.png", b"\x89PNG\r\n\x1a\n00", "image/png")},
                             headers={"Origin": origin}, timeout=10)
        if allowed:
            assert preflight.status_code == 200
            assert preflight.headers["Access-Control-Allow-Origin"] == origin
            assert preflight.headers["Access-Control-Allow-Methods"] == "POST"
            assert post.headers["Access-Control-Allow-Origin"] == origin
        else:
            assert preflight.status_code == 403
            assert "Access-Control-Allow-Origin" not in preflight.headers
            assert "Access-Control-Allow-Origin" not in post.headers


def test_url_import_gets_a_cat(front: str, image_server) -> None:
    response = requests.post(f"{front}/api/imports", json={"url": image_server.url("/go/cat")},
                             timeout=30)
    assert response.status_code == 201, response.text

    result = _wait_done(response.json()["result_url"])

    assert result["status"] == "done"
    assert result["labels"][0]["label"] in CAT_CLASSES
    assert result["image"]["key"] == f"uploads/{result['image_id']}.jpg"
