"""Webhooks: signed deliveries, retried with backoff and recorded; guarded callback URLs."""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any

import pytest

from imagepipe.core.aws import Clients
from imagepipe.core.provision import Resources
from imagepipe.core.records import ResultStore
from imagepipe.core.settings import Settings
from imagepipe.core.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, WebhookStore, verify
from processor.webhooks import MAX_BACKOFF_SECONDS, WebhookDeliverer, backoff
from tests.conftest import LocalWebServer, Reply, wait_for
from tests.fakes import FakeClassifier, png


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    # The receiver runs on this machine; the backoff is a second so the test waits little.
    return dataclasses.replace(settings, callback_allow_hosts="127.0.0.1",
                               webhook_backoff_seconds=1)


def _upload(client: Any, clients: Clients, settings: Settings, callback_url: str) -> str:
    response = client.post("/api/uploads", json={
        "filename": "cat.png", "content_type": "image/png", "size": 100,
        "callback_url": callback_url})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    # The browser's POST to S3, done here directly: moto does not check the policy anyway.
    clients.s3.put_object(Bucket=settings.bucket, Key=body["upload"]["fields"]["key"],
                          Body=png())
    return str(body["image_id"])


def test_a_delivery_is_signed_retried_with_backoff_and_recorded(
        make_worker, hook_settings: Settings, clients: Clients, resources: Resources,
        store: ResultStore, client_for: Any, web_server: LocalWebServer) -> None:
    # Given a receiver that answers 500 twice and then 200, and alice's secret
    answers = iter([500, 500, 200])
    web_server.routes["/hook"] = lambda: Reply(next(answers, 200), b"")
    alice = client_for(hook_settings, "alice")
    secret = alice.post("/api/webhook/secret").get_json()["secret"]
    assert alice.get("/api/webhook").get_json() == {"url": None, "has_secret": True}

    # When she uploads with a callback URL and the image is processed
    image_id = _upload(alice, clients, hook_settings, web_server.url("/hook"))
    worker = make_worker(hook_settings, clients, FakeClassifier())
    worker.run(max_batches=2)
    assert store.get(image_id).status == "done"

    # And the deliverer works its queue
    deliverer = WebhookDeliverer(hook_settings, clients.sqs,
                                 WebhookStore(clients.dynamodb, hook_settings.table),
                                 resources.webhook_queue_url)
    thread = threading.Thread(target=deliverer.run, daemon=True)
    thread.start()
    try:
        delivered = wait_for(lambda: (store.get(image_id).webhook or None)
                             and store.get(image_id).webhook.delivered_at,
                             "the webhook delivered", timeout=30, every=0.2)
    finally:
        deliverer.stop()
        thread.join(10)

    # Then the receiver got three signed deliveries of one event, the last answered 200
    posts = [headers for method, _, headers in web_server.requests if method == "POST"]
    assert len(posts) == 3
    for headers, body in zip(posts, web_server.bodies, strict=True):
        assert verify(secret, headers[SIGNATURE_HEADER], body)
        assert not verify("whsec_someone-else", headers[SIGNATURE_HEADER], body)
        event = json.loads(body)
        assert (event["image_id"], event["type"]) == (image_id, "result.done")
        assert headers[EVENT_ID_HEADER] == event["event_id"]
    assert len({json.loads(body)["event_id"] for body in web_server.bodies}) == 1
    # And the result shows the three attempts
    result = alice.get(f"/api/results/{image_id}").get_json()
    assert result["webhook"] == {"attempts": 3, "last_status": 200, "delivered_at": delivered}


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/",
    "http://10.0.0.8/hook",
    "http://localhost:9/hook",
])
def test_a_callback_to_a_private_or_metadata_address_is_refused_at_request_time(
        settings: Settings, client_for: Any, url: str) -> None:
    alice = client_for(settings, "alice")
    alice.post("/api/webhook/secret")

    response = alice.post("/api/uploads", json={
        "filename": "cat.png", "content_type": "image/png", "size": 100, "callback_url": url})

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "forbidden_address"
    assert alice.put("/api/webhook", json={"url": url}).status_code == 400


def test_a_callback_needs_a_secret_first(hook_settings: Settings, client_for: Any,
                                         web_server: LocalWebServer) -> None:
    bob = client_for(hook_settings, "bob")

    response = bob.post("/api/uploads", json={
        "filename": "cat.png", "content_type": "image/png", "size": 100,
        "callback_url": web_server.url("/hook")})

    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "no_webhook_secret"


def test_the_default_url_serves_uploads_without_a_callback(
        make_worker, hook_settings: Settings, clients: Clients, resources: Resources,
        store: ResultStore, client_for: Any, web_server: LocalWebServer) -> None:
    web_server.routes["/default"] = Reply(204, b"")
    bob = client_for(hook_settings, "bob")
    secret = bob.post("/api/webhook/secret").get_json()["secret"]
    assert bob.put("/api/webhook", json={"url": web_server.url("/default")}).status_code == 200
    response = bob.post("/api/uploads", json={"filename": "a.png", "content_type": "image/png",
                                              "size": 100})
    key = response.get_json()["upload"]["fields"]["key"]
    clients.s3.put_object(Bucket=hook_settings.bucket, Key=key, Body=png())
    make_worker(hook_settings, clients, FakeClassifier()).run(max_batches=2)

    deliverer = WebhookDeliverer(hook_settings, clients.sqs,
                                 WebhookStore(clients.dynamodb, hook_settings.table),
                                 resources.webhook_queue_url)
    deliverer.run(max_receives=1)

    assert len(web_server.bodies) == 1
    headers = web_server.requests[-1][2]
    assert verify(secret, headers[SIGNATURE_HEADER], web_server.bodies[0])
    image_id = response.get_json()["image_id"]
    assert store.get(image_id).webhook.attempts == 1


def test_the_backoff_doubles_up_to_twelve_hours() -> None:
    assert [backoff(30, n) for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert backoff(30, 40) == MAX_BACKOFF_SECONDS
