"""The one place outcomes become records and acknowledgements.

Done, reused and failed images are written with one conditional put each; a retried image
keeps its messages on the queue, unless this was its last receive, when it is written failed
and its message goes on to the dead-letter queue. A message is deleted only when every image
it announced has its record and the record's event is published (imagepipe.core.result_events):
if the topic fails after the write, the message comes back, the same outcome is written again
and its event, with the same event ID, is published then. At least once, never lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from imagepipe.core.records import UNREAD, ResultRecord, ResultStore, StoreError, Unread
from imagepipe.core.result_events import EventPublisher, PublishError
from imagepipe.core.settings import Settings
from imagepipe.core.timestamps import parse_utc
from processor.batch import BatchReport, Failed, Handled, Image, Outcome, Received, Retry
from processor.metrics import ProcessorMetrics
from processor.pipeline import StageTimes

logger = logging.getLogger(__name__)


class ResultWriter:
    """Writes a batch's outcomes, gives up on images out of receives, deletes what is done."""

    def __init__(
        self,
        settings: Settings,
        sqs: Any,
        queue_url: str,
        store: ResultStore,
        pool: ThreadPoolExecutor,
        stage_times: StageTimes,
        clock: Callable[[], float],
        metrics: ProcessorMetrics | None = None,
        publisher: EventPublisher | None = None,
    ) -> None:
        self.settings = settings
        self._metrics = metrics
        self._publisher = publisher
        self._sqs = sqs
        self._queue_url = queue_url
        self._store = store
        self._pool = pool
        self._stage_times = stage_times
        self._clock = clock

    def write(self, received: Received, handled: Sequence[Handled]) -> BatchReport:
        """Write the batch's results concurrently, then delete the messages that are done."""
        report = BatchReport(received=len(received.messages), malformed=received.malformed,
                             ignored=received.ignored)
        created = self._creation_times([h for h in handled if not isinstance(h.outcome, Retry)])
        written = list(self._pool.map(lambda h: self._save(h, created), handled))
        ack = dict(received.ack)
        # Per image: written failed on its last receive (the metrics count it failed).
        gave_up: list[bool] = []
        for image, outcome in zip((h.image for h in handled), written, strict=True):
            gave_up.append(False)
            if isinstance(outcome, Retry):
                report.retried += 1
                for message_id in image.message_ids:
                    ack.pop(message_id, None)
                if image.receives >= self.settings.max_receives and not outcome.written:
                    gave_up[-1] = self._give_up(image, outcome)
            elif isinstance(outcome, Failed):
                report.failed += 1
            else:
                report.done += 1
        report.deleted = self._delete(list(ack.values()))
        if self._metrics is not None:
            self._metrics.batch([h.image for h in handled], written, gave_up)
        logger.info("batch: %s", report)
        return report

    def _creation_times(self, handled: list[Handled]) -> dict[str, str | Unread | None]:
        """What each image's record holds as its creation time, read in one call per 100.

        Knowing it, each result is written with one conditional put (see save_result).
        """
        if not handled:
            return {}
        ids = [h.image.image_id for h in handled]
        try:
            with self._stage_times.measure("save", 0):  # its time, not an image written
                found = self._store.creation_times(ids)
        except StoreError as exc:
            logger.warning("could not read %d records before writing them: %s", len(ids), exc)
            return {}
        return {image_id: found.get(image_id) for image_id in ids}

    def _save(self, handled: Handled, created: dict[str, str | Unread | None]) -> Outcome:
        """Write one image's record; the outcome as it stands after the write."""
        image, outcome = handled.image, handled.outcome
        if isinstance(outcome, Retry):
            return outcome
        timings = dict(outcome.record.timings)
        timings["total_ms"] = round((self._clock() - image.received_at) * 1000, 3)
        queued = _queued_ms(image.event.event_time, image.received_at)
        if queued is not None:
            timings["queue_ms"] = queued
        record = replace(outcome.record, timings={k: round(v, 3) for k, v in timings.items()})
        try:
            with self._stage_times.measure("save"):
                written = self._store.save_result(
                    record, existing_created_at=created.get(image.image_id, UNREAD))
        except StoreError as exc:
            logger.warning("image %s (key %r): result not saved, will retry: %s",
                           image.image_id, image.key, exc)
            return Retry(f"the result could not be saved: {exc}", outcome.record)
        # Not written: a newer outcome is there, and its own write publishes its event.
        if written and not self._published(record):
            return Retry("the result's event could not be published", record, written=True)
        logger.info("image %s (key %r): %s%s", image.image_id, image.key, record.status,
                    f" {record.labels[0].label} {record.labels[0].score:.3f}"
                    if record.labels else f" {record.error_code}")
        return replace(outcome, record=record)

    def _give_up(self, image: Image, retry: Retry) -> bool:
        """Mark an image failed on its last receive; its message goes on to the DLQ.

        True when the failed record was written."""
        record: ResultRecord = retry.record.failed(
            "retries_exhausted",
            f"processing failed {image.receives} times; last: {retry.reason}",
            timings={},
        )
        logger.error("image %s (key %r): giving up after %d receives (%s); "
                     "its message goes to the dead-letter queue",
                     image.image_id, image.key, image.receives, retry.reason)
        try:
            written = self._store.save_result(record)
        except StoreError as exc:
            logger.error("image %s: could not record the failure either: %s", image.image_id, exc)
            return False
        if written:
            self._published(record)
        return True

    def _published(self, record: ResultRecord) -> bool:
        """Publish the event of a record just written; False if the topic did not take it."""
        if self._publisher is None:
            return True
        try:
            with self._stage_times.measure("publish"):
                self._publisher.publish(record)
        except PublishError as exc:
            logger.warning("image %s: %s; its message stays for redelivery", record.image_id, exc)
            return False
        return True

    def _delete(self, messages: list[dict[str, Any]]) -> int:
        """Acknowledge in batch calls of up to 10; returns how many were deleted."""
        deleted = 0
        for start in range(0, len(messages), 10):
            chunk = messages[start:start + 10]
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                       for i, m in enumerate(chunk)]
            try:
                with self._stage_times.measure("delete", len(chunk)):
                    response = self._sqs.delete_message_batch(
                        QueueUrl=self._queue_url, Entries=entries
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


def _queued_ms(event_time: str | None, received_at: float) -> float | None:
    """How long the event waited before the worker received it; None if its time is unknown."""
    if not event_time:
        return None
    try:
        created = parse_utc(event_time).timestamp()
    except ValueError:
        return None
    # Clocks of S3 and this host may disagree by a little; a wait is never negative.
    return round(max(0.0, received_at - created) * 1000, 3)
