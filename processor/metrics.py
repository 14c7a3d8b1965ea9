"""The processor's figures: images by outcome, stage times, waits, readiness; Prometheus and EMF.

The worker reports each written batch here (`batch`) and each stage call through StageTimes'
observer (`stage`); the same figures go to the registry, served on the metrics port, and, when
an EMF file is configured, to CloudWatch as one document per batch (plus one per failure
reason in it), so the log volume follows the batches, not the images.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from imagepipe.core.metrics import (
    EMF_BATCH,
    EMF_FAILED,
    EMF_IMAGES,
    EMF_QUEUE_WAIT,
    EMF_REASON,
    EMF_RETRIED,
    EMF_STAGE_SECONDS,
    EMF_UPLOAD_TO_RESULT,
    OUTCOMES,
    PROCESSOR_METRICS,
    STAGES,
    EmfFile,
    build_metrics,
    emf_document,
)
from processor.batch import Done, Failed, Image, Outcome, Retry, Reused

logger = logging.getLogger(__name__)

# StageTimes' names (also the benchmark's) -> the stage names the metrics publish.
STAGE_OF = {"receive": "receive", "download": "fetch", "decode": "decode",
            "inference": "classify", "save": "write", "delete": "ack"}


def outcome_name(outcome: Outcome) -> str:
    """done, reused, failed or retried."""
    if isinstance(outcome, Done):
        return "done"
    if isinstance(outcome, Reused):
        return "reused"
    if isinstance(outcome, Failed):
        return "failed"
    return "retried"


class ProcessorMetrics:
    """The processor's collectors in one registry, and the EMF documents of each batch."""

    def __init__(self, registry: CollectorRegistry | None = None, emf: EmfFile | None = None,
                 namespace: str = "imagepipe") -> None:
        self.registry = registry or CollectorRegistry()
        found = build_metrics(self.registry, PROCESSOR_METRICS)
        self._images = found["imagepipe_processor_images"]
        self._stages = found["imagepipe_processor_stage_seconds"]
        self._batch = found["imagepipe_processor_batch_images"]
        self._queue_wait = found["imagepipe_processor_queue_wait_seconds"]
        self._upload_to_result = found["imagepipe_processor_upload_to_result_seconds"]
        self._model_load = found["imagepipe_processor_model_load_seconds"]
        self._in_flight = found["imagepipe_processor_in_flight_messages"]
        self._ready = found["imagepipe_processor_ready"]
        self._ready.set(0)
        # Every outcome and stage shows in /metrics from the start, at zero.
        for outcome in OUTCOMES:
            self._images.labels(outcome, "")
        for stage in STAGES:
            self._stages.labels(stage)
        self._is_ready = False
        self._emf = emf
        self._namespace = namespace
        self._lock = threading.Lock()
        # Stage times since the last EMF document: the stages run in several threads.
        self._pending: dict[str, list[float]] = defaultdict(list)

    @property
    def ready(self) -> bool:
        return self._is_ready

    def set_ready(self) -> None:
        """The model is loaded and warmed: the processor's /readyz turns 200."""
        self._is_ready = True
        self._ready.set(1)

    def model_loaded(self, seconds: float) -> None:
        self._model_load.set(seconds)

    def watch_in_flight(self, held: Callable[[], int]) -> None:
        """Read the messages in hand from `held` at each scrape."""
        self._in_flight.set_function(held)

    def stage(self, name: str, seconds: float) -> None:
        """One call of a stage (StageTimes' observer)."""
        stage = STAGE_OF.get(name, name)
        self._stages.labels(stage).observe(seconds)
        if self._emf is not None:
            with self._lock:
                self._pending[stage].append(seconds)

    def batch(self, images: Sequence[Image], outcomes: Sequence[Outcome],
              gave_up: Sequence[bool]) -> None:
        """One written batch: each image's outcome after its write, and whether it was given up
        (its last receive: written failed, `retries_exhausted`)."""
        self._batch.observe(len(images))
        counts: Counter[tuple[str, str]] = Counter()
        waits: list[float] = []
        latencies: list[float] = []
        for outcome, last in zip(outcomes, gave_up, strict=True):
            if isinstance(outcome, Retry):
                counts["failed" if last else "retried",
                       "retries_exhausted" if last else ""] += 1
                continue
            record = outcome.record
            counts[outcome_name(outcome), record.error_code or ""] += 1
            queued = record.timings.get("queue_ms")
            if queued is not None:
                waits.append(queued / 1000)
                latencies.append((queued + record.timings.get("total_ms", 0.0)) / 1000)
        for (outcome, reason), count in counts.items():
            self._images.labels(outcome, reason).inc(count)
        for wait in waits:
            self._queue_wait.observe(wait)
        for latency in latencies:
            self._upload_to_result.observe(latency)
        if self._emf is not None:
            self._emf.write(self._documents(len(images), counts, waits, latencies))

    def _documents(self, size: int, counts: Counter[tuple[str, str]], waits: list[float],
                   latencies: list[float]) -> list[dict[str, Any]]:
        with self._lock:
            stages, self._pending = self._pending, defaultdict(list)
        values: dict[str, Any] = {
            EMF_IMAGES: sum(n for (outcome, _), n in counts.items() if outcome != "retried"),
            # Zero here keeps the metric's series unbroken; the reasons are added below.
            EMF_FAILED: 0,
            EMF_RETRIED: counts["retried", ""],
            EMF_BATCH: size,
        }
        if waits:
            values[EMF_QUEUE_WAIT] = [round(w, 3) for w in waits]
            values[EMF_UPLOAD_TO_RESULT] = [round(s, 3) for s in latencies]
        for stage, seconds in stages.items():
            if stage in EMF_STAGE_SECONDS:
                values[EMF_STAGE_SECONDS[stage]] = [round(s, 4) for s in seconds]
        documents = [emf_document(self._namespace, values)]
        documents += [emf_document(self._namespace, {EMF_FAILED: n}, {EMF_REASON: reason})
                      for (outcome, reason), n in sorted(counts.items())
                      if outcome == "failed"]
        return documents
