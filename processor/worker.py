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
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from imagepipe.core.aws import Clients, queue_url, topic_arn
from imagepipe.core.records import ResultStore
from imagepipe.core.result_events import EventPublisher
from imagepipe.core.settings import BULK, INTERACTIVE, Settings
from processor.batch import BatchReport, Prepared, Received
from processor.handling import BatchHandler, Classifier, min_decode_side
from processor.heartbeat import Heartbeat
from processor.metrics import ProcessorMetrics
from processor.pipeline import ENDED, NOT_READY, Prefetcher, StageTimes, VisibilityExtender
from processor.writer import ResultWriter

__all__ = ["BatchReport", "Classifier", "Worker", "min_decode_side"]

logger = logging.getLogger(__name__)

# Batches received, fetched and decoded ahead of the classifier, per lane. Bulk work may be
# prefetched deeper because interactive batches overtake it; an interactive batch ready ahead
# is enough, since it is classified as soon as the classifier is free.
PREFETCH_DEPTH = {INTERACTIVE: 1, BULK: 2}


@dataclass
class _Lane:
    """One queue the worker serves, and during run() its prefetcher and visibility extender."""

    name: str
    url: str
    writer: ResultWriter
    # Where its objects are read and decoded and its results written: the interactive lane
    # has threads of its own, so that its work never queues behind a bulk batch's.
    pool: ThreadPoolExecutor
    writers: ThreadPoolExecutor
    acker: ThreadPoolExecutor
    ahead: Prefetcher[Prepared | None] | None = None
    visibility: VisibilityExtender | None = None
    ended: bool = False
    # Batches received and not yet taken by the classifier: while the interactive lane has
    # one being fetched, the classifier waits for it rather than start a bulk batch.
    unready: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self, change: int) -> None:
        with self._lock:
            self.unready += change

    @property
    def preparing(self) -> bool:
        """Whether a batch was received but is not ready yet."""
        with self._lock:
            return self.unready > 0


class Worker:
    """Processes S3 events from the interactive and the bulk queue until stopped.

    The interactive lane (the front's uploads) is served first: no bulk batch is started
    while an interactive one is ready or being fetched, and interactive batches overtake bulk
    batches prefetched before them.
    """

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
        self._stopping = threading.Event()
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
        # In the order they are served.
        self._lanes = []
        for name, (queue, _) in settings.lanes.items():
            url = queue_url(clients.sqs, queue)
            own = name != BULK
            writers = ThreadPoolExecutor(4, f"write-{name}") if own else self._writers
            self._lanes.append(_Lane(
                name, url,
                ResultWriter(settings, clients.sqs, url, self.store, writers,
                             self.stage_times, clock, metrics, publisher),
                pool=ThreadPoolExecutor(2, f"fetch-{name}") if own else self._pool,
                writers=writers, acker=ThreadPoolExecutor(1, f"ack-{name}")))
        self._bulk = next(lane for lane in self._lanes if lane.name == BULK)
        self.queue_url = self._bulk.url
        self._ready = threading.Event()

    @property
    def queue_urls(self) -> dict[str, str]:
        """Each lane's queue URL, the interactive lane (if any) first."""
        return {lane.name: lane.url for lane in self._lanes}

    def close(self) -> None:
        """Release the fetch and write threads."""
        self._pool.shutdown(wait=True)
        self._writers.shutdown(wait=True)
        for lane in self._lanes:
            lane.pool.shutdown(wait=True)
            lane.writers.shutdown(wait=True)
            lane.acker.shutdown(wait=True)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stop(self) -> None:
        """Finish the batch in hand, then return from run(); safe from a signal handler."""
        self._stopping.set()
        # Wakes the classifying thread if it is waiting for a batch, so that it takes none
        # into hand; run() then returns once the receives in flight have ended.
        self._ready.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self, max_batches: int | None = None) -> BatchReport:
        """Poll and process until stop() or until each lane has made `max_batches` receives.

        Three stages overlap: background threads (one per lane) receive, fetch and decode the
        next batches; this thread classifies; another thread writes the results and
        acknowledges.
        """
        total = BatchReport()
        batches = 0
        if self.stopping:
            # Told to stop before starting: nothing is received, not even ahead.
            return total
        logger.info("processing %s with %s %s",
                    ", ".join(f"{lane.name} {lane.url}" for lane in self._lanes),
                    self.classifier.name, self.classifier.version)
        for lane in self._lanes:
            lane.ended, lane.unready = False, 0
            lane.visibility = VisibilityExtender(self.clients.sqs, lane.url,
                                                 self.settings.visibility_timeout).start()
            lane.ahead = Prefetcher(
                lambda lane=lane: self._receive_and_prepare(lane),
                depth=PREFETCH_DEPTH[lane.name], limit=max_batches,
                name=f"prefetch-{lane.name}", ready=self._ready,
                droppable=lambda batch: batch is None)
        if self.metrics is not None:
            self.metrics.watch_in_flight(
                lambda: sum(_visibility(lane).held for lane in self._lanes))
        writing: deque[tuple[Future[BatchReport], Received, _Lane]] = deque()

        def settle(keep: int) -> None:
            # At most `keep` batches stay in writing: back-pressure on the classifying thread.
            while len(writing) > keep:
                future, done, lane = writing.popleft()
                total.add(future.result())
                _visibility(lane).forget(done.messages)

        try:
            for lane, batch in self._in_hand():
                batches += 1
                if self._heartbeat is not None:
                    self._heartbeat.beat(batches, total.done + total.failed)
                if self.stopping:
                    if batch is not None:
                        self._release(lane, batch.messages)
                    break
                if batch is None:
                    continue
                logger.info("%s batch of %d messages in hand", lane.name, len(batch.messages))
                received, handled = batch.received, self._handler.classify(batch, lane.pool)
                # Only the outcomes travel on: the pixels are freed before the next receive.
                del batch
                writing.append((lane.acker.submit(lane.writer.write, received, handled),
                                received, lane))
                settle(keep=2)
        finally:
            settle(keep=0)
            for lane in self._lanes:
                # Batches received ahead but not started go straight back to the queue. The
                # receives in flight are waited for (a long poll: up to poll_seconds), and hand
                # back what they bring: a poll left running as the process exits would still
                # take messages, out of sight until their visibility timeout.
                for batch in _ahead(lane).close():
                    if batch is not None:
                        self._release(lane, batch.messages)
                _visibility(lane).stop()
        logger.info("stopped after %d batches: %s", batches, total)
        return total

    def _in_hand(self) -> Iterator[tuple[_Lane, Prepared | None]]:
        """The prefetched batches, interactive first."""
        while True:
            found = self._next_batch()
            if found is None:
                return
            yield found

    def _next_batch(self) -> tuple[_Lane, Prepared | None] | None:
        """The next batch to classify, by lane priority; None once every lane has ended or
        stop() was called."""
        while True:
            # Cleared before looking, so a batch made ready after the look wakes the wait.
            self._ready.clear()
            if self.stopping:
                # Batches ready by now were not taken into hand: they go back to the queue.
                return None
            live = False
            waiting_ahead = False
            for lane in self._lanes:
                if lane.ended:
                    continue
                if waiting_ahead:
                    live = True
                    break
                found = _ahead(lane).poll()
                if found is ENDED:
                    lane.ended = True
                    continue
                live = True
                if found is not NOT_READY:
                    if found is not None:
                        lane.received(-1)
                    return lane, found  # type: ignore[return-value]
                elif lane.preparing:
                    # Its messages are being fetched: lower lanes wait for them.
                    waiting_ahead = True
            if not live:
                return None
            self._ready.wait(0.5)

    def _receive_and_prepare(self, lane: _Lane) -> Prepared | None:
        """The prefetching stage: one receive, fetched and decoded; None if nothing came."""
        if self.stopping:
            return None
        messages = self._receive(lane.url)
        if not messages:
            return None
        if self.stopping:
            # A poll that ended after stop(): its messages go straight back.
            self._release(lane, messages)
            return None
        lane.received(+1)
        _visibility(lane).track(messages)
        return self._handler.fetch(self._handler.parse(messages), lane.pool)

    def _receive(self, url: str) -> list[dict[str, Any]]:
        try:
            with self.stage_times.measure("receive", 0):
                response = self.clients.sqs.receive_message(
                    QueueUrl=url,
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

    def _release(self, lane: _Lane, messages: Sequence[dict[str, Any]]) -> None:
        """Hand messages back to their queue at once rather than after the visibility timeout."""
        _visibility(lane).forget(messages)
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
            for i, m in enumerate(messages)
        ]
        try:
            self.clients.sqs.change_message_visibility_batch(QueueUrl=lane.url, Entries=entries)
        except (ClientError, BotoCoreError) as exc:
            logger.warning("could not release %d messages: %s", len(messages), exc)

    def process_messages(self, messages: Sequence[dict[str, Any]]) -> BatchReport:
        """Handle one batch from the bulk queue; acknowledge each message whose images all
        have results."""
        prepared = self._handler.fetch(self._handler.parse(messages))
        return self._bulk.writer.write(prepared.received, self._handler.classify(prepared))


def _ahead(lane: _Lane) -> Prefetcher[Prepared | None]:
    assert lane.ahead is not None, "only during run()"
    return lane.ahead


def _visibility(lane: _Lane) -> VisibilityExtender:
    assert lane.visibility is not None, "only during run()"
    return lane.visibility
