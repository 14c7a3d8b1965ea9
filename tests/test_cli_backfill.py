"""`imagepipe backfill`: exactly the objects without results (or of another model) are queued."""

from __future__ import annotations

import io
import json
import time

import pytest

from imagepipe.cli.backfill import (
    MISSING,
    MODEL_CHANGED,
    Pacer,
    backfill,
)
from imagepipe.cli.progress import ProgressLine
from imagepipe.core.ids import image_id_for_object
from imagepipe.core.records import Label, ResultRecord, ResultStore
from imagepipe.core.s3events import S3Object, object_created_body
from processor.events import parse_body
from processor.worker import Worker
from tests.conftest import load_event
from tests.fakes import CountingClassifier, png_of_width

CURRENT = ("fake", "2")
# Three listing pages of PAGE objects, the last one short.
OBJECTS = 95
PAGE = 40


def _drain(clients, url: str) -> list[dict]:
    messages: list[dict] = []
    while got := clients.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10
                                             ).get("Messages"):
        messages.extend(got)
        clients.sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
    return messages


def _result(settings, key: str, status: str = "done", version: str = "2") -> ResultRecord:
    base = ResultRecord(image_id=image_id_for_object(settings.bucket, key),
                        bucket=settings.bucket, key=key)
    if status == "failed":
        return base.failed("not_an_image", "no")
    return base.done([Label("tabby", 0.5, 281)], "fake", version)


@pytest.fixture
def bucket(settings, clients, resources, store: ResultStore) -> dict[str, str]:
    """Objects with a current result, an old-model result, a failure, a pending record, none."""
    # Objects from before the pipeline: the bucket announced none of them.
    clients.s3.put_bucket_notification_configuration(Bucket=settings.bucket,
                                                     NotificationConfiguration={})
    kinds = {}
    for i in range(OBJECTS):
        key = f"old/{i:04d} photo {'+' if i % 7 == 0 else ''}é.jpg"
        clients.s3.put_object(Bucket=settings.bucket, Key=key, Body=b"x")
        kind = ("missing", "current", "old model", "failed", "pending")[i % 5]
        if kind == "current":
            store.save_result(_result(settings, key))
        elif kind == "old model":
            store.save_result(_result(settings, key, version="1"))
        elif kind == "failed":
            store.save_result(_result(settings, key, "failed"))
        elif kind == "pending":
            store.create_pending(ResultRecord(image_id=image_id_for_object(settings.bucket, key),
                                              bucket=settings.bucket, key=key))
        kinds[key] = kind
    clients.s3.put_object(Bucket=settings.bucket, Key="elsewhere/x.jpg", Body=b"x")
    clients.s3.put_object(Bucket=settings.bucket, Key="old/folder/", Body=b"")
    _drain(clients, resources.queue_url)  # moto's s3:TestEvent
    return kinds


def _run(settings, clients, store, mode: str, **kwargs) -> tuple:
    out = io.StringIO()
    report = backfill(settings, clients, store, "old/", mode, CURRENT, rate=0,
                      progress=ProgressLine(io.StringIO()), out=out, page_size=PAGE, **kwargs)
    return report, out.getvalue()


def test_only_objects_without_results_are_queued(settings, clients, resources, store,
                                                 bucket) -> None:
    report, out = _run(settings, clients, store, MISSING)

    expected = {k for k, kind in bucket.items() if kind in ("missing", "pending")}
    messages = _drain(clients, resources.queue_url)
    queued = [event.key for m in messages for event in parse_body(m["Body"])]
    assert sorted(queued) == sorted(expected)
    assert (report.listed, report.selected, report.queued) == (OBJECTS, len(expected),
                                                               len(expected))
    assert all(f"{image_id_for_object(settings.bucket, k)}  {k}" in out for k in expected)


def test_backfill_goes_to_the_bulk_lane_unless_told(settings, clients, resources, store,
                                                    bucket) -> None:
    expected = sorted(k for k, kind in bucket.items() if kind in ("missing", "pending"))
    _drain(clients, resources.interactive_queue_url)  # moto's s3:TestEvent
    _run(settings, clients, store, MISSING)
    assert _drain(clients, resources.interactive_queue_url) == []

    _run(settings, clients, store, MISSING, lane="interactive")
    messages = _drain(clients, resources.interactive_queue_url)
    assert sorted(e.key for m in messages for e in parse_body(m["Body"])) == expected


def test_model_changed_queues_results_of_other_versions(settings, clients, resources, store,
                                                        bucket) -> None:
    report, _ = _run(settings, clients, store, MODEL_CHANGED)

    expected = {k for k, kind in bucket.items() if kind == "old model"}
    queued = [e.key for m in _drain(clients, resources.queue_url) for e in parse_body(m["Body"])]
    assert sorted(queued) == sorted(expected)
    assert report.queued == len(expected)


def test_dry_run_queues_nothing(settings, clients, resources, store, bucket) -> None:
    report, out = _run(settings, clients, store, MISSING, dry_run=True)

    assert report.selected > 0 and report.queued == 0
    assert _drain(clients, resources.queue_url) == []
    assert len(out.splitlines()) == report.selected


def test_lookups_are_batched(settings, clients, resources, store, bucket) -> None:
    calls = []
    real = clients.dynamodb.batch_get_item

    def counting(**kwargs):
        calls.append(len(next(iter(kwargs["RequestItems"].values()))["Keys"]))
        return real(**kwargs)

    clients.dynamodb.batch_get_item = counting
    try:
        _run(settings, clients, store, MISSING, dry_run=True)
    finally:
        clients.dynamodb.batch_get_item = real
    # One BatchGetItem per listing page of a hundred, not one read per object.
    assert calls == [40, 40, 15]


def test_backfilled_events_are_processed(settings, clients, resources, store) -> None:
    key = "before the pipeline/my cat + me.png"
    clients.s3.put_object(Bucket=settings.bucket, Key=key, Body=png_of_width(64))
    _drain(clients, resources.queue_url)
    classifier = CountingClassifier()

    before = time.time()
    backfill(settings, clients, store, "", MISSING, (classifier.name, classifier.version),
             rate=0, progress=ProgressLine(io.StringIO()), out=io.StringIO())
    after = time.time()
    # The processor picks the event up a known 7 s after it was sent (its clock, injected).
    picked_up = after + 7.0
    with Worker(settings, clients, classifier, clock=lambda: picked_up) as worker:
        worker.run(max_batches=1)

    record = store.get(image_id_for_object(settings.bucket, key))
    assert record.status == "done" and record.key == key and record.source == "bucket"
    # The queue time runs from the event's time (set by backfill) to the pickup.
    assert 7000 - 1 <= record.timings["queue_ms"] <= (picked_up - before) * 1000 + 1


def test_event_body_has_the_shape_of_s3s() -> None:
    obj = S3Object("test-images", "photos/my cat + dog été.jpg", 1024,
                   '"d41d8cd98f00b204e9800998ecf8427e"')

    body = json.loads(object_created_body(obj, event_time="2026-11-25T12:00:00.000Z"))

    saved = load_event("s3_object_created.json")
    (record,) = body["Records"]
    assert set(record) == set(saved["Records"][0])
    assert set(record["s3"]) == set(saved["Records"][0]["s3"])
    assert record["s3"]["object"]["key"] == saved["Records"][0]["s3"]["object"]["key"]
    assert record["s3"]["object"]["eTag"] == "d41d8cd98f00b204e9800998ecf8427e"
    (event,) = parse_body(json.dumps(body))
    assert (event.bucket, event.key, event.size) == ("test-images", obj.key, 1024)


def test_pacer_spaces_batches_to_the_rate() -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(round(seconds, 6))
        now[0] += seconds

    pacer = Pacer(20, clock=lambda: now[0], sleep=sleep)
    for _ in range(4):
        pacer.wait(10)

    # 20 messages a second: a batch of ten every half second, the first at once.
    assert sleeps == [0.5, 0.5, 0.5]
    unlimited = Pacer(0, clock=lambda: now[0], sleep=sleep)
    unlimited.wait(10)
    unlimited.wait(10)
    assert len(sleeps) == 3
