"""`imagepipe processor` / `python -m processor`: run the daemon until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from imagepipe.core.aws import make_clients
from imagepipe.core.logs import configure_logging
from imagepipe.core.metrics import EmfFile, MetricsServer
from imagepipe.core.settings import Settings, SettingsError

logger = logging.getLogger("processor")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_FORCED = 3
# The instance is leaving its group and this processor drained: systemd must not restart it
# (the stack's unit says RestartPreventExitStatus=4).
EXIT_DRAINED = 4


def main(argv: list[str] | None = None) -> int:
    """Load the model, then process the queue; first SIGTERM finishes the batch, second exits.

    In an Auto Scaling group (IMAGEPIPE_LIFECYCLE_GROUP), the instance goes in service once the
    model is warm, and leaving the group (scale-in, Spot interruption) drains as SIGTERM does.
    """
    parser = argparse.ArgumentParser(prog="imagepipe processor", description=__doc__)
    parser.add_argument("--max-batches", type=int, default=None,
                        help="stop after this many receives (for tests and one-off runs)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"imagepipe processor: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level, "processor")

    # Imported here: TensorFlow takes seconds to import and is not needed to parse arguments.
    from processor.devices import configure_devices
    from processor.engine import gpu_available
    from processor.heartbeat import Heartbeat
    from processor.lifecycle import make_lifecycle, warm_up
    from processor.metrics import ProcessorMetrics
    from processor.model import load_classifier
    from processor.worker import Worker

    emf = EmfFile(settings.metrics_emf_file) if settings.metrics_emf_file else None
    metrics = ProcessorMetrics(emf=emf, namespace=settings.metrics_namespace)
    server = None
    if settings.metrics_processor_port:
        # Up before the model loads, so /readyz says 503 while it does.
        try:
            server = MetricsServer(metrics.registry, settings.metrics_host,
                                   settings.metrics_processor_port, ready=lambda: metrics.ready)
        except OSError as exc:
            print(f"imagepipe processor: metrics port {settings.metrics_host}:"
                  f"{settings.metrics_processor_port}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    clients = make_clients(settings)
    lifecycle = make_lifecycle(settings)
    if gpu_available():
        configure_devices()  # before the model is built: the dtype policy applies to new layers
    else:
        logger.info("no NVIDIA device: the model runs on the CPU")
    loading = time.perf_counter()
    classifier = load_classifier(
        settings.model,
        cache_dir=settings.model_cache_dir,
        weights_file=settings.model_weights,
        labels_file=settings.model_labels,
        engine=settings.engine,
        threads=settings.inference_threads or None,
    )
    metrics.model_loaded(time.perf_counter() - loading)
    heartbeat = Heartbeat(clients.dynamodb, settings.table,
                          f"{classifier.name} {classifier.version}")
    worker = Worker(settings, clients, classifier, heartbeat=heartbeat, metrics=metrics)
    deliverer = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if worker.stopping:
            logger.warning("second %s: exiting now; unacknowledged messages will come back",
                           signal.Signals(signum).name)
            logging.shutdown()
            # Skip joining the fetch threads: the point of a second signal is not to wait.
            os._exit(EXIT_FORCED)
        logger.info("%s: finishing the batch in hand, if any, then exiting (again: at once)",
                    signal.Signals(signum).name)
        # Only sets a flag and an event: raising here would land in whatever the main thread
        # was doing, a lock's internals included.
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Ready (/readyz; in service, with the bootstrap's signal sent) only once the first batch
    # will not wait for graph building and allocation. With nobody to tell, the first batch
    # warms the model itself.
    if lifecycle is not None or server is not None:
        warm_up(classifier)
    metrics.set_ready()
    if lifecycle is not None:
        lifecycle.ready()
    try:
        with worker:
            if lifecycle is not None:
                lifecycle.watch(worker.stop)
            # Webhooks go out from processors in service only: not before the model is warm
            # and the launch hook complete, nor from an instance already leaving.
            if lifecycle is None or lifecycle.leaving is None:
                deliverer = _start_deliverer(settings, clients)
            worker.run(max_batches=args.max_batches)
    finally:
        if deliverer is not None:
            # Deliveries in flight finish or come back: their messages are not deleted yet.
            deliverer.stop()
        # Only once every result is written and acknowledged may the group terminate us.
        if lifecycle is not None:
            lifecycle.close()
        if server is not None:
            server.close()
    return EXIT_OK if lifecycle is None or lifecycle.leaving is None else EXIT_DRAINED


def _start_deliverer(settings: Settings, clients: Any) -> Any:
    """The webhook deliverer on its own thread, when the settings name its queue."""
    if not (settings.results_topic and settings.webhook_queue):
        return None
    from imagepipe.core.aws import queue_url
    from imagepipe.core.webhooks import WebhookStore
    from processor.webhooks import WebhookDeliverer

    deliverer = WebhookDeliverer(settings, clients.sqs,
                                 WebhookStore(clients.dynamodb, settings.table),
                                 queue_url(clients.sqs, settings.webhook_queue))
    threading.Thread(target=deliverer.run, name="webhooks", daemon=True).start()
    return deliverer


if __name__ == "__main__":
    sys.exit(main())
