"""The front under abuse and outages: 503 while AWS is down, recovery, size caps, rate limits."""

from __future__ import annotations

import dataclasses
import http.client
import io
import json
from collections.abc import Iterator

import pytest
import requests

from imagepipe.app import create_app
from imagepipe.core.aws import make_clients
from imagepipe.core.ids import new_image_id
from imagepipe.core.provision import provision
from imagepipe.core.settings import Settings
from imagepipe.local.stack import free_port, local_environ, start_front, start_moto, stop_processes
from tests.conftest import env_with, signed_in
from uploader.ratelimit import RateLimiter


@pytest.mark.slow
def test_front_answers_503_while_aws_is_down_and_recovers(settings: Settings, photos) -> None:
    # Given a front whose AWS endpoint is not listening
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # Sign-in is off: this is about the storage backend (sign-in's own outage answers 503
    # identity_unavailable, tested with the sign-in tests).
    down = dataclasses.replace(settings, endpoint_url=endpoint, sync_wait_seconds=0, auth=False)
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


def test_request_bodies_are_capped_before_they_are_read(settings, client_for) -> None:
    client = client_for(dataclasses.replace(settings, max_upload_bytes=1000))
    response = client.post(
        "/api/image_recognition", data={"file": (io.BytesIO(b"\xff\xd8\xff" + b"0" * 5000),
                                                 "a.jpg")})
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] in ("too_large", "request_entity_too_large")


def _upload(client, address: str = "203.0.113.7", **headers):
    return client.post("/api/uploads", json={"filename": "a.jpg", "content_type": "image/jpeg",
                                              "size": 10},
                       environ_base={"REMOTE_ADDR": address}, headers=headers)


def test_rate_limit_answers_429_with_retry_after(settings, client_for) -> None:
    limited = dataclasses.replace(settings, rate_limit_per_minute=6, rate_limit_burst=3)
    client = client_for(limited)

    statuses = [_upload(client).status_code for _ in range(4)]

    assert statuses == [201, 201, 201, 429]
    response = _upload(client)
    assert response.get_json()["error"]["code"] == "rate_limited"
    assert "this user" in response.get_json()["error"]["message"]
    assert 1 <= int(response.headers["Retry-After"]) <= 10
    # Reading results is never limited.
    assert client.get("/healthz", environ_base={"REMOTE_ADDR": "203.0.113.7"}).status_code == 200


def test_rate_limit_is_per_user_when_signed_in(settings, client_for, users) -> None:
    # Given one front, and the admin over their rate from one address
    limited = dataclasses.replace(settings, rate_limit_per_minute=1, rate_limit_burst=2)
    tester = client_for(limited)
    alice = signed_in(tester.application, users.token("alice"))
    bob = signed_in(tester.application, users.token("bob"))
    assert [_upload(tester).status_code for _ in range(3)] == [201, 201, 429]

    # Then a new address buys that user nothing
    assert _upload(tester, address="198.51.100.9").status_code == 429
    # And two other people from that same address each get a bucket of their own
    assert [_upload(alice).status_code for _ in range(3)] == [201, 201, 429]
    assert [_upload(bob).status_code for _ in range(3)] == [201, 201, 429]


def test_rate_limit_is_per_address_with_sign_in_off(settings, client_for) -> None:
    open_front = client_for(dataclasses.replace(settings, rate_limit_per_minute=1,
                                                rate_limit_burst=1, auth=False), user=None)
    assert _upload(open_front).status_code == 201
    limited = _upload(open_front)
    assert limited.status_code == 429
    assert "this address" in limited.get_json()["error"]["message"]
    assert _upload(open_front, address="198.51.100.9").status_code == 201


def test_rate_limit_trusts_forwarded_for_only_behind_a_proxy(settings, client_for) -> None:
    # Sign-in off: with nobody signed in, the limit is per address.
    strict = dataclasses.replace(settings, rate_limit_per_minute=1, rate_limit_burst=1,
                                 auth=False)
    direct = client_for(strict, user=None)
    assert _upload(direct, X_Forwarded_For="1.1.1.1").status_code == 201
    # Without a trusted proxy a forged header does not buy a new bucket.
    assert _upload(direct, X_Forwarded_For="2.2.2.2").status_code == 429

    proxied = client_for(dataclasses.replace(strict, trusted_proxies=1), user=None)
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


# Over what gunicorn drains by itself (64 KiB) before it gives up on a keep-alive connection.
_BIG = 150_000


@pytest.fixture(scope="module")
def gunicorn_front() -> Iterator[tuple[str, int]]:
    """The front under gunicorn as in production; nothing behind it answers, none is needed."""
    port = free_port()
    env = local_environ("http://127.0.0.1:9", env_with(
        # One token a minute per client, and each case its own client through the proxy header.
        IMAGEPIPE_RATE_LIMIT_PER_MINUTE="1", IMAGEPIPE_RATE_LIMIT_BURST="1",
        IMAGEPIPE_TRUSTED_PROXIES="1", IMAGEPIPE_MAX_UPLOAD_BYTES="100000",
        # No AWS and so no user pool behind it: the refusals under test come before sign-in.
        IMAGEPIPE_AUTH="off", IMAGEPIPE_LOG_LEVEL="WARNING"))
    front = start_front(env, "127.0.0.1", port, workers=1)
    try:
        yield "127.0.0.1", port
    finally:
        stop_processes(front)


# Each refuses the body before reading it: route cap, app cap, a body of the wrong type,
# no such route, the wrong method, over the rate.
EARLY_REFUSALS = {
    "json_over_route_cap": ("/api/uploads", "application/json",
                            json.dumps({"pad": "x" * _BIG}).encode(), 413),
    "image_over_app_cap": ("/api/image_recognition", "application/octet-stream",
                           b"\xff\xd8\xff" + b"0" * 2 * _BIG, 413),
    "upload_not_json": ("/api/uploads", "text/plain", b"x" * _BIG, 400),
    "image_not_a_form": ("/api/image_recognition", "application/json", b"1" * _BIG, 400),
    "no_such_route": ("/api/nothing", "application/json", b"1" * _BIG, 404),
    "wrong_method": ("/api/config", "application/json", b"1" * _BIG, 405),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(EARLY_REFUSALS))
def test_a_refused_body_does_not_break_the_next_request(gunicorn_front, case: str) -> None:
    # Given a client that keeps its connection alive between requests, and its own address
    path, content_type, body, status = EARLY_REFUSALS[case]
    client_number = sorted(EARLY_REFUSALS).index(case)
    connection = http.client.HTTPConnection(*gunicorn_front, timeout=10)
    try:
        for attempt in range(3):
            # When the front refuses a body it has not read
            address = f"198.51.{client_number}.{attempt}"
            connection.request("POST", path, body=body, headers={
                "Content-Type": content_type, "X-Forwarded-For": address})
            refused = connection.getresponse()
            assert refused.status == status
            assert "error" in json.loads(refused.read())

            # Then the next request on that client is answered, on this connection or a new one
            connection.request("GET", "/api/config")
            answer = connection.getresponse()
            assert answer.status == 200
            assert "content_types" in json.loads(answer.read())
    finally:
        connection.close()


@pytest.mark.slow
def test_429_before_the_body_does_not_break_a_session(gunicorn_front) -> None:
    host, port = gunicorn_front
    with requests.Session() as session:
        url = f"http://{host}:{port}/api/uploads"
        headers = {"Content-Type": "application/json", "X-Forwarded-For": "203.0.113.99"}
        body = json.dumps({"filename": "a.jpg", "content_type": "image/jpeg", "size": 10,
                           "pad": "x" * _BIG})
        # The first takes the client's one token and is over the route's cap; the next is limited.
        assert session.post(url, data=body, headers=headers).status_code == 413
        for _ in range(3):
            limited = session.post(url, data=body, headers=headers)
            assert limited.status_code == 429
            assert limited.json()["error"]["code"] == "rate_limited"
            assert session.get(f"http://{host}:{port}/healthz").status_code == 200


def test_a_small_unread_rest_is_drained_and_the_connection_kept(client) -> None:
    response = client.post("/api/nothing", data=b"x" * 1000, content_type="text/plain")
    assert response.status_code == 404
    assert "Connection" not in response.headers


def test_a_large_unread_body_closes_the_connection(client) -> None:
    response = client.post("/api/uploads", data=b"x" * 100_000, content_type="text/plain")
    assert response.status_code == 400
    assert response.headers["Connection"] == "close"


def test_a_body_read_in_full_keeps_the_connection(client) -> None:
    response = client.post("/api/uploads", json={"filename": "a.jpg", "content_type": "image/jpeg",
                                                 "size": 10, "pad": "x" * 10_000})
    assert response.status_code == 201
    assert "Connection" not in response.headers
