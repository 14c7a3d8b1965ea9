"""Result events: one per outcome on the topic, filterable, republished with the same ID."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from botocore.exceptions import ClientError

from imagepipe.core.aws import Clients
from imagepipe.core.provision import Resources, subscribe_queue
from imagepipe.core.records import ResultStore
from imagepipe.core.result_events import EventPublisher, event_from_message, event_id
from imagepipe.core.settings import Settings
from tests.fakes import FakeClassifier, png, put_image, queue_counts


def _subscriber(clients: Clients, resources: Resources, name: str,
                filter_policy: dict[str, Any] | None = None) -> str:
    url = clients.sqs.create_queue(QueueName=name)["QueueUrl"]
    subscribe_queue(clients, resources.topic_arn, url, filter_policy)
    return url


def _events(clients: Clients, url: str) -> list[dict[str, Any]]:
    out = []
    while True:
        messages = clients.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                               MessageAttributeNames=["All"]).get("Messages", [])
        if not messages:
            return out
        for message in messages:
            out.append(event_from_message(message["Body"]))
            clients.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def _drain(worker: Any) -> None:
    for _ in range(10):
        if worker.run(max_batches=1).received == 0:
            return


def test_each_outcome_is_one_event_that_subscribers_filter(
        make_worker, settings: Settings, clients: Clients, resources: Resources,
        store: ResultStore) -> None:
    # Given a queue that wants done results only, and one that wants everything
    done_only = _subscriber(clients, resources, "done-only", {"status": ["done"]})
    everything = _subscriber(clients, resources, "everything")
    good = put_image(clients, settings, "drops/good.png", png())
    bad = put_image(clients, settings, "drops/bad.png", b"not an image")

    # When the processor handles both
    _drain(make_worker(settings, clients, FakeClassifier()))

    # Then the done-only queue got the done event, shaped as GET /api/results/<id> plus three
    done = _events(clients, done_only)
    assert [e["image_id"] for e in done] == [good]
    record = store.get(good)
    event = done[0]
    assert event["type"] == "result.done" and event["event_id"] == event_id(record)
    assert event["occurred_at"] == record.processed_at
    assert {k: v for k, v in event.items()
            if k not in ("event_id", "type", "occurred_at")} == json.loads(
                json.dumps(record.to_json()))
    # And the other got both, the failure as result.failed
    types = {e["image_id"]: e["type"] for e in _events(clients, everything)}
    assert types == {good: "result.done", bad: "result.failed"}


class _FlakyTopic:
    """An SNS client whose publish fails the first `failures` times."""

    def __init__(self, sns: Any, failures: int) -> None:
        self._sns = sns
        self.failures = failures

    def publish(self, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise ClientError({"Error": {"Code": "InternalError", "Message": "down"}}, "Publish")
        return self._sns.publish(**kwargs)


def test_an_event_that_fails_to_publish_comes_back_with_the_same_id(
        make_worker, settings: Settings, clients: Clients, resources: Resources,
        store: ResultStore) -> None:
    # Given a topic that fails once, and a message that comes back at once when not deleted
    settings = dataclasses.replace(settings, visibility_timeout=0)
    clients.sqs.set_queue_attributes(QueueUrl=resources.queue_url,
                                     Attributes={"VisibilityTimeout": "0"})
    listener = _subscriber(clients, resources, "listener")
    image_id = put_image(clients, settings, "drops/one.png", png())
    topic = _FlakyTopic(clients.sns, failures=1)
    worker = make_worker(settings, clients, FakeClassifier(),
                         publisher=EventPublisher(topic, resources.topic_arn))

    # When the first publish after the write fails
    first = worker.run(max_batches=1)
    assert store.get(image_id).status == "done"
    assert first.retried == 1 and first.done == 0
    assert _events(clients, listener) == []

    # Then the redelivery writes the same outcome and publishes its event, then acknowledges
    _drain(worker)
    events = _events(clients, listener)
    assert [e["event_id"] for e in events] == [event_id(store.get(image_id))]
    assert queue_counts(clients, resources.queue_url) == (0, 0)
