"""The processor daemon: long-poll SQS, classify the batch, write results, acknowledge."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from imagepipe.core.aws import Clients, error_code, queue_url
from imagepipe.core.ids import UPLOAD_PREFIX, image_id_for_object
from imagepipe.core.records import (
    UNREAD,
    ImageFacts,
    Label,
    ResultRecord,
    ResultStore,
    StoreError,
    Unread,
)
from imagepipe.core.settings import Settings
from imagepipe.core.timestamps import format_utc, parse_utc
from processor.decode import DecodedImage, decode_image
from processor.dedupe import RecentResults, classify_once, content_sha256
from processor.errors import PermanentError, TransientError
from processor.events import MalformedEvent, ObjectCreated, parse_body
from processor.heartbeat import Heartbeat
from processor.pipeline import Prefetcher, StageTimes, VisibilityExtender

logger = logging.getLogger(__name__)

# S3 error codes that mean the object will not come back by retrying.
_GONE = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchBucket"})
_DENIED = frozenset({"AccessDenied", "403", "Forbidden"})


class Classifier(Protocol):
    """What the worker needs of a model (processor.model.Classifier is the real one)."""

    name: str
    version: str
    input_size: int

    def preprocess(self, image: Any) -> Any: ...

    def classify(self, images: list[Any], top_k: int = 5) -> list[list[Label]]: ...


_END = object()


class PollInterrupted(BaseException):
    """Raised by a signal handler to abandon an idle long poll.

    A BaseException, like KeyboardInterrupt, so that botocore's handlers let it through.
    """


@dataclass
class _Item:
    """One object of the batch, and the messages that announced it."""

    event: ObjectCreated
    image_id: str
    message_ids: list[str]
    received_at: float
    record: ResultRecord | None = None
    decoded: DecodedImage | None = None
    pixels: Any = None  # the classifier's preprocess() of the decoded image
    timings: dict[str, float] = field(default_factory=dict)
    receives: int = 1
    transient: bool = False
    retry_reason: str = ""

    def retry_later(self, reason: str) -> None:
        """Leave this object's messages on the queue for redelivery."""
        self.transient = True
        self.retry_reason = reason


@dataclass
class _Batch:
    """One receive, fetched and decoded, waiting for inference."""

    messages: Sequence[dict[str, Any]]
    items: list[_Item]
    ack: dict[str, dict[str, Any]]
    report: BatchReport


@dataclass
class BatchReport:
    """What one batch came to; the tests and the logs read it."""

    received: int = 0
    deleted: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0
    ignored: int = 0
    malformed: int = 0


class Worker:
    """Processes S3 events from one queue until stopped."""

    def __init__(
        self,
        settings: Settings,
        clients: Clients,
        classifier: Classifier,
        store: ResultStore | None = None,
        fetch_threads: int = 4,
        clock: Callable[[], float] = time.time,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self.settings = settings
        self.clients = clients
        self.classifier = classifier
        self.store = store or ResultStore(clients.dynamodb, settings.table)
        self.queue_url = queue_url(clients.sqs, settings.queue)
        self._stopping = threading.Event()
        self._idle = False
        self._pool = ThreadPoolExecutor(max_workers=fetch_threads, thread_name_prefix="fetch")
        # Results are written from their own threads, so they never queue behind fetches.
        self._writers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="write")
        self._clock = clock
        self.stage_times = StageTimes()
        self._heartbeat = heartbeat
        self._recent = RecentResults()

    def close(self) -> None:
        """Release the fetch and write threads."""
        self._pool.shutdown(wait=True)
        self._writers.shutdown(wait=True)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stop(self) -> None:
        """Finish the batch in hand, then return from run()."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self, max_batches: int | None = None) -> BatchReport:
        """Poll and process until stop() or until `max_batches` receives have been made.

        Three stages overlap: a background thread receives, fetches and decodes the next
        batches; this thread classifies; another thread writes the results and acknowledges.
        """
        total = BatchReport()
        batches = 0
        logger.info("processing %s with %s %s", self.queue_url,
                    self.classifier.name, self.classifier.version)
        visibility = VisibilityExtender(self.clients.sqs, self.queue_url,
                                        self.settings.visibility_timeout).start()
        # Two batches ready ahead keep the decoders busy while results are being written.
        ahead = Prefetcher(lambda: self._receive_and_prepare(visibility), depth=2,
                           limit=max_batches)
        acker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ack")
        writing: deque[tuple[Future[BatchReport], _Batch]] = deque()

        def settle(keep: int) -> None:
            # At most `keep` batches stay in writing: back-pressure on the classifying thread.
            while len(writing) > keep:
                future, done = writing.popleft()
                report = future.result()
                visibility.forget(done.messages)
                for name in vars(total):
                    setattr(total, name, getattr(total, name) + getattr(report, name))

        abandoned = False
        try:
            for batch in self._in_hand(ahead):
                batches += 1
                if self._heartbeat is not None:
                    self._heartbeat.beat(batches, total.done + total.failed)
                if self.stopping:
                    if batch is not None:
                        self._release(batch.messages)
                        visibility.forget(batch.messages)
                    break
                if batch is None:
                    continue
                logger.info("batch of %d messages in hand", len(batch.messages))
                self._classify_batch(batch)
                writing.append((acker.submit(self._write_and_ack, batch), batch))
                settle(keep=2)
        except PollInterrupted:
            # Nothing was in hand. The receive in flight is not waited for: what it takes
            # comes back after its visibility timeout.
            logger.info("stopping while waiting for messages")
            abandoned = True
        finally:
            settle(keep=0)
            acker.shutdown(wait=True)
            # Batches received ahead but not started go straight back to the queue.
            for batch in ahead.close(wait=not abandoned):
                if batch is not None:
                    self._release(batch.messages)
                    visibility.forget(batch.messages)
            visibility.stop()
        logger.info("stopped after %d batches: %s", batches, total)
        return total

    def _in_hand(self, ahead: Prefetcher[_Batch | None]) -> Iterator[_Batch | None]:
        """The prefetched batches, marking the time spent waiting for one as idle."""
        batches = iter(ahead)
        while True:
            self._idle = True
            try:
                batch = next(batches, _END)
            finally:
                self._idle = False
            if batch is _END:
                return
            yield batch

    @property
    def idle(self) -> bool:
        """True while waiting for the next batch, with none in hand."""
        return self._idle

    def _receive_and_prepare(self, visibility: VisibilityExtender) -> _Batch | None:
        """The prefetching stage: one receive, fetched and decoded; None if nothing came."""
        if self.stopping:
            return None
        messages = self._receive()
        if not messages:
            return None
        visibility.track(messages)
        return self._prepare(messages)

    def _receive(self) -> list[dict[str, Any]]:
        try:
            with self.stage_times.measure("receive", 0):
                response = self.clients.sqs.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=self.settings.receive_batch,
                    WaitTimeSeconds=self.settings.poll_seconds,
                    MessageSystemAttributeNames=["ApproximateReceiveCount"],
                )
        except (ClientError, BotoCoreError) as exc:
            # The endpoint may be restarting; botocore has retried already, so back off.
            logger.warning("receive failed, retrying in 1 s: %s", exc)
            self._stopping.wait(1.0)
            return []
        return response.get("Messages", [])

    def _release(self, messages: list[dict[str, Any]]) -> None:
        """Hand messages back to the queue at once rather than after the visibility timeout."""
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
            for i, m in enumerate(messages)
        ]
        try:
            self.clients.sqs.change_message_visibility_batch(
                QueueUrl=self.queue_url, Entries=entries
            )
        except (ClientError, BotoCoreError) as exc:
            logger.warning("could not release %d messages: %s", len(messages), exc)

    def process_messages(self, messages: Sequence[dict[str, Any]]) -> BatchReport:
        """Handle one received batch; acknowledge each message whose images all have results."""
        return self._finish(self._prepare(messages))

    def _prepare(self, messages: Sequence[dict[str, Any]]) -> _Batch:
        """Parse the messages, then fetch and decode their objects concurrently."""
        report = BatchReport(received=len(messages))
        received_at = self._clock()
        items: dict[tuple[str, str], _Item] = {}
        ack: dict[str, dict[str, Any]] = {}
        for message in messages:
            message_id = message.get("MessageId", "?")
            try:
                events = parse_body(message.get("Body", ""))
            except MalformedEvent as exc:
                # Left unacknowledged: after max receives the queue moves it to the DLQ.
                logger.error("message %s is malformed, leaving it for the dead-letter queue: %s",
                             message_id, exc)
                report.malformed += 1
                continue
            ack[message_id] = message
            for event in events:
                if event.bucket != self.settings.bucket:
                    logger.warning("message %s: ignoring object %s in foreign bucket %s",
                                   message_id, event.key, event.bucket)
                    report.ignored += 1
                    continue
                # One object can be announced twice in a batch (multipart uploads, retries).
                slot = (event.bucket, event.key)
                receives = _receive_count(message)
                if slot in items:
                    items[slot].message_ids.append(message_id)
                    items[slot].receives = max(items[slot].receives, receives)
                    continue
                items[slot] = _Item(event, image_id_for_object(event.bucket, event.key),
                                    [message_id], received_at, receives=receives)

        batch = list(items.values())
        list(self._pool.map(self._fetch, batch))
        return _Batch(messages, batch, ack, report)

    def _finish(self, prepared: _Batch) -> BatchReport:
        """Classify the batch, then write its results and acknowledge its messages."""
        self._classify_batch(prepared)
        return self._write_and_ack(prepared)

    def _classify_batch(self, prepared: _Batch) -> None:
        # Bytes already labelled by this model (or twice in the batch) are classified once.
        ready = [item for item in prepared.items if item.pixels is not None]
        if not self.settings.reuse_results:
            self._classify(ready)
            return
        classify_once(self.store, self.classifier, ready, self._classify, self._pool.map,
                      recent=self._recent)

    def _write_and_ack(self, prepared: _Batch) -> BatchReport:
        """Write the batch's results concurrently, then delete the messages that are done."""
        batch, ack, report = prepared.items, prepared.ack, prepared.report
        created = self._creation_times([item for item in batch
                                        if not item.transient and item.record is not None])
        list(self._writers.map(lambda item: self._save(item, created), batch))
        for item in batch:
            if item.transient:
                report.retried += 1
                for message_id in item.message_ids:
                    ack.pop(message_id, None)
                if item.receives >= self.settings.max_receives:
                    self._give_up(item)
            elif item.record is not None:
                if item.record.status == "done":
                    report.done += 1
                else:
                    report.failed += 1
        report.deleted = self._delete(list(ack.values()))
        logger.info("batch: %s", report)
        return report

    def _fetch(self, item: _Item) -> None:
        """Read and decode one object; a permanent failure becomes its failed record."""
        start = time.perf_counter()
        event = item.event
        base = ResultRecord(
            image_id=item.image_id,
            bucket=event.bucket,
            key=event.key,
            etag=event.etag,
            source="upload" if event.key.startswith(UPLOAD_PREFIX) else "bucket",
            event_time=event.event_time or format_utc(item.received_at),
        )
        try:
            with self.stage_times.measure("download"):
                data, size = self._read_object(event)
            item.timings["download_ms"] = _ms_since(start)
            base = replace(base, image=ImageFacts(bytes=size), sha256=content_sha256(data))
            decode_start = time.perf_counter()
            with self.stage_times.measure("decode"):
                decoded = decode_image(data, self.settings.max_pixels,
                                       min_side=min_decode_side(self.classifier.input_size))
                # Crop and resize here, in the fetch threads, so it overlaps inference.
                pixels = self.classifier.preprocess(decoded.image)
            item.timings["decode_ms"] = _ms_since(decode_start)
        except PermanentError as exc:
            logger.warning("image %s (key %r) failed: %s %s",
                           item.image_id, event.key, exc.code, exc.message)
            item.record = base.failed(exc.code, exc.message, timings=item.timings)
            return
        except TransientError as exc:
            logger.warning("image %s (key %r) will be retried: %s", item.image_id, event.key, exc)
            item.retry_later(str(exc))
            return
        except Exception:
            # An unexpected decoder failure is a property of the bytes, not of the moment.
            logger.exception("image %s (key %r): unexpected decode error", item.image_id, event.key)
            item.record = base.failed("decode_error", "the image could not be decoded",
                                      timings=item.timings)
            return
        item.decoded = decoded
        item.pixels = pixels
        facts = ImageFacts(format=decoded.format, width=decoded.width, height=decoded.height,
                           bytes=size)
        item.record = replace(base, image=facts)

    def _read_object(self, event: ObjectCreated) -> tuple[bytes, int]:
        cap = self.settings.max_upload_bytes
        try:
            response = self.clients.s3.get_object(Bucket=event.bucket, Key=event.key)
        except ClientError as exc:
            code = error_code(exc)
            if code in _GONE:
                raise PermanentError("object_missing", "the object no longer exists") from exc
            if code in _DENIED:
                raise PermanentError("access_denied", "the processor may not read the object"
                                     ) from exc
            raise TransientError(f"get_object: {code or exc}") from exc
        except BotoCoreError as exc:
            raise TransientError(f"get_object: {exc}") from exc
        body = response["Body"]
        size = int(response.get("ContentLength", 0))
        try:
            if size > cap:
                raise PermanentError("too_large", f"{size} bytes is more than the {cap} byte cap")
            # Read one byte past the cap so a wrong Content-Length cannot smuggle more in.
            data = body.read(cap + 1)
        except (BotoCoreError, OSError) as exc:
            raise TransientError(f"reading the object: {exc}") from exc
        finally:
            body.close()
        if len(data) > cap:
            raise PermanentError("too_large", f"the object is more than the {cap} byte cap")
        return data, len(data)

    def _classify(self, items: list[_Item]) -> None:
        if not items:
            return
        start = time.perf_counter()
        try:
            with self.stage_times.measure("inference", len(items)):
                predictions = self.classifier.classify([item.pixels for item in items],
                                                       top_k=self.settings.top_k)
        except Exception:
            # The model failing is not the images' fault: retry them later.
            logger.exception("classifying a batch of %d failed; leaving it for redelivery",
                             len(items))
            for item in items:
                item.retry_later("the model failed on this batch")
            return
        per_image = _ms_since(start) / len(items)
        for item, top in zip(items, predictions, strict=True):
            item.timings["inference_ms"] = per_image
            labels = [label for label in top if label.score >= self.settings.min_score]
            assert item.record is not None
            item.record = item.record.done(labels, self.classifier.name, self.classifier.version)
            item.decoded = item.pixels = None  # free the pixels before the next batch

    def _creation_times(self, items: list[_Item]) -> dict[str, str | Unread | None]:
        """What each image's record holds as its creation time, read in one call per 100.

        Knowing it, each result is written with one conditional put (see save_result).
        """
        if not items:
            return {}
        try:
            with self.stage_times.measure("save", 0):  # its time, not an image written
                found = self.store.creation_times(item.image_id for item in items)
        except StoreError as exc:
            logger.warning("could not read %d records before writing them: %s", len(items), exc)
            return {}
        return {item.image_id: found.get(item.image_id) for item in items}

    def _save(self, item: _Item, created: dict[str, str | Unread | None]) -> None:
        if item.transient or item.record is None:
            return
        timings = dict(item.timings)
        timings["total_ms"] = round((self._clock() - item.received_at) * 1000, 3)
        queued = _queued_ms(item.event.event_time, item.received_at)
        if queued is not None:
            timings["queue_ms"] = queued
        record = replace(item.record, timings={k: round(v, 3) for k, v in timings.items()})
        try:
            with self.stage_times.measure("save"):
                self.store.save_result(
                    record, existing_created_at=created.get(item.image_id, UNREAD))
        except StoreError as exc:
            logger.warning("image %s (key %r): result not saved, will retry: %s",
                           item.image_id, item.event.key, exc)
            item.retry_later(f"the result could not be saved: {exc}")
            return
        item.record = record
        logger.info("image %s (key %r): %s%s", item.image_id, item.event.key, record.status,
                    f" {record.labels[0].label} {record.labels[0].score:.3f}"
                    if record.labels else f" {record.error_code}")

    def _give_up(self, item: _Item) -> None:
        """Mark an image failed on its last receive; its message goes on to the DLQ."""
        base = item.record or ResultRecord(
            image_id=item.image_id, bucket=item.event.bucket, key=item.event.key,
            etag=item.event.etag, event_time=item.event.event_time or format_utc(item.received_at),
        )
        record = base.failed(
            "retries_exhausted",
            f"processing failed {item.receives} times; last: {item.retry_reason}",
        )
        logger.error("image %s (key %r): giving up after %d receives (%s); "
                     "its message goes to the dead-letter queue",
                     item.image_id, item.event.key, item.receives, item.retry_reason)
        try:
            self.store.save_result(record)
        except StoreError as exc:
            logger.error("image %s: could not record the failure either: %s", item.image_id, exc)

    def _delete(self, messages: list[dict[str, Any]]) -> int:
        """Acknowledge in batch calls of up to 10; returns how many were deleted."""
        deleted = 0
        for start in range(0, len(messages), 10):
            chunk = messages[start:start + 10]
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                       for i, m in enumerate(chunk)]
            try:
                with self.stage_times.measure("delete", len(chunk)):
                    response = self.clients.sqs.delete_message_batch(
                        QueueUrl=self.queue_url, Entries=entries
                    )
            except (ClientError, BotoCoreError) as exc:
                # The results are durable; a redelivery will rewrite the same records.
                logger.warning("could not delete %d messages: %s", len(chunk), exc)
                continue
            for failure in response.get("Failed", []):
                logger.warning("could not delete message %s: %s",
                               chunk[int(failure["Id"])].get("MessageId"), failure.get("Message"))
            deleted += len(response.get("Successful", []))
        return deleted


def _receive_count(message: dict[str, Any]) -> int:
    try:
        return int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1))
    except (TypeError, ValueError):
        return 1


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def min_decode_side(input_size: int) -> int:
    """The short side to decode an image to for a model of this input size."""
    # The model crops the central 224/256 of the short side; decode at least that much.
    return -(-input_size * 256 // 224)


def _queued_ms(event_time: str | None, received_at: float) -> float | None:
    if not event_time:
        return None
    try:
        created = parse_utc(event_time).timestamp()
    except ValueError:
        return None
    return round(max(0.0, received_at - created) * 1000, 3)
