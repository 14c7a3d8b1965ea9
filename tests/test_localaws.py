"""The local AWS endpoint's fixes to moto: SQS receives in constant time per message,
requests dispatched without listing moto's package folder, no request log thrown away."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import backends, mock_aws
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.sqs import models

from imagepipe.local import stack
from imagepipe.local.endpoint import speed_up_dispatch, speed_up_sqs


@pytest.fixture
def fast_sqs(monkeypatch: pytest.MonkeyPatch, aws_credentials: None) -> Iterator[Any]:
    """An in-process moto SQS with speed_up_sqs applied; the patch is undone afterwards."""
    for name in ("unix_time", "unix_time_millis"):
        monkeypatch.setattr(models, name, getattr(models, name))
    monkeypatch.setattr(models.SQSBackend, "is_message_valid_based_on_retention_period",
                        models.SQSBackend.is_message_valid_based_on_retention_period)
    assert speed_up_sqs()
    with mock_aws():
        yield boto3.client("sqs", region_name="us-east-1")


def _queue(sqs: Any, retention: int = 60) -> str:
    return sqs.create_queue(QueueName="q", Attributes={
        "MessageRetentionPeriod": str(retention), "VisibilityTimeout": "30"})["QueueUrl"]


def _send(sqs: Any, url: str, count: int) -> None:
    for start in range(0, count, 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "MessageBody": f"m{start + i}"} for i in range(min(10, count - start))])


def test_receives_and_counts_as_before(fast_sqs: Any) -> None:
    url = _queue(fast_sqs)
    _send(fast_sqs, url, 30)

    got = fast_sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]

    assert len(got) == 10
    attrs = fast_sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (attrs["ApproximateNumberOfMessages"], attrs["ApproximateNumberOfMessagesNotVisible"]
            ) == ("20", "10")
    # Received messages stay invisible for their timeout
    again = fast_sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert not {m["MessageId"] for m in got} & {m["MessageId"] for m in again}


def test_messages_past_their_retention_are_not_delivered(fast_sqs: Any) -> None:
    url = _queue(fast_sqs, retention=60)
    _send(fast_sqs, url, 2)
    queue = models.sqs_backends["123456789012"]["us-east-1"].get_queue("q")
    queue._messages[0].sent_timestamp -= 61_000  # sent 61 s ago

    got = fast_sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])

    # (moto then ends the receive there, with or without the fix)
    assert "m0" not in [m["Body"] for m in got]


def test_a_receive_no_longer_computes_the_queue_attributes(fast_sqs: Any,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    url = _queue(fast_sqs)
    _send(fast_sqs, url, 20)
    computed = []
    attributes = models.Queue.attributes

    def counted(self: Any) -> Any:
        computed.append(self.name)
        return attributes.fget(self)

    monkeypatch.setattr(models.Queue, "attributes", property(counted))

    got = fast_sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]

    assert len(got) == 10
    # moto computed every attribute (an O(queue) count) once per message returned
    assert computed == []


def test_requests_find_their_service_as_before_without_listing_moto_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "list_of_moto_modules", backends.list_of_moto_modules)
    app = DomainDispatcherApplication(create_backend_app)
    hosts = ["dynamodb", "sqs", "sqs.us-east-1.amazonaws.com", "s3.amazonaws.com",
             "sns.eu-west-1.amazonaws.com", "no-such-service"]
    before = [app.get_backend_for_host(host) for host in hosts]

    assert speed_up_dispatch()

    def listdir(path: str) -> list[str]:
        raise AssertionError(f"listed {path}")

    monkeypatch.setattr(backends.os, "listdir", listdir)
    assert [app.get_backend_for_host(host) for host in hosts] == before
    assert before[:3] == ["dynamodb", "sqs", "sqs"]


def test_the_endpoint_logs_no_request_line_when_its_output_is_thrown_away(
        monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[tuple[list[str], bool]] = []
    monkeypatch.setattr(stack, "_spawn", lambda argv, env, quiet=False, log=None:
                        spawned.append((argv, quiet)))
    monkeypatch.setattr(stack, "wait_for_port", lambda *args: None)

    stack.start_moto("127.0.0.1", 4599, {})
    with open("/dev/null", "wb") as log:
        stack.start_moto("127.0.0.1", 4599, {}, log=log)

    assert [("--quiet" in argv, quiet) for argv, quiet in spawned] == [(True, True),
                                                                       (False, False)]
