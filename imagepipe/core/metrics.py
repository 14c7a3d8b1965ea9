"""What the front and the processor measure: one table of metric names, and how they are served.

Each service builds its metrics into a registry it is handed (never prometheus_client's global
one, so a test can build several apps and workers in one process) and serves them on a port of
its own (`MetricsServer`), which the load balancer never routes. On AWS the processor writes the
same figures as CloudWatch embedded-metric-format (EMF) lines, one document per batch
(`emf_document`); the stack's dashboard and alarms read them by the names in `EMF_METRICS`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

logger = logging.getLogger(__name__)

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

# Seconds from a millisecond to a few minutes: stage times, request times, waits.
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 120.0, 300.0)
# Images per receive: SQS hands out at most 10 messages, a message may announce several.
BATCH_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 50)

# The processor's stages as the metrics name them, in the order an image goes through them.
STAGES = ("receive", "fetch", "decode", "classify", "write", "ack")
# What became of an image: a record written (done, reused, failed) or left for redelivery.
OUTCOMES = ("done", "reused", "failed", "retried")


@dataclass(frozen=True)
class Metric:
    """One Prometheus metric: its name (a counter's without `_total`), kind, help and labels."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = SECONDS_BUCKETS

    def build(self, registry: CollectorRegistry) -> Any:
        """The collector of this metric, registered in `registry`."""
        if self.kind == COUNTER:
            return Counter(self.name, self.help, self.labels, registry=registry)
        if self.kind == GAUGE:
            return Gauge(self.name, self.help, self.labels, registry=registry)
        return Histogram(self.name, self.help, self.labels, registry=registry,
                         buckets=self.buckets)


FRONT_METRICS = (
    Metric("imagepipe_front_requests", COUNTER,
           "Requests answered, by route (the URL rule, not the path), method and status",
           ("route", "method", "status")),
    # The presign (POST /api/uploads) and import (POST /api/imports) latencies are two routes.
    Metric("imagepipe_front_request_seconds", HISTOGRAM,
           "Seconds from a request's arrival to its answer, by route and method",
           ("route", "method")),
)

PROCESSOR_METRICS = (
    Metric("imagepipe_processor_images", COUNTER,
           "Images by outcome (done, reused, failed, retried) and failure reason code",
           ("outcome", "reason")),
    Metric("imagepipe_processor_stage_seconds", HISTOGRAM,
           "Seconds per stage call: receive (one long poll), fetch and decode (one image), "
           "classify (one model call), write (one record), ack (one delete call)",
           ("stage",)),
    Metric("imagepipe_processor_batch_images", HISTOGRAM, "Images per received batch",
           buckets=BATCH_BUCKETS),
    Metric("imagepipe_processor_queue_wait_seconds", HISTOGRAM,
           "Seconds from an image's S3 event to its pickup by the processor"),
    Metric("imagepipe_processor_upload_to_result_seconds", HISTOGRAM,
           "Seconds from an image's S3 event to its result being written"),
    Metric("imagepipe_processor_model_load_seconds", GAUGE,
           "Seconds the model took to load (and convert, on a first start)"),
    Metric("imagepipe_processor_in_flight_messages", GAUGE,
           "Messages received and not yet acknowledged or released"),
    Metric("imagepipe_processor_ready", GAUGE,
           "1 once the model is loaded and warmed, 0 before"),
)

# The CloudWatch names of the processor's EMF metrics, and their units. The template's
# dashboard and alarms use these (tests/test_metrics_names.py compares them).
EMF_IMAGES = "ImagesProcessed"
EMF_FAILED = "ImagesFailed"
EMF_RETRIED = "ImagesRetried"
EMF_BATCH = "BatchSize"
EMF_UPLOAD_TO_RESULT = "UploadToResultSeconds"
EMF_QUEUE_WAIT = "QueueWaitSeconds"
EMF_STAGE_SECONDS = {stage: f"{stage.capitalize()}Seconds" for stage in STAGES}
# The front's, one document per route, method and status a minute.
EMF_REQUESTS = "Requests"
EMF_REQUEST_SECONDS = "RequestSeconds"
EMF_METRICS: dict[str, str] = {
    EMF_IMAGES: "Count",
    EMF_FAILED: "Count",
    EMF_RETRIED: "Count",
    EMF_BATCH: "Count",
    EMF_UPLOAD_TO_RESULT: "Seconds",
    EMF_QUEUE_WAIT: "Seconds",
    **dict.fromkeys(EMF_STAGE_SECONDS.values(), "Seconds"),
    EMF_REQUESTS: "Count",
    EMF_REQUEST_SECONDS: "Seconds",
}
# The dimensions: failures by reason code; requests by route, method and status. Every
# metric is also published without them.
EMF_REASON = "Reason"
EMF_REQUEST_DIMENSIONS = ("Route", "Method", "Status")
# The EMF specification's limit on the values of one metric in one document.
EMF_MAX_VALUES = 100


def build_metrics(registry: CollectorRegistry, metrics: Iterable[Metric]) -> dict[str, Any]:
    """The collectors of `metrics` registered in `registry`, by name."""
    return {metric.name: metric.build(registry) for metric in metrics}


def emf_document(namespace: str, values: Mapping[str, float | list[float]],
                 dimensions: Mapping[str, str] | None = None,
                 timestamp: float | None = None) -> dict[str, Any]:
    """One EMF document: `values` (names from EMF_METRICS) under `namespace`.

    With `dimensions`, each metric is published both under them and without any, so the
    dashboard can sum over every reason as well as split by one.
    """
    dimensions = dict(dimensions or {})
    unknown = set(values) - set(EMF_METRICS)
    if unknown:
        raise ValueError(f"not in EMF_METRICS: {', '.join(sorted(unknown))}")
    dimension_sets: list[list[str]] = [sorted(dimensions), []] if dimensions else [[]]
    document: dict[str, Any] = {
        "_aws": {
            "Timestamp": int((time.time() if timestamp is None else timestamp) * 1000),
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": dimension_sets,
                "Metrics": [{"Name": name, "Unit": EMF_METRICS[name]} for name in values],
            }],
        },
        **dimensions,
    }
    for name, value in values.items():
        document[name] = value[:EMF_MAX_VALUES] if isinstance(value, list) else value
    return document


class EmfFile:
    """Appends EMF documents to a file, one JSON line each, for the CloudWatch agent to ship.

    A file of its own: the processor's log lines are joined by the agent on their timestamp,
    and an EMF event must be the JSON document alone.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, documents: Iterable[Mapping[str, Any]]) -> None:
        lines = "".join(json.dumps(d, separators=(",", ":")) + "\n" for d in documents)
        if not lines:
            return
        try:
            # One write per batch, appended: several processes of an instance share the file.
            with self._lock, self.path.open("a", encoding="utf-8") as out:
                out.write(lines)
        except OSError as exc:
            logger.warning("could not write metrics to %s: %s", self.path, exc)


class RequestTally:
    """The front's requests since the last flush, written as one EMF document per route,
    method and status every `interval` seconds: the log volume follows the routes, not the
    requests."""

    def __init__(self, emf: EmfFile, namespace: str, interval: float = 60.0) -> None:
        self._emf = emf
        self._namespace = namespace
        self._interval = interval
        self._lock = threading.Lock()
        self._seconds: dict[tuple[str, str, str], list[float]] = {}
        self._counts: dict[tuple[str, str, str], int] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, route: str, method: str, status: str, seconds: float) -> None:
        key = (route, method, status)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            kept = self._seconds.setdefault(key, [])
            if len(kept) < EMF_MAX_VALUES:
                kept.append(round(seconds, 4))

    def flush(self, timestamp: float | None = None) -> None:
        with self._lock:
            counts, seconds = self._counts, self._seconds
            self._counts, self._seconds = {}, {}
        self._emf.write(
            emf_document(self._namespace,
                         {EMF_REQUESTS: count, EMF_REQUEST_SECONDS: seconds[key]},
                         dict(zip(EMF_REQUEST_DIMENSIONS, key, strict=True)), timestamp)
            for key, count in sorted(counts.items()))

    def start(self) -> RequestTally:
        self._thread = threading.Thread(target=self._loop, name="emf", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stopping.wait(self._interval):
            self.flush()

    def close(self) -> None:
        """Stop, writing what was counted since the last flush."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the service's own log."""


class MetricsServer:
    """Serves `/metrics` (Prometheus text) and, given `ready`, `/readyz` from a thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int,
                 ready: Callable[[], bool] | None = None) -> None:
        self._metrics = make_wsgi_app(registry)
        self._ready = ready
        self._server = make_server(host, port, self._app, server_class=_ThreadingServer,
                                   handler_class=_QuietHandler)
        self.host = host
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics",
                                        daemon=True)
        self._thread.start()
        logger.info("metrics on http://%s:%d/metrics", host, self.port)

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics(environ, start_response)
        if path == "/readyz" and self._ready is not None:
            ready = self._ready()
            body = json.dumps({"status": "ready" if ready else "starting"}).encode()
            start_response("200 OK" if ready else "503 Service Unavailable",
                           [("Content-Type", "application/json")])
            return [body]
        body = json.dumps({"error": {"code": "not_found", "message": f"no {path} here"}})
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [body.encode()]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
