"""The worker classifies each content once: duplicates in a batch and across batches reuse it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from imagepipe.core.aws import Clients
from imagepipe.core.records import Label, ResultStore, StoreError
from processor.dedupe import content_sha256
from processor.worker import Worker
from tests.fakes import (
    CountingClassifier,
    png_of_width,
    put_image,
)


def _process_queue(worker: Worker, clients: Clients, url: str) -> None:
    """Receive everything on the queue and hand it to the worker as one batch."""
    messages: list[dict] = []
    while got := clients.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10
                                             ).get("Messages"):
        messages.extend(got)
    worker.process_messages(messages)


def test_duplicates_in_one_batch_are_classified_once(make_worker, settings, clients, resources,
                                                     store) -> None:
    # Given three objects with the same bytes and one different, in one batch
    same = png_of_width(64)
    ids = [put_image(clients, settings, f"dup/{i}.png", same) for i in range(3)]
    other = put_image(clients, settings, "dup/other.png", png_of_width(80))
    classifier = CountingClassifier()

    _process_queue(make_worker(settings, clients, classifier), clients, resources.queue_url)

    # Then the model saw two images, and the copies say whose labels they carry
    assert classifier.images == 2
    records = [store.get(i) for i in ids]
    leader = next(r for r in records if not r.reused)
    copies = [r for r in records if r.reused]
    assert len(copies) == 2
    assert all(r.duplicate_of == leader.image_id for r in copies)
    assert all(r.status == "done" and r.labels == leader.labels for r in records)
    assert all(r.sha256 == content_sha256(same) for r in records)
    assert all(r.model_name == "fake" and r.model_version == "1" for r in records)
    assert store.get(other).labels[0].label == "width 80"
    assert not store.get(other).reused


@pytest.mark.parametrize("index", ["ResultStore", "LaggingIndex"])
def test_copies_are_reused_only_among_one_owners_images(make_worker, settings, clients,
                                                        resources, store, index: str) -> None:
    # Given the same bytes dropped under two users' prefixes, and once more under the first's
    alice, bob = "0b9ae6f2-aaaa-4bd3-9e0a-4f1d2c8a7e55", "5c1d7e3a-bbbb-4f0e-8a2b-9d3c6e1f0a77"
    same = png_of_width(64)
    classifier = CountingClassifier()
    reader = ResultStore if index == "ResultStore" else LaggingIndex
    worker = make_worker(settings, clients, classifier,
                         store=reader(clients.dynamodb, settings.table))
    first = put_image(clients, settings, f"users/{alice}/cat.png", same)
    _process_queue(worker, clients, resources.queue_url)

    # When both come in, in one batch
    again = put_image(clients, settings, f"users/{alice}/cat again.png", same)
    strangers = put_image(clients, settings, f"users/{bob}/cat.png", same)
    _process_queue(worker, clients, resources.queue_url)

    # Then Alice's copy reuses her result; Bob's runs the model and learns nothing of hers
    assert classifier.images == 2
    assert store.get(again).duplicate_of == first and store.get(again).owner == alice
    bobs = store.get(strangers)
    assert bobs.owner == bob and bobs.status == "done"
    assert not bobs.reused and bobs.duplicate_of is None


class LaggingIndex(ResultStore):
    """An index that has not caught up yet: results written a moment ago are not found."""

    def find_by_content(self, *args: Any) -> None:
        return None


# With a lagging index the processor's own memory of what it labelled finds the copy.
@pytest.mark.parametrize("index", [ResultStore, LaggingIndex])
def test_bytes_seen_before_reuse_the_earlier_result(make_worker, settings, clients, resources,
                                                    store,
                                                    index: type[ResultStore]) -> None:
    first = put_image(clients, settings, "a/first.png", png_of_width(64))
    classifier = CountingClassifier()
    worker = make_worker(settings, clients, classifier,
                         store=index(clients.dynamodb, settings.table))
    _process_queue(worker, clients, resources.queue_url)

    later = put_image(clients, settings, "b/later copy.png", png_of_width(64))
    _process_queue(worker, clients, resources.queue_url)

    assert classifier.images == 1
    record = store.get(later)
    assert record.reused and record.duplicate_of == first
    assert record.labels == store.get(first).labels
    assert record.key == "b/later copy.png"
    assert record.image.width == 64  # the copy's own facts, not the original's
    assert "inference_ms" not in record.timings


def test_reuse_turned_off_runs_the_model_on_every_image(make_worker, settings, clients, resources,
                                                        store) -> None:
    ids = [put_image(clients, settings, f"dup/{i}.png", png_of_width(64)) for i in range(3)]
    classifier = CountingClassifier()
    worker = make_worker(dataclasses.replace(settings, reuse_results=False), clients, classifier)
    _process_queue(worker, clients, resources.queue_url)
    later = put_image(clients, settings, "b/later.png", png_of_width(64))
    _process_queue(worker, clients, resources.queue_url)

    assert classifier.images == 4
    assert not any(store.get(i).reused for i in [*ids, later])


def test_another_model_version_classifies_again(make_worker, settings, clients, resources,
                                                store) -> None:
    put_image(clients, settings, "a/first.png", png_of_width(64))
    _process_queue(make_worker(settings, clients, CountingClassifier("1")), clients,
                   resources.queue_url)

    newer = CountingClassifier("2")
    later = put_image(clients, settings, "b/later.png", png_of_width(64))
    _process_queue(make_worker(settings, clients, newer), clients, resources.queue_url)

    assert newer.images == 1
    assert not store.get(later).reused
    assert store.get(later).model_version == "2"


def test_broken_copies_still_fail_on_their_own(make_worker, settings, clients, resources,
                                               store) -> None:
    broken = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
    ids = [put_image(clients, settings, f"bad/{i}.png", broken) for i in range(2)]

    _process_queue(make_worker(settings, clients, CountingClassifier()), clients,
                   resources.queue_url)

    for image_id in ids:
        record = store.get(image_id)
        assert record.status == "failed" and not record.reused
        assert record.sha256 == content_sha256(broken)


def test_a_failed_lookup_only_costs_a_model_run(make_worker, settings, clients, resources,
                                                store) -> None:
    class BrokenIndex(ResultStore):
        def find_by_content(self, *args: Any) -> None:
            raise StoreError("index unavailable", "InternalServerError")

    put_image(clients, settings, "a/first.png", png_of_width(64))
    classifier = CountingClassifier()
    broken = BrokenIndex(clients.dynamodb, settings.table)
    _process_queue(make_worker(settings, clients, classifier, store=broken), clients,
                   resources.queue_url)
    # Another processor, which has not seen these bytes itself
    later = put_image(clients, settings, "b/later.png", png_of_width(64))
    _process_queue(make_worker(settings, clients, classifier, store=broken), clients,
                   resources.queue_url)

    assert classifier.images == 2
    assert store.get(later).status == "done" and not store.get(later).reused


def test_when_the_model_fails_the_copies_wait_too(make_worker, settings, clients, resources,
                                                  store) -> None:
    ids = [put_image(clients, settings, f"dup/{i}.png", png_of_width(64)) for i in range(3)]
    worker = make_worker(settings, clients, CountingClassifier(fail=True))
    messages = clients.sqs.receive_message(QueueUrl=resources.queue_url,
                                           MaxNumberOfMessages=10)["Messages"]

    report = worker.process_messages(messages)

    assert report.retried == 3 and report.done == 0
    assert all(store.get(i) is None for i in ids)


def test_a_redelivered_original_stays_the_original(make_worker, settings, clients, resources, store,
                                                   make_event) -> None:
    first = put_image(clients, settings, "a/first.png", png_of_width(64))
    classifier = CountingClassifier()
    worker = make_worker(settings, clients, classifier)
    _process_queue(worker, clients, resources.queue_url)

    clients.sqs.send_message(QueueUrl=resources.queue_url,
                             MessageBody=make_event(settings.bucket, "a/first.png"))
    _process_queue(worker, clients, resources.queue_url)

    assert classifier.images == 1
    record = store.get(first)
    assert record.status == "done" and not record.reused and record.duplicate_of is None


def test_recent_results_forget_the_oldest_beyond_capacity() -> None:
    from imagepipe.core.records import ResultRecord
    from processor.dedupe import RecentResults

    recent = RecentResults(capacity=2)
    model = CountingClassifier()
    for n in range(3):
        base = ResultRecord(image_id=f"id{n}", bucket="b", key=f"k{n}", sha256=f"sha{n}")
        recent.remember(base.done([Label("x", 0.9, 1)], model.name, model.version))
    recent.remember(ResultRecord(image_id="f", bucket="b", key="f", sha256="shaf"
                                 ).failed("corrupt_image", "no"))

    assert len(recent) == 2
    assert recent.get("sha0", model) is None
    assert recent.get("sha2", model).image_id == "id2"
    assert recent.get("shaf", model) is None
    assert recent.get("sha2", CountingClassifier(version="2")) is None


def test_copies_that_run_out_of_retries_say_why(make_worker, settings, clients, resources,
                                                store) -> None:
    # Given three copies of the same bytes on their last receive, and a model that fails
    ids = [put_image(clients, settings, f"dup/{i}.png", png_of_width(64)) for i in range(3)]
    last_try = dataclasses.replace(settings, max_receives=1)
    messages = clients.sqs.receive_message(QueueUrl=resources.queue_url,
                                           MaxNumberOfMessages=10)["Messages"]

    # When the worker gives up on them
    worker = make_worker(last_try, clients, CountingClassifier(fail=True))
    report = worker.process_messages(messages)

    # Then every copy, not only the one the model ran on, names the reason
    assert report.retried == 3
    for image_id in ids:
        record = store.get(image_id)
        assert record.status == "failed" and record.error_code == "retries_exhausted"
        assert record.error_message.endswith("last: the model failed on this batch"), (
            record.error_message)


def test_classify_once_returns_one_outcome_per_item_in_order() -> None:
    from processor.batch import Done, Fetched, Image, Retry, Reused
    from processor.dedupe import classify_once
    from processor.events import ObjectCreated

    class NothingIndexed:
        def find_by_content(self, *args: Any) -> None:
            return None

    def fetched(key: str, sha256: str) -> Fetched:
        event = ObjectCreated("b", key, None, None, "ObjectCreated:Put", None)
        image = Image(event, f"id-{key}", (f"m-{key}",), 0.0)
        return Fetched(image, dataclasses.replace(image.base_record(), sha256=sha256), None)

    # Given two contents, each twice, and a model that labels the first and not the second
    items = [fetched("a", "one"), fetched("b", "two"), fetched("c", "one"), fetched("d", "two")]
    model = CountingClassifier()

    def classify(leaders: list[Fetched]) -> list:
        assert [item.key for item in leaders] == ["a", "b"]
        return [Done(leaders[0].record.done([Label("x", 0.9, 1)], model.name, model.version)),
                Retry("the model was busy", leaders[1].record)]

    outcomes = classify_once(NothingIndexed(), model, items, classify)

    # Then the copy of the first reuses its labels and the copy of the second waits with it
    assert [type(o) for o in outcomes] == [Done, Retry, Reused, Retry]
    assert outcomes[2].record.duplicate_of == "id-a" and outcomes[2].record.key == "c"
    assert outcomes[3].reason == outcomes[1].reason == "the model was busy"
    assert outcomes[3].record.key == "d"
