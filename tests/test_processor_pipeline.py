"""The worker's overlapping stages: prefetching, back-pressure, visibility extension, stop."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from imagepipe.core.ids import image_id_for_object
from processor.pipeline import NOT_READY, Prefetcher, StageTimes, VisibilityExtender
from tests.conftest import s3_event, wait_for
from tests.fakes import FakeClassifier, png, queue_counts


def test_prefetcher_yields_in_order_and_respects_its_limit() -> None:
    calls = iter(range(100))
    ahead = Prefetcher(lambda: next(calls), depth=2, limit=5)

    assert list(ahead) == [0, 1, 2, 3, 4]
    assert ahead.close() == []


def test_prefetcher_blocks_when_the_consumer_is_behind() -> None:
    made: list[int] = []
    third, fourth = threading.Event(), threading.Event()

    def produce() -> int:
        made.append(len(made))
        {3: third, 4: fourth}.get(len(made), threading.Event()).set()
        return made[-1]

    ahead = Prefetcher(produce, depth=2)
    assert third.wait(timeout=10), "the prefetcher never made a third batch"
    # Nobody consumes, so a fourth must never be made: this wait is for a non-event.
    assert not fourth.wait(timeout=0.3)

    # Two wait in the queue and a third waits to be put: back-pressure bounds the work held.
    assert len(made) == 3
    left = ahead.close()
    assert left == [0, 1, 2]


def test_empty_results_never_hold_up_one_that_matters() -> None:
    # An idle lane's empty receives while the classifier is busy elsewhere...
    made: list[str | None] = []

    def produce() -> str | None:
        made.append(None if len(made) < 50 else "upload")
        return made[-1]

    ahead = Prefetcher(produce, depth=1, limit=51, droppable=lambda result: result is None)
    wait_for(lambda: len(made) == 51, "every receive")
    # ...are dropped while one waits: the upload comes right after the one queued first.
    taken = [wait_for(lambda: (got := ahead.poll()) is not NOT_READY and [got], "a result")[0]
             for _ in range(2)]
    assert taken == [None, "upload"]
    ahead.close()


def test_prefetcher_hands_errors_to_the_consumer() -> None:
    def produce() -> int:
        raise RuntimeError("receive exploded")

    ahead = Prefetcher(produce)
    with pytest.raises(RuntimeError, match="receive exploded"):
        list(ahead)
    ahead.close()


def test_stage_times_add_up() -> None:
    times = StageTimes()
    with times.measure("decode", 2):
        sum(range(100_000))
    with times.measure("decode"):
        pass

    snapshot = times.snapshot()["decode"]
    assert snapshot["count"] == 3 and snapshot["wall_s"] > 0 and snapshot["cpu_s"] > 0


def test_visibility_is_extended_only_for_messages_still_held(settings, clients, resources) -> None:
    clients.sqs.purge_queue(QueueUrl=resources.queue_url)  # the bucket's own test event
    for i in range(3):
        clients.sqs.send_message(QueueUrl=resources.queue_url, MessageBody=f"m{i}")
    messages = clients.sqs.receive_message(QueueUrl=resources.queue_url,
                                           MaxNumberOfMessages=10, VisibilityTimeout=30)["Messages"]
    now = [0.0]
    extender = VisibilityExtender(clients.sqs, resources.queue_url, 30, clock=lambda: now[0])
    extender.track(messages)
    extender.forget(messages[:1])

    assert extender.extend_due() == 0  # nothing is due yet
    now[0] = 11.0  # a third of the visibility timeout later
    assert extender.extend_due() == 2
    assert extender.extend_due() == 0  # extended just now
    extender.forget(messages)
    assert extender.held == 0


def test_run_processes_everything_with_prefetching(make_worker, settings, clients, resources,
                                                   store) -> None:
    ids = []
    for i in range(25):
        key = f"many/{i}.png"
        # Distinct images: identical bytes would be classified once (duplicate content).
        clients.s3.put_object(Bucket=settings.bucket, Key=key, Body=png((20 + i, 20)))
        ids.append(image_id_for_object(settings.bucket, key))
    classifier = FakeClassifier()
    worker = make_worker(settings, clients, classifier)

    report = worker.run(max_batches=4)

    assert report.done == 25
    assert all(store.get(i).status == "done" for i in ids)
    assert queue_counts(clients, resources.queue_url) == (0, 0)
    stages = worker.stage_times.snapshot()
    assert stages["download"]["count"] == stages["decode"]["count"] == 25
    assert stages["inference"]["count"] == 25 and stages["save"]["count"] == 25


def test_stop_releases_batches_received_ahead(make_worker, settings, clients, resources,
                                              store) -> None:
    for i in range(30):
        clients.s3.put_object(Bucket=settings.bucket, Key=f"s/{i}.png", Body=png((20 + i, 20)))
    # Drop the bucket's own test event, so the queue holds exactly the 30 objects.
    clients.sqs.purge_queue(QueueUrl=resources.queue_url)
    for i in range(30):
        clients.sqs.send_message(QueueUrl=resources.queue_url,
                                 MessageBody=s3_event(settings.bucket, f"s/{i}.png"))

    class SlowClassifier(FakeClassifier):
        def classify(self, images: list[Any], top_k: int = 5) -> list:
            # While the first batch is classified the prefetcher receives the other two...
            wait_for(lambda: queue_counts(clients, resources.queue_url) == (0, 30),
                     "the prefetcher to receive every message")
            worker.stop()  # ...and then SIGTERM arrives
            return super().classify(images, top_k)

    worker = make_worker(settings, clients, SlowClassifier())
    report = worker.run()

    # The batch in hand was finished and acknowledged; those received ahead came back at once.
    assert report.done == report.deleted == 10
    visible, in_flight = queue_counts(clients, resources.queue_url)
    assert (visible, in_flight) == (20, 0)
