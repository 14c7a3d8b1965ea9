"""The processor daemon's loop: receive, hand each batch on, stop, release what is not started.

The handling of one batch lives in processor.handling (parse, fetch and decode, classify: an
outcome per image) and processor.writer (outcomes into records, give-ups and deletes). Here
are the threads that overlap them and the receive, stop and shutdown around them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from imagepipe.core.aws import Clients, queue_url, topic_arn
from imagepipe.core.records import ResultStore
from imagepipe.core.result_events import EventPublisher
from imagepipe.core.settings import Settings
from processor.batch import BatchReport, Prepared, Received
from processor.handling import BatchHandler, Classifier, min_decode_side
from processor.heartbeat import Heartbeat
from processor.metrics import ProcessorMetrics
from processor.pipeline import Prefetcher, StageTimes, VisibilityExtender
from processor.writer import ResultWriter

__all__ = ["BatchReport", "Classifier", "PollInterrupted", "Worker", "min_decode_side"]

logger = logging.getLogger(__name__)

_END = object()


class PollInterrupted(BaseException):
    """Raised by a signal handler to abandon an idle long poll.

    A BaseException, like KeyboardInterrupt, so that botocore's handlers let it through.
    """


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
        metrics: ProcessorMetrics | None = None,
        publisher: EventPublisher | None = None,
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
        self.metrics = metrics
        self.stage_times = StageTimes(metrics.stage if metrics is not None else None)
        self._heartbeat = heartbeat
        self._handler = BatchHandler(settings, clients.s3, classifier, self.store, self._pool,
                                     self.stage_times, clock)
        if publisher is None and settings.results_topic and clients.sns is not None:
            publisher = EventPublisher(clients.sns, topic_arn(clients.sns, settings.results_topic))
        self._writer = ResultWriter(settings, clients.sqs, self.queue_url, self.store,
                                    self._writers, self.stage_times, clock, metrics, publisher)

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
        if self.metrics is not None:
            self.metrics.watch_in_flight(lambda: visibility.held)
        # Two batches ready ahead keep the decoders busy while results are being written.
        ahead = Prefetcher(lambda: self._receive_and_prepare(visibility), depth=2,
                           limit=max_batches)
        acker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ack")
        writing: deque[tuple[Future[BatchReport], Received]] = deque()

        def settle(keep: int) -> None:
            # At most `keep` batches stay in writing: back-pressure on the classifying thread.
            while len(writing) > keep:
                future, done = writing.popleft()
                total.add(future.result())
                visibility.forget(done.messages)

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
                received, handled = batch.received, self._handler.classify(batch)
                # Only the outcomes travel on: the pixels are freed before the next receive.
                del batch
                writing.append((acker.submit(self._writer.write, received, handled), received))
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

    def _in_hand(self, ahead: Prefetcher[Prepared | None]) -> Iterator[Prepared | None]:
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

    def _receive_and_prepare(self, visibility: VisibilityExtender) -> Prepared | None:
        """The prefetching stage: one receive, fetched and decoded; None if nothing came."""
        if self.stopping:
            return None
        messages = self._receive()
        if not messages:
            return None
        visibility.track(messages)
        return self._handler.fetch(self._handler.parse(messages))

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

    def _release(self, messages: Sequence[dict[str, Any]]) -> None:
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
        prepared = self._handler.fetch(self._handler.parse(messages))
        return self._writer.write(prepared.received, self._handler.classify(prepared))
