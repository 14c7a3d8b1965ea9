"""The front under abuse and outages: 503 while AWS is down, recovery, size caps, rate limits."""

from __future__ import annotations

import dataclasses
import io

import pytest

from imagepipe.app import create_app
from imagepipe.core.aws import make_clients
from imagepipe.core.ids import new_image_id
from imagepipe.core.provision import provision
from imagepipe.core.settings import Settings
from imagepipe.local.stack import free_port, local_environ, start_moto, stop_processes
from uploader.ratelimit import RateLimiter


@pytest.mark.slow
def test_front_answers_503_while_aws_is_down_and_recovers(settings: Settings, photos) -> None:
    # Given a front whose AWS endpoint is not listening
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    down = dataclasses.replace(settings, endpoint_url=endpoint, sync_wait_seconds=0)
    client = create_app(down).test_client()

    # Then every call that needs AWS is a clear 503, and the front itself is up
    assert client.get("/healthz").status_code == 200
    for response in (
        client.get(f"/api/results/{new_image_id()}"),
        client.get("/api/results?key=a.jpg"),
        client.get("/api/results"),
        client.post("/api/uploads", json={"filename": "a.jpg", "content_type": "image/jpeg",
                                          "size": 10}),
        client.post("/api/image_recognition",
                    data={"file": (io.BytesIO(photos.cat_jpeg), "cat.jpg")}),
    ):
        assert response.status_code == 503
        assert response.get_json()["error"]["code"] == "backend_unavailable"

    # When the endpoint comes up
    moto = start_moto("127.0.0.1", port, local_environ(endpoint))
    try:
        provision(down, make_clients(down))

        # Then the same front recovers by itself
        created = client.post("/api/uploads", json={"filename": "a.jpg",
                                                    "content_type": "image/jpeg", "size": 10})
        assert created.status_code == 201
        result = client.get(created.get_json()["result_url"])
        assert result.get_json()["status"] == "pending"
        assert client.get(f"/api/results/{new_image_id()}").status_code == 404
    finally:
        stop_processes(moto)


def test_json_endpoints_cap_their_bodies(client) -> None:
    body = {"filename": "a.jpg", "content_type": "image/jpeg", "size": 10, "pad": "x" * 20_000}
    response = client.post("/api/uploads", json=body)
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "request_entity_too_large"


def test_request_bodies_are_capped_before_they_are_read(settings, clients, store) -> None:
    app = create_app(dataclasses.replace(settings, max_upload_bytes=1000), clients, store)
    response = app.test_client().post(
        "/api/image_recognition", data={"file": (io.BytesIO(b"\xff\xd8\xff" + b"0" * 5000),
                                                 "a.jpg")})
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] in ("too_large", "request_entity_too_large")


def _upload(client, address: str = "203.0.113.7", **headers):
    return client.post("/api/uploads", json={"filename": "a.jpg", "content_type": "image/jpeg",
                                              "size": 10},
                       environ_base={"REMOTE_ADDR": address}, headers=headers)


def test_rate_limit_answers_429_with_retry_after(settings, clients, store) -> None:
    limited = dataclasses.replace(settings, rate_limit_per_minute=6, rate_limit_burst=3)
    client = create_app(limited, clients, store).test_client()

    statuses = [_upload(client).status_code for _ in range(4)]

    assert statuses == [201, 201, 201, 429]
    response = _upload(client)
    assert response.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response.headers["Retry-After"]) <= 10
    # Another client is not held back, and reading results is never limited.
    assert _upload(client, address="198.51.100.9").status_code == 201
    assert client.get("/healthz", environ_base={"REMOTE_ADDR": "203.0.113.7"}).status_code == 200


def test_rate_limit_trusts_forwarded_for_only_behind_a_proxy(settings, clients, store) -> None:
    strict = dataclasses.replace(settings, rate_limit_per_minute=1, rate_limit_burst=1)
    direct = create_app(strict, clients, store).test_client()
    assert _upload(direct, X_Forwarded_For="1.1.1.1").status_code == 201
    # Without a trusted proxy a forged header does not buy a new bucket.
    assert _upload(direct, X_Forwarded_For="2.2.2.2").status_code == 429

    proxied = create_app(dataclasses.replace(strict, trusted_proxies=1), clients,
                         store).test_client()
    assert _upload(proxied, **{"X-Forwarded-For": "1.1.1.1"}).status_code == 201
    assert _upload(proxied, **{"X-Forwarded-For": "2.2.2.2"}).status_code == 201
    assert _upload(proxied, **{"X-Forwarded-For": "1.1.1.1"}).status_code == 429


def test_token_bucket_refills_and_forgets_old_clients() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=2, max_clients=3, clock=lambda: now[0])
    assert limiter.acquire("a") == 0 and limiter.acquire("a") == 0
    assert limiter.acquire("a") == pytest.approx(1.0)
    now[0] += 1.0
    assert limiter.acquire("a") == 0
    for name in ("b", "c", "d"):
        limiter.acquire(name)
    assert len(limiter._buckets) == 3 and "a" not in limiter._buckets
    assert RateLimiter(per_minute=0, burst=1).acquire("x") == 0
