"""The processor daemon: long-poll SQS, classify the batch, write results, acknowledge."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from imagepipe.core.aws import Clients, error_code, queue_url
from imagepipe.core.ids import UPLOAD_PREFIX, image_id_for_object
from imagepipe.core.records import ImageFacts, Label, ResultRecord, ResultStore, StoreError
from imagepipe.core.settings import Settings
from processor.decode import DecodedImage, decode_image
from processor.dedupe import classify_once, content_sha256
from processor.errors import PermanentError, TransientError
from processor.events import MalformedEvent, ObjectCreated, parse_body
from processor.heartbeat import Heartbeat

logger = logging.getLogger(__name__)

# S3 error codes that mean the object will not come back by retrying.
_GONE = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchBucket"})
_DENIED = frozenset({"AccessDenied", "403", "Forbidden"})


class Prediction(Protocol):
    class_id: int
    label: str
    score: float


class Classifier(Protocol):
    """What the worker needs of a model (processor.model.Classifier is the real one)."""

    name: str
    version: str
    input_size: int

    def classify(self, images: list[Any], top_k: int = 5) -> list[list[Prediction]]: ...


@dataclass
class _Item:
    """One object of the batch, and the messages that announced it."""

    event: ObjectCreated
    image_id: str
    message_ids: list[str]
    received_at: float
    record: ResultRecord | None = None
    decoded: DecodedImage | None = None
    timings: dict[str, float] = field(default_factory=dict)
    transient: bool = False


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
        self._pool = ThreadPoolExecutor(max_workers=fetch_threads, thread_name_prefix="fetch")
        self._clock = clock
        self._heartbeat = heartbeat

    def close(self) -> None:
        """Release the fetch threads."""
        self._pool.shutdown(wait=True)

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
        """Poll and process until stop() or until `max_batches` receives have been made."""
        total = BatchReport()
        batches = 0
        logger.info("processing %s with %s %s", self.queue_url,
                    self.classifier.name, self.classifier.version)
        while not self.stopping and (max_batches is None or batches < max_batches):
            batches += 1
            if self._heartbeat is not None:
                self._heartbeat.beat(batches, total.done + total.failed)
            messages = self._receive()
            if not messages:
                continue
            if self.stopping:
                self._release(messages)
                break
            report = self.process_messages(messages)
            for name in vars(total):
                setattr(total, name, getattr(total, name) + getattr(report, name))
        logger.info("stopped after %d batches: %s", batches, total)
        return total

    def _receive(self) -> list[dict[str, Any]]:
        try:
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
                if slot in items:
                    items[slot].message_ids.append(message_id)
                    continue
                items[slot] = _Item(event, image_id_for_object(event.bucket, event.key),
                                    [message_id], received_at)

        batch = list(items.values())
        list(self._pool.map(self._fetch, batch))
        # Bytes already labelled by this model (or twice in the batch) are classified once.
        classify_once(self.store, self.classifier,
                      [item for item in batch if item.decoded is not None], self._classify,
                      self._pool.map)
        for item in batch:
            self._save(item)
            if item.transient:
                report.retried += 1
                for message_id in item.message_ids:
                    ack.pop(message_id, None)
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
        )
        try:
            data, size = self._read_object(event)
            item.timings["download_ms"] = _ms_since(start)
            base = replace(base, image=ImageFacts(bytes=size), sha256=content_sha256(data))
            decode_start = time.perf_counter()
            decoded = decode_image(data, self.settings.max_pixels,
                                   min_side=_min_side(self.classifier.input_size))
            item.timings["decode_ms"] = _ms_since(decode_start)
        except PermanentError as exc:
            logger.warning("image %s (key %r) failed: %s %s",
                           item.image_id, event.key, exc.code, exc.message)
            item.record = base.failed(exc.code, exc.message, timings=item.timings)
            return
        except TransientError as exc:
            logger.warning("image %s (key %r) will be retried: %s", item.image_id, event.key, exc)
            item.transient = True
            return
        except Exception:
            # An unexpected decoder failure is a property of the bytes, not of the moment.
            logger.exception("image %s (key %r): unexpected decode error", item.image_id, event.key)
            item.record = base.failed("decode_error", "the image could not be decoded",
                                      timings=item.timings)
            return
        item.decoded = decoded
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
            predictions = self.classifier.classify(
                [item.decoded.image for item in items if item.decoded is not None],
                top_k=self.settings.top_k,
            )
        except Exception:
            # The model failing is not the images' fault: retry them later.
            logger.exception("classifying a batch of %d failed; leaving it for redelivery",
                             len(items))
            for item in items:
                item.transient = True
            return
        per_image = _ms_since(start) / len(items)
        for item, top in zip(items, predictions, strict=True):
            item.timings["inference_ms"] = per_image
            labels = [Label(label=p.label, score=float(p.score), class_id=int(p.class_id))
                      for p in top]
            assert item.record is not None
            item.record = item.record.done(labels, self.classifier.name, self.classifier.version)
            item.decoded = None  # free the pixels before the next batch

    def _save(self, item: _Item) -> None:
        if item.transient or item.record is None:
            return
        timings = dict(item.timings)
        timings["total_ms"] = round((self._clock() - item.received_at) * 1000, 3)
        queued = _queued_ms(item.event.event_time, item.received_at)
        if queued is not None:
            timings["queue_ms"] = queued
        record = replace(item.record, timings={k: round(v, 3) for k, v in timings.items()})
        try:
            self.store.save_result(record)
        except StoreError as exc:
            logger.warning("image %s (key %r): result not saved, will retry: %s",
                           item.image_id, item.event.key, exc)
            item.transient = True
            return
        item.record = record
        logger.info("image %s (key %r): %s%s", item.image_id, item.event.key, record.status,
                    f" {record.labels[0].label} {record.labels[0].score:.3f}"
                    if record.labels else f" {record.error_code}")

    def _delete(self, messages: list[dict[str, Any]]) -> int:
        """Acknowledge in batch calls of up to 10; returns how many were deleted."""
        deleted = 0
        for start in range(0, len(messages), 10):
            chunk = messages[start:start + 10]
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                       for i, m in enumerate(chunk)]
            try:
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


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def _min_side(input_size: int) -> int:
    # The model crops the central 224/256 of the short side; decode at least that much.
    return -(-input_size * 256 // 224)


def _queued_ms(event_time: str | None, received_at: float) -> float | None:
    if not event_time:
        return None
    try:
        created = datetime.fromisoformat(event_time.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    return round(max(0.0, received_at - created) * 1000, 3)
