"""Transient AWS faults injected under botocore: retried, nothing deleted early, nothing lost."""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from collections import Counter
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectionClosedError, ReadTimeoutError

from imagepipe.core.aws import Clients
from imagepipe.core.ids import image_id_for_object
from imagepipe.core.provision import provision
from imagepipe.core.records import ResultStore
from imagepipe.core.records.search import is_word_item
from tests.fakes import FakeClassifier, png


class _Raw(io.BytesIO):
    def stream(self, **kwargs: Any) -> Any:
        yield self.getvalue()


class FaultInjector:
    """A before-send hook: every `every`-th request to each service fails, as a flaky network
    or a busy service would, cycling through the kinds of failure.

    Counting per service keeps the faults the same whatever order the worker's threads make
    their calls in. Raised connection errors never reach the service; an injected 5xx reply is
    sent after the service has done the work (a lost response), the harder case for
    idempotency.
    """

    KINDS = ("reset", "timeout", "503", "500")

    def __init__(self, every: int) -> None:
        self.every = every
        self.injected: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def attach(self, client: Any) -> None:
        client.meta.events.register_first("before-send", self.before_send)

    def before_send(self, request: Any, **kwargs: Any) -> Any:
        _, service, operation = kwargs.get("event_name", "before-send.?.?").split(".", 2)
        with self._lock:
            self.calls[service] += 1
            count = self.calls[service]
            if count % self.every:
                return None
            kind = self.KINDS[(count // self.every) % len(self.KINDS)]
            self.injected[f"{service}:{operation}:{kind}"] += 1
        if kind == "reset":
            raise ConnectionClosedError(endpoint_url=request.url)
        if kind == "timeout":
            raise ReadTimeoutError(endpoint_url=request.url)
        return AWSResponse(request.url, int(kind), {}, _Raw(b""))


def _faulty(clients: Clients, injector: FaultInjector) -> Clients:
    for client in (clients.s3, clients.sqs, clients.dynamodb):
        injector.attach(client)
    return clients


@pytest.fixture
def quick_settings(settings):
    # Messages whose processing failed come back after 1 s instead of 5 minutes.
    return dataclasses.replace(settings, visibility_timeout=1, max_receives=50)


def test_every_image_done_once_despite_faults_everywhere(make_worker, quick_settings, aws) -> None:
    from imagepipe.core.aws import make_clients

    # Given resources made without faults, and 30 images in the bucket
    clean = make_clients(quick_settings)
    resources = provision(quick_settings, clean)
    keys = [f"f/{i:02d} image.png" for i in range(30)]
    for i, key in enumerate(keys):
        clean.s3.put_object(Bucket=quick_settings.bucket, Key=key, Body=png((20 + i, 20)))

    # When a processor whose S3, SQS and DynamoDB calls fail 25% of the time drains the queue
    injector = FaultInjector(every=3)
    faulty = _faulty(make_clients(quick_settings), injector)
    worker = make_worker(quick_settings, faulty, FakeClassifier())
    deadline = time.monotonic() + 240
    store = ResultStore(clean.dynamodb, quick_settings.table)
    while time.monotonic() < deadline:
        worker.run(max_batches=1)
        depth = clean.sqs.get_queue_attributes(
            QueueUrl=resources.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        if depth == {"ApproximateNumberOfMessages": "0",
                     "ApproximateNumberOfMessagesNotVisible": "0"}:
            break
        time.sleep(0.2)

    # Then faults were injected on all three services, and every image has one done record
    services = {name.split(":")[0] for name in injector.injected}
    assert services == {"s3", "sqs", "dynamodb"}, injector.injected
    assert sum(injector.injected.values()) >= 25
    for key in keys:
        record = store.get(image_id_for_object(quick_settings.bucket, key))
        assert record is not None and record.status == "done", key
    items = clean.dynamodb.scan(TableName=quick_settings.table)["Items"]
    assert len([i for i in items if not is_word_item(i["image_id"]["S"])]) == len(keys)
    print(f"faults injected: {sum(injector.injected.values())} "
          f"over {sum(injector.calls.values())} calls: {dict(injector.injected)}")


def test_a_message_that_always_fails_ends_in_the_dlq_marked_failed(make_worker, settings,
                                                                   aws) -> None:
    from imagepipe.core.aws import make_clients

    # Given a queue that gives up after 3 receives, and an object S3 never serves
    capped = dataclasses.replace(settings, visibility_timeout=1, max_receives=3)
    clients = make_clients(capped)
    resources = provision(capped, clients)
    clients.s3.put_object(Bucket=capped.bucket, Key="cursed.png", Body=png())
    image_id = image_id_for_object(capped.bucket, "cursed.png")
    broken = dataclasses.replace(clients, s3=_AlwaysSlowDown(clients.s3))
    worker = make_worker(capped, broken, FakeClassifier())
    store = ResultStore(clients.dynamodb, capped.table)

    # When the processor tries until the queue moves the message on
    for _ in range(12):
        worker.run(max_batches=1)
        if _depth(clients, resources.dead_letter_queue_url) == 1:
            break
        time.sleep(1.1)

    # Then it is in the DLQ, and the image is failed with the reason
    assert _depth(clients, resources.dead_letter_queue_url) == 1
    record = store.get(image_id)
    assert record.status == "failed"
    assert record.error_code == "retries_exhausted"
    assert "SlowDown" in record.error_message


def _depth(clients: Clients, url: str) -> int:
    attrs = clients.sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"])


class _AlwaysSlowDown:
    def __init__(self, s3: Any) -> None:
        self._s3 = s3

    def get_object(self, **kwargs: Any) -> Any:
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "SlowDown", "Message": "injected"}}, "GetObject")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)
