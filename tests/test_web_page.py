"""The page and its files, the security headers on every response, gallery thumbnails."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from imagepipe.app import content_security_policy
from imagepipe.core.ids import new_image_id, upload_key
from imagepipe.core.records import ImageFacts, Label, ResultRecord
from imagepipe.core.settings import Settings


def csp_directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


def test_the_page_loads_its_module_and_styles(client) -> None:
    response = client.get("/")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert '<script type="module" src="/static/main.js"></script>' in html
    assert 'href="/static/app.css"' in html
    # No inline script or style, which the CSP forbids.
    assert "<script>" not in html and "<style" not in html and "style=" not in html


@pytest.mark.parametrize("name,mimetype", [
    ("main.js", "text/javascript"), ("api.js", "text/javascript"),
    ("cards.js", "text/javascript"), ("checks.js", "text/javascript"),
    ("gallery.js", "text/javascript"), ("messages.js", "text/javascript"),
    ("app.css", "text/css"),
])
def test_static_files_have_their_types(client, name: str, mimetype: str) -> None:
    response = client.get(f"/static/{name}")

    assert response.status_code == 200
    assert response.mimetype == mimetype


def test_static_files_cannot_escape_their_folder(client) -> None:
    assert client.get("/static/../routes.py").status_code == 404
    assert client.get("/static/%2e%2e/routes.py").status_code == 404


@pytest.mark.parametrize("path", ["/", "/static/main.js", "/api/config", "/healthz",
                                  "/api/results/nope", "/no/such/page"])
def test_every_response_has_the_security_headers(client, path: str) -> None:
    headers = client.get(path).headers

    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert "camera=()" in headers["Permissions-Policy"]
    assert "Content-Security-Policy" in headers


def test_the_csp_allows_only_our_files_and_the_bucket(client, clients,
                                                      settings: Settings) -> None:
    policy = csp_directives(client.get("/").headers["Content-Security-Policy"])

    post_url = clients.s3.generate_presigned_post(Bucket=settings.bucket, Key="k")["url"]
    s3 = "{0.scheme}://{0.netloc}".format(urlsplit(post_url))
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'", s3]
    assert policy["img-src"] == ["'self'", "blob:", "data:", s3]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["object-src"] == ["'none'"]
    assert not any("unsafe" in value for values in policy.values() for value in values)


def test_the_csp_names_a_local_endpoint() -> None:
    policy = csp_directives(content_security_policy(("http://127.0.0.1:4566",)))

    assert policy["connect-src"] == ["'self'", "http://127.0.0.1:4566"]


def _done(store, settings: Settings, fmt: str = "JPEG") -> str:
    image_id = new_image_id()
    record = ResultRecord(image_id=image_id, bucket=settings.bucket,
                          key=upload_key(image_id, "jpg"), source="upload")
    store.create_pending(record)
    store.save_result(record.done([Label("tabby", 0.6, 281)], "efficientnet_lite0", "1",
                                  image=ImageFacts(format=fmt, width=4, height=3, bytes=9)))
    return image_id


def test_a_done_image_redirects_to_a_short_lived_link(client, store, clients,
                                                      settings: Settings) -> None:
    image_id = _done(store, settings, fmt="MPO")
    clients.s3.put_object(Bucket=settings.bucket, Key=upload_key(image_id, "jpg"),
                          Body=b"\xff\xd8\xffjpeg", ContentType="text/html")

    response = client.get(f"/api/results/{image_id}/image")

    assert response.status_code == 302
    assert response.headers["Cache-Control"].startswith("private")
    location = urlsplit(response.headers["Location"])
    assert location.path.endswith(f"/uploads/{image_id}.jpg")
    query = parse_qs(location.query)
    # S3 answers with the type the processor found, not the one the object was stored with.
    assert query["response-content-type"] == ["image/jpeg"]
    assert "Expires" in query or "X-Amz-Expires" in query


def test_images_that_are_not_done_have_no_link(client, store, settings: Settings) -> None:
    image_id = new_image_id()
    store.create_pending(ResultRecord(image_id=image_id, bucket=settings.bucket,
                                      key=upload_key(image_id, "jpg")))

    response = client.get(f"/api/results/{image_id}/image")

    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "no_image"
    assert client.get(f"/api/results/{new_image_id()}/image").status_code == 404
    assert client.get("/api/results/short/image").status_code == 400
