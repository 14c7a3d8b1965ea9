"""The processor worker against moto in-process: batches, bad images, retries, duplicates."""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError
from PIL import Image

from imagepipe.core.aws import Clients
from imagepipe.core.ids import image_id_for_object
from imagepipe.core.records import ResultStore
from imagepipe.core.records.search import is_word_item, result_of
from imagepipe.core.timestamps import parse_utc
from processor.worker import Worker
from tests.conftest import s3_event
from tests.fakes import (
    FakeClassifier,
    png,
    put_image,
    queue_counts,
)

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}


def _drain(worker: Worker, batches: int = 10) -> None:
    """Run until a receive comes back empty (moto's queue has no in-flight surprises)."""
    for _ in range(batches):
        report = worker.run(max_batches=1)
        if report.received == 0:
            return


@pytest.mark.slow
def test_mixed_batch_with_the_real_model(make_worker, settings, clients, resources,
                                         store: ResultStore,
                                         classifier, photos) -> None:
    # Given good photos and broken files dropped straight into the bucket
    truncated = photos.cat_jpeg[: len(photos.cat_jpeg) // 2]
    ids = {
        "cat": put_image(clients, settings, "drops/my cat + me.jpg", photos.cat_jpeg),
        "coffee": put_image(clients, settings, "drops/café/coffee.png",
                       _reencode(photos.coffee_jpeg, "PNG")),
        "empty": put_image(clients, settings, "drops/empty.jpg", b""),
        "text": put_image(clients, settings, "drops/notes.jpg", b"just some text, not a JPEG\n"),
        "truncated": put_image(clients, settings, "drops/truncated.jpg", truncated),
    }
    worker = make_worker(settings, clients, classifier)

    # When the processor drains the queue
    _drain(worker)

    # Then every image has exactly the record it should
    cat = store.get(ids["cat"])
    assert cat.status == "done"
    assert cat.labels[0].label in CAT_CLASSES
    assert len(cat.labels) == 5
    assert [x.score for x in cat.labels] == sorted((x.score for x in cat.labels), reverse=True)
    assert cat.model_name == "efficientnet_lite0" and cat.model_version
    assert (cat.image.format, cat.image.width, cat.image.height) == ("JPEG", 451, 300)
    assert cat.image.bytes == len(photos.cat_jpeg)
    assert cat.key == "drops/my cat + me.jpg"
    assert {"download_ms", "decode_ms", "inference_ms", "total_ms"} <= set(cat.timings)
    assert store.get(ids["coffee"]).labels[0].label == "espresso"
    assert store.get(ids["empty"]).error_code == "empty_object"
    assert store.get(ids["text"]).error_code == "not_an_image"
    assert store.get(ids["truncated"]).error_code == "corrupt_image"
    for name in ("empty", "text", "truncated"):
        record = store.get(ids[name])
        assert record.status == "failed" and record.error_message and not record.labels
    assert queue_counts(clients, resources.queue_url) == (0, 0)


def _reencode(data: bytes, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buffer, fmt)
    return buffer.getvalue()


def test_duplicate_deliveries_leave_one_record(make_worker, settings, clients, resources,
                                               store) -> None:
    image_id = put_image(clients, settings, "a/dup.png", png())
    # The same event again, twice in one message and once more on its own.
    body = s3_event(settings.bucket, "a/dup.png", "a/dup.png")
    clients.sqs.send_message(QueueUrl=resources.queue_url, MessageBody=body)
    clients.sqs.send_message(QueueUrl=resources.queue_url, MessageBody=s3_event(
        settings.bucket, "a/dup.png"))
    classifier = FakeClassifier()

    _drain(make_worker(settings, clients, classifier))

    assert store.get(image_id).status == "done"
    items = clients.dynamodb.scan(TableName=settings.table)["Items"]
    # One record, and its search items (one per word: "fake", "other").
    assert [i["image_id"]["S"] for i in items if not is_word_item(i["image_id"]["S"])] == [
        image_id]
    assert {result_of(i) for i in items} == {image_id}
    assert queue_counts(clients, resources.queue_url) == (0, 0)


def test_one_batch_one_model_call(make_worker, settings, clients, resources, store) -> None:
    for i in range(7):
        put_image(clients, settings, f"many/{i}.png", png((30 + i, 20)))
    classifier = FakeClassifier()
    worker = make_worker(dataclasses.replace(settings, receive_batch=10), clients, classifier)
    messages = clients.sqs.receive_message(QueueUrl=resources.queue_url,
                                           MaxNumberOfMessages=10)["Messages"]

    report = worker.process_messages(messages)

    assert report.done == 7
    assert classifier.batches == [7]
    assert report.deleted == len(messages)


def test_malformed_message_is_left_for_the_dead_letter_queue(make_worker, settings, clients,
                                                             resources,
                                                             store) -> None:
    clients.sqs.send_message(QueueUrl=resources.queue_url, MessageBody="this is not an event")
    good = put_image(clients, settings, "ok.png", png())
    worker = make_worker(settings, clients, FakeClassifier())
    messages = _receive_all(clients, resources.queue_url)

    report = worker.process_messages(messages)

    assert report.malformed == 1
    assert store.get(good).status == "done"
    # The malformed message is still in flight, not deleted.
    assert queue_counts(clients, resources.queue_url) == (0, 1)


def _receive_all(clients: Clients, url: str) -> list[dict]:
    messages: list[dict] = []
    while True:
        got = clients.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages")
        if not got:
            return messages
        messages.extend(got)


def test_test_events_and_foreign_buckets_are_acknowledged(make_worker, settings, clients, resources,
                                                          store) -> None:
    _receive_all(clients, resources.queue_url)  # moto's own s3:TestEvent, if any
    clients.sqs.send_message(QueueUrl=resources.queue_url, MessageBody=(
        '{"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "test-images"}'))
    clients.sqs.send_message(QueueUrl=resources.queue_url,
                             MessageBody=s3_event("someone-elses-bucket", "x.jpg"))
    messages = _receive_all(clients, resources.queue_url)

    report = make_worker(settings, clients, FakeClassifier()).process_messages(messages)

    assert report.ignored == 1
    assert report.deleted == len(messages) == 2
    assert clients.dynamodb.scan(TableName=settings.table)["Items"] == []


def test_object_deleted_before_it_is_read(make_worker, settings, clients, resources, store) -> None:
    image_id = put_image(clients, settings, "gone.png", png())
    clients.s3.delete_object(Bucket=settings.bucket, Key="gone.png")

    _drain(make_worker(settings, clients, FakeClassifier()))

    record = store.get(image_id)
    assert record.status == "failed" and record.error_code == "object_missing"


def test_byte_and_pixel_caps(make_worker, settings, clients, resources, store) -> None:
    capped = dataclasses.replace(settings, max_upload_bytes=100_000, max_pixels=100 * 100)
    big_bytes = put_image(clients, settings, "big.bmp", _bmp((300, 200)))  # 180 kB
    many_pixels = put_image(clients, settings, "wide.png", png((1000, 11)))
    # A decompression bomb: a small file announcing a huge image.
    bomb = put_image(clients, settings, "bomb.png", png((20000, 20000), mode="1"))

    _drain(make_worker(capped, clients, FakeClassifier()))

    assert store.get(big_bytes).error_code == "too_large"
    assert store.get(many_pixels).error_code == "too_many_pixels"
    assert store.get(bomb).error_code == "too_many_pixels"


def _bmp(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size).save(buffer, "BMP")
    return buffer.getvalue()


class _FlakyS3:
    """Wraps the S3 client; get_object fails with the given code a number of times."""

    def __init__(self, s3: Any, code: str, times: int) -> None:
        self._s3 = s3
        self.code = code
        self.times = times

    def get_object(self, **kwargs: Any) -> Any:
        if self.times > 0:
            self.times -= 1
            raise ClientError({"Error": {"Code": self.code, "Message": "injected"}}, "GetObject")
        return self._s3.get_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)


def test_transient_s3_error_leaves_the_message(make_worker, settings, clients, resources,
                                               store) -> None:
    image_id = put_image(clients, settings, "later.png", png())
    flaky = dataclasses.replace(clients, s3=_FlakyS3(clients.s3, "SlowDown", times=1))
    worker = make_worker(settings, flaky, FakeClassifier())
    messages = _receive_all(clients, resources.queue_url)

    report = worker.process_messages(messages)

    assert report.retried == 1
    assert store.get(image_id) is None
    assert queue_counts(clients, resources.queue_url)[1] >= 1

    # Redelivered, it succeeds.
    for m in (m for m in messages if "later.png" in m["Body"]):
        clients.sqs.change_message_visibility(QueueUrl=resources.queue_url,
                                              ReceiptHandle=m["ReceiptHandle"],
                                              VisibilityTimeout=0)
    _drain(worker)
    assert store.get(image_id).status == "done"


def test_model_failure_leaves_messages_for_retry(make_worker, settings, clients, resources,
                                                 store) -> None:
    image_id = put_image(clients, settings, "m.png", png())
    worker = make_worker(settings, clients, FakeClassifier(fail=True))

    report = worker.process_messages(_receive_all(clients, resources.queue_url))

    assert report.retried == 1 and report.deleted <= 1  # only the TestEvent, if any
    assert store.get(image_id) is None


def test_stop_before_run_receives_nothing(make_worker, settings, clients, resources) -> None:
    put_image(clients, settings, "s.png", png())
    worker = make_worker(settings, clients, FakeClassifier())
    worker.stop()

    report = worker.run()

    assert report.received == 0
    assert queue_counts(clients, resources.queue_url)[0] >= 1


def test_stop_while_waiting_hands_back_what_the_long_poll_brings(
        make_worker, settings, clients, resources, store) -> None:
    # Given a worker long-polling an empty queue
    clients.sqs.purge_queue(QueueUrl=resources.queue_url)
    worker = make_worker(dataclasses.replace(settings, poll_seconds=5), clients,
                         FakeClassifier())
    reports: list[Any] = []
    runner = threading.Thread(target=lambda: reports.append(worker.run()), daemon=True)
    runner.start()
    time.sleep(1)  # into the long poll

    # When it is told to stop (what the SIGTERM handler does, and all it does), and an image
    # arrives while the poll is still open
    worker.stop()
    image_id = put_image(clients, settings, "late.png", png())
    runner.join(10)

    # Then run() returned once the poll ended, without processing the image or leaving it out
    # of sight until its visibility timeout: the next processor gets it at once
    assert not runner.is_alive()
    assert reports and reports[0].received == 0
    assert queue_counts(clients, resources.queue_url) == (1, 0)
    assert store.get(image_id) is None


def test_stop_waits_for_a_batch_being_fetched_and_hands_it_back(
        make_worker, settings, clients, resources) -> None:
    # Given three images, one per receive, and a worker whose second fetch is slow
    clients.sqs.purge_queue(QueueUrl=resources.queue_url)
    keys = [f"slow{i}.png" for i in range(3)]
    for key in keys:
        put_image(clients, settings, key, png())
    # (A long poll, as in production: an idle lane polling without one hogs the GIL.)
    worker = make_worker(dataclasses.replace(settings, receive_batch=1, poll_seconds=1),
                         clients, FakeClassifier())
    fetch = worker._handler.fetch
    second_fetch, classified = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow_second_fetch(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            second_fetch.set()
            classified.wait(10)
            time.sleep(0.5)  # still fetching when stop() comes
        return fetch(*args, **kwargs)

    worker._handler.fetch = slow_second_fetch
    classify = worker._handler.classify

    def classify_then_signal(*args: Any, **kwargs: Any) -> Any:
        handled = classify(*args, **kwargs)
        classified.set()
        return handled

    worker._handler.classify = classify_then_signal
    reports: list[Any] = []
    runner = threading.Thread(target=lambda: reports.append(worker.run()), daemon=True)
    runner.start()

    # When stop() comes after the first batch, while the second is being fetched
    assert second_fetch.wait(10) and classified.wait(10)
    worker.stop()
    runner.join(20)

    # Then the first was processed, and the second went straight back to the queue with the
    # third (none waits out a visibility timeout)
    assert not runner.is_alive()
    assert reports[0].done == 1
    assert queue_counts(clients, resources.queue_url) == (2, 0)


@pytest.mark.parametrize(("received_after", "queue_ms"), [(2.5, 2500.0), (-1.0, 0.0)])
def test_timings_count_from_the_event_and_the_receive(make_worker, settings, clients, resources,
                                                      store, received_after: float,
                                                      queue_ms: float) -> None:
    # Given an event of a known time, and a worker whose clock reads `received_after` seconds
    # later at the receive and half a second more when the result is written
    happened = "2026-03-04T05:06:07.000Z"
    start = parse_utc(happened).timestamp() + received_after
    readings = iter([start, start + 0.5])
    put_image(clients, settings, "timed.png", png())
    clients.sqs.purge_queue(QueueUrl=resources.queue_url)
    clients.sqs.send_message(QueueUrl=resources.queue_url, MessageBody=s3_event(
        settings.bucket, "timed.png", event_time=happened))
    worker = make_worker(settings, clients, FakeClassifier(), clock=lambda: next(readings))

    worker.process_messages(_receive_all(clients, resources.queue_url))

    # Then the queue time is the wait before the receive (none when the clocks disagree),
    # and the total the time from the receive to the write
    record = store.get(image_id_for_object(settings.bucket, "timed.png"))
    assert record.status == "done" and record.event_time == happened
    assert record.timings["queue_ms"] == queue_ms
    assert record.timings["total_ms"] == 500.0


def test_results_expire_by_setting_and_are_kept_without_it(make_worker, settings, clients,
                                                           resources, store) -> None:
    # Given results kept 7 days, and a worker whose clock says when it received the event
    received = 1_800_000_000.0
    readings = iter([received, received + 0.5])
    put_image(clients, settings, "expiring.png", png())
    worker = make_worker(dataclasses.replace(settings, result_expiry_days=7), clients,
                         FakeClassifier(), clock=lambda: next(readings))

    worker.process_messages(_receive_all(clients, resources.queue_url))

    # Then the table's TTL removes the result 7 days after it was received
    image_id = image_id_for_object(settings.bucket, "expiring.png")
    assert store.get(image_id).expires_at == int(received) + 7 * 86400
    item = clients.dynamodb.get_item(TableName=settings.table,
                                     Key={"image_id": {"S": image_id}})["Item"]
    assert item["expires_at"] == {"N": str(int(received) + 7 * 86400)}

    # And without the setting a result carries no expiry at all
    put_image(clients, settings, "kept.png", png())
    make_worker(settings, clients, FakeClassifier()).process_messages(
        _receive_all(clients, resources.queue_url))
    kept = image_id_for_object(settings.bucket, "kept.png")
    assert store.get(kept).status == "done" and store.get(kept).expires_at is None
    assert "expires_at" not in clients.dynamodb.get_item(
        TableName=settings.table, Key={"image_id": {"S": kept}})["Item"]
