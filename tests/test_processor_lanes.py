"""Two lanes: the front's uploads notify the interactive queue and are served before bulk work."""

from __future__ import annotations

import dataclasses
import io
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from PIL import Image

from imagepipe.core.provision import provision
from imagepipe.core.records import ResultStore
from imagepipe.core.settings import Settings
from tests.conftest import s3_event, wait_for
from tests.fakes import FakeClassifier, png, put_image, queue_counts

# EfficientNet-Lite0 takes about this long per image on a CPU core; the fake sleeps it.
SECONDS_PER_IMAGE = 0.01
BULK_IMAGES = 100
BULK_SIZE = (32, 32)
TRIES = 5


def _jpeg(seed: int, size: tuple[int, int] = BULK_SIZE) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (seed % 256, seed // 256 % 256, 90)).save(buffer, "JPEG")
    return buffer.getvalue()


def _drop(clients: Any, settings: Settings, count: int, start: int = 0) -> None:
    """Put `count` small JPEGs straight into the bucket, as a bulk tool would."""
    def put(i: int) -> None:
        clients.s3.put_object(Bucket=settings.bucket, Key=f"drop/{i:05d}.jpg",
                              Body=_jpeg(i), ContentType="image/jpeg")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(start, start + count)))


def _upload(client: Any, size: tuple[int, int]) -> str:
    """Upload one image as the page does: a presigned POST straight to the bucket."""
    data = _jpeg(99_999, size)
    response = client.post("/api/uploads", json={
        "filename": "me.jpg", "content_type": "image/jpeg", "size": len(data)})
    assert response.status_code == 201, response.json
    body = response.json
    sent = requests.post(body["upload"]["url"], data=body["upload"]["fields"],
                         files={"file": ("me.jpg", data, "image/jpeg")}, timeout=30)
    assert sent.status_code in (200, 201, 204), sent.text
    return body["image_id"]


def test_the_bucket_tells_each_lane_of_its_own_objects(settings, clients, resources) -> None:
    # Given both lanes provisioned
    assert resources.interactive_queue_url is not None
    for url in (resources.queue_url, resources.interactive_queue_url):
        clients.sqs.purge_queue(QueueUrl=url)

    # When the front's POST lands under uploads/ and a bulk tool PUTs elsewhere and there
    body = _jpeg(1)
    post = clients.s3.generate_presigned_post(Bucket=settings.bucket, Key="uploads/x.jpg")
    requests.post(post["url"], data=post["fields"], files={"file": ("x.jpg", body)}, timeout=10)
    clients.s3.put_object(Bucket=settings.bucket, Key="photos/y.jpg", Body=body)
    clients.s3.put_object(Bucket=settings.bucket, Key="uploads/z.jpg", Body=body)

    # Then the interactive lane hears of the POST only, the bulk lane of both PUTs
    assert queue_counts(clients, resources.interactive_queue_url) == (1, 0)
    assert queue_counts(clients, resources.queue_url) == (2, 0)


def test_one_lane_when_the_interactive_queue_is_off(settings, clients, resources) -> None:
    one = dataclasses.replace(settings, interactive_queue="off")
    assert list(one.lanes) == ["bulk"]
    provision(one, clients)
    for url in (resources.queue_url, resources.interactive_queue_url):
        clients.sqs.purge_queue(QueueUrl=url)
    post = clients.s3.generate_presigned_post(Bucket=settings.bucket, Key="uploads/x.jpg")
    requests.post(post["url"], data=post["fields"], files={"file": ("x.jpg", b"x")}, timeout=10)
    assert queue_counts(clients, resources.queue_url) == (1, 0)
    assert queue_counts(clients, resources.interactive_queue_url) == (0, 0)


class _Recording(FakeClassifier):
    """Notes the keys of each batch; its first batch waits for `during_first` to run."""

    def __init__(self, during_first: Any) -> None:
        super().__init__()
        self.during_first = during_first
        self.order: list[list[Any]] = []

    def preprocess(self, image: Any) -> Any:
        return image.size

    def classify(self, images: list[Any], top_k: int = 5) -> list[Any]:
        self.order.append(images)
        if len(self.order) == 1:
            self.during_first()
        return super().classify(images, top_k)


def test_an_interactive_batch_overtakes_prefetched_bulk_batches(settings, clients, resources,
                                                                make_worker) -> None:
    # Given 30 bulk images (three batches) whose first batch is being classified
    bulk = [put_image(clients, settings, f"bulk/{i}.png", png((40 + i, 40)))
            for i in range(30)]
    upload = put_image(clients, settings, "uploads/mine.png", png((20, 20)))
    # (Their PUTs told the bulk lane; the test sends each lane its events itself.)
    clients.sqs.purge_queue(QueueUrl=resources.queue_url)
    for i in range(30):
        clients.sqs.send_message(QueueUrl=resources.queue_url,
                                 MessageBody=s3_event(settings.bucket, f"bulk/{i}.png"))
    store = ResultStore(clients.dynamodb, settings.table)

    def upload_arrives() -> None:
        # When an upload arrives while the bulk batches behind it are prefetched
        wait_for(lambda: queue_counts(clients, resources.queue_url)[1] == 30,
                 "the bulk batches prefetched")
        clients.sqs.send_message(QueueUrl=resources.interactive_queue_url,
                                 MessageBody=s3_event(settings.bucket, "uploads/mine.png",
                                                      event_name="ObjectCreated:Post"))
        wait_for(lambda: queue_counts(clients, resources.interactive_queue_url)[1] == 1,
                 "the upload received")
        time.sleep(0.3)  # fetched and decoded

    classifier = _Recording(upload_arrives)
    worker = make_worker(settings, clients, classifier)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    try:
        wait_for(lambda: all(store.get(i) is not None and store.get(i).status == "done"
                             for i in [*bulk, upload]), "every result", timeout=60)
    finally:
        worker.stop()
        runner.join(30)

    # Then the upload is the next batch classified, ahead of the prefetched bulk ones
    assert [len(batch) for batch in classifier.order] == [10, 1, 10, 10]
    assert classifier.order[1] == [(20, 20)]


class _Tally(FakeClassifier):
    """A real model's time per image, noting how many bulk images it has classified before
    each upload (uploads are told apart by their size)."""

    def __init__(self) -> None:
        super().__init__(seconds_per_image=SECONDS_PER_IMAGE)
        self.bulk_done = 0
        self.bulk_before: dict[tuple[int, int], int] = {}  # upload's size -> bulk images before

    def preprocess(self, image: Any) -> Any:
        return image.size

    def classify(self, images: list[Any], top_k: int = 5) -> list[Any]:
        labels = super().classify(images, top_k)
        for size in images:
            if size == BULK_SIZE:
                self.bulk_done += 1
            else:
                self.bulk_before[size] = self.bulk_done
        return labels


def _overtaken(settings: Settings, clients: Any, store: Any, client: Any, make_worker: Any,
               lanes: int) -> tuple[list[tuple[int, int]], list[float]]:
    """For each of 5 uploads made 0.3 s apart while a drop is being processed: the bulk images
    left when it was made and how many were classified before it, and the seconds to its
    result (printed, not judged: the machine is shared)."""
    name = "two" if lanes == 2 else "one"
    settings = dataclasses.replace(
        settings, poll_seconds=1, reuse_results=False,
        # Queues of their own, so what one run leaves queued does not slow the other.
        queue=f"lanes-{name}-bulk", dead_letter_queue=f"lanes-{name}-bulk-dlq",
        interactive_queue=f"lanes-{name}-interactive" if lanes == 2 else "off",
        interactive_dead_letter_queue=f"lanes-{name}-interactive-dlq")
    resources = provision(settings, clients)
    classifier = _Tally()
    worker = make_worker(settings, clients, classifier)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    try:
        _drop(clients, settings, BULK_IMAGES, lanes * 100_000)
        # Once the processor is into the drop
        deadline = time.monotonic() + 60
        while queue_counts(clients, resources.queue_url)[1] == 0:
            assert time.monotonic() < deadline, "the processor never took the drop"
            time.sleep(0.02)
        uploads: dict[str, tuple[float, int, tuple[int, int]]] = {}
        seconds: dict[str, float] = {}
        watching = threading.Event()

        def watch() -> None:
            # Notes each result as it comes, while the next uploads are being made.
            while watching.is_set() or len(seconds) < len(uploads):
                for image_id, (started, _, _) in list(uploads.items()):
                    record = store.get(image_id) if image_id not in seconds else None
                    if record is not None and record.status != "pending":
                        seconds[image_id] = time.monotonic() - started
                time.sleep(0.01)

        watching.set()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        for i in range(TRIES):
            size = (24 + i, 24)
            started, bulk_done = time.monotonic(), classifier.bulk_done
            uploads[_upload(client, size)] = (started, bulk_done, size)
            time.sleep(0.3)
        watching.clear()
        watcher.join(300)
        assert len(seconds) == TRIES, "the uploads' results never came"
        assert all(store.get(i).status == "done" for i in uploads)
        left = queue_counts(clients, resources.queue_url)
    finally:
        worker.stop()
        runner.join(30)
    if lanes == 2:
        # The drop was still being processed when the last upload's result came.
        assert sum(left) > 0
    # Per upload: (bulk images left when it was made, bulk images classified before it)
    between = [(BULK_IMAGES - done, classifier.bulk_before[size] - done)
               for _, done, size in uploads.values()]
    return between, [seconds[image_id] for image_id in uploads]


@pytest.mark.slow
def test_an_upload_overtakes_a_bulk_drop(settings, clients, store, client, make_worker,
                                         capsys) -> None:
    """An upload made during a drop is classified next, not behind the drop.

    The model is the fake with a real model's time per image (10 ms), so the drop takes
    seconds; what is judged is the order, and the seconds are printed for scale.
    """
    one_between, one_seconds = _overtaken(settings, clients, store, client, make_worker, 1)
    two_between, two_seconds = _overtaken(settings, clients, store, client, make_worker, 2)
    with capsys.disabled():
        print(f"\nupload under a {BULK_IMAGES}-image drop, (bulk images left, classified "
              f"before it) and seconds to its result: one lane {one_between} "
              f"(median {statistics.median(one_seconds):.2f} s), two lanes {two_between} "
              f"(median {statistics.median(two_seconds):.2f} s)")
    # Two lanes: at most the bulk batch in hand and the next before each upload.
    assert max(before for _, before in two_between) <= 20
    # One lane: each upload waits behind the rest of the drop (less a batch already taken),
    # and the first was made with most of it left.
    assert all(before >= left - 10 for left, before in one_between)
    assert one_between[0][1] >= BULK_IMAGES // 2
