"""What lets the worker overlap its stages: a prefetching thread, a visibility extender, clocks.

The worker receives, fetches and decodes the next batch in a background thread while the main
thread classifies the current one and writes its results. Decoding (Pillow) and inference
(LiteRT) release the GIL, so the two use both cores.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# What Prefetcher.poll() returns when nothing is ready yet, and when nothing more will be.
NOT_READY = object()
ENDED = object()


class Prefetcher(Generic[T]):
    """Calls ``produce`` in a background thread, keeping at most ``depth`` results ready.

    The bounded queue is the back-pressure: the thread blocks while the consumer is behind,
    so the messages held never exceed (depth + 2) batches. ``limit`` bounds the calls.
    """

    def __init__(self, produce: Callable[[], T], depth: int = 1, limit: int | None = None,
                 name: str = "prefetch", ready: threading.Event | None = None,
                 droppable: Callable[[T], bool] | None = None) -> None:
        self._produce = produce
        self._limit = limit
        # Results that tell a busy consumer nothing (an empty receive): dropped rather than
        # queued when the consumer is behind, so they never hold up a result that matters.
        self._droppable = droppable
        # Set whenever something is ready, so one consumer can wait on several prefetchers.
        self._signal = ready
        self._ready: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
        self._closing = threading.Event()
        self._unclaimed: list[T] = []
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        calls = 0
        try:
            while not self._closing.is_set() and (self._limit is None or calls < self._limit):
                calls += 1
                result = self._produce()
                if self._droppable is not None and self._droppable(result) and self._ready.full():
                    continue
                while True:
                    try:
                        self._ready.put(("item", result), timeout=0.1)
                        self._signalled()
                        break
                    except queue.Full:
                        if self._closing.is_set():
                            # Nobody will take it: leave it where close() finds it.
                            self._unclaimed.append(result)
                            return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put_final(("error", exc))
            return
        self._put_final(("end", None))

    def _put_final(self, entry: tuple[str, Any]) -> None:
        while not self._closing.is_set():
            try:
                self._ready.put(entry, timeout=0.1)
                self._signalled()
                return
            except queue.Full:
                continue

    def _signalled(self) -> None:
        if self._signal is not None:
            self._signal.set()

    def poll(self) -> T | object:
        """The next result if one is ready, else NOT_READY; ENDED once the limit is reached."""
        try:
            kind, value = self._ready.get_nowait()
        except queue.Empty:
            return NOT_READY
        if kind == "end":
            return ENDED
        if kind == "error":
            raise value
        return value

    def __iter__(self) -> Iterator[T]:
        while True:
            kind, value = self._ready.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value

    def close(self) -> list[T]:
        """Stop producing; return what was made but not taken, the result of the call in
        progress (a long poll, say) too, which is waited for."""
        self._closing.set()
        self._thread.join()
        left: list[T] = []
        while True:
            try:
                kind, value = self._ready.get_nowait()
            except queue.Empty:
                break
            if kind == "item":
                left.append(value)
        return left + self._unclaimed


class VisibilityExtender:
    """Extends the visibility of messages still being worked on, so no other processor takes them.

    A message held longer than a third of the visibility timeout gets the full timeout again,
    from a background thread; forget() stops that once the message is deleted or left to retry.
    """

    def __init__(self, sqs: Any, queue_url: str, visibility_timeout: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self.visibility_timeout = visibility_timeout
        self.interval = max(1.0, visibility_timeout / 3)
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, float] = {}  # receipt handle -> when its visibility last started
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def track(self, messages: Sequence[dict[str, Any]]) -> None:
        now = self._clock()
        with self._lock:
            for message in messages:
                self._held[message["ReceiptHandle"]] = now

    def forget(self, messages: Sequence[dict[str, Any]]) -> None:
        with self._lock:
            for message in messages:
                self._held.pop(message["ReceiptHandle"], None)

    @property
    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def extend_due(self) -> int:
        """Extend the visibility of the messages due now; returns how many were extended."""
        now = self._clock()
        with self._lock:
            due = [h for h, since in self._held.items() if now - since >= self.interval]
        extended = 0
        for start in range(0, len(due), 10):
            chunk = due[start:start + 10]
            entries = [{"Id": str(i), "ReceiptHandle": h,
                        "VisibilityTimeout": self.visibility_timeout}
                       for i, h in enumerate(chunk)]
            try:
                response = self._sqs.change_message_visibility_batch(
                    QueueUrl=self._queue_url, Entries=entries)
            except (ClientError, BotoCoreError) as exc:
                logger.warning("could not extend the visibility of %d messages: %s",
                               len(chunk), exc)
                continue
            ok = {chunk[int(e["Id"])] for e in response.get("Successful", [])}
            with self._lock:
                for handle in ok:
                    if handle in self._held:
                        self._held[handle] = now
            extended += len(ok)
        if extended:
            logger.info("extended the visibility of %d messages still in work", extended)
        return extended

    def start(self) -> VisibilityExtender:
        self._thread = threading.Thread(target=self._loop, name="visibility", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stopping.wait(min(self.interval / 4, 10.0)):
            self.extend_due()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()


class StageTimes:
    """Wall and thread-CPU seconds spent in each stage, and how many images went through it."""

    def __init__(self, observe: Callable[[str, float], None] | None = None) -> None:
        self._lock = threading.Lock()
        # Told the stage and wall seconds of every call (the processor's metrics).
        self.observe = observe
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)
        self.bytes: dict[str, int] = defaultdict(int)

    @contextmanager
    def measure(self, stage: str, count: int = 1) -> Iterator[None]:
        # thread_time misses the engine's own worker threads; the benchmark accounts for that.
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            seconds = time.perf_counter() - wall
            with self._lock:
                self.wall[stage] += seconds
                self.cpu[stage] += time.thread_time() - cpu
                self.count[stage] += count
            if self.observe is not None:
                self.observe(stage, seconds)

    def add_bytes(self, stage: str, count: int) -> None:
        """Bytes a stage moved (the download's, to show what ranged reads save)."""
        with self._lock:
            self.bytes[stage] += count

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Per stage: total wall and CPU seconds, the image count and bytes moved."""
        with self._lock:
            return {stage: {"wall_s": self.wall[stage], "cpu_s": self.cpu[stage],
                            "count": self.count[stage], "bytes": self.bytes[stage]}
                    for stage in self.wall}
