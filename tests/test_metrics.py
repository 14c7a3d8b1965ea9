"""The processor's and the front's metrics: counts equal to the records, stages, readiness, EMF."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from imagepipe.core.metrics import (
    EMF_METRICS,
    EMF_REASON,
    FRONT_METRICS,
    PROCESSOR_METRICS,
    STAGES,
    EmfFile,
    MetricsServer,
    emf_document,
)
from processor.metrics import ProcessorMetrics
from tests.conftest import count_results
from tests.fakes import FakeClassifier, png, put_image


def scrape(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name, as a scraper reads /metrics."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str,
          **labels: str) -> float:
    return sum(value for found, value in samples.get(name, [])
               if all(found.get(k) == v for k, v in labels.items()))


def _drain(worker: Any) -> None:
    for _ in range(10):
        if worker.run(max_batches=1).received == 0:
            return


def test_counts_by_outcome_equal_the_records_written(make_worker, settings, clients, resources,
                                                     tmp_path: Path) -> None:
    # Given five images and two that are not images, in batches of three
    for i in range(5):
        put_image(clients, settings, f"good/{i}.png", png((40 + i, 30)))
    for i in range(2):
        put_image(clients, settings, f"bad/{i}.png", b"not an image at all " * i)
    emf = tmp_path / "metrics.log"
    metrics = ProcessorMetrics(CollectorRegistry(), EmfFile(emf), namespace="imagepipe/test")
    worker = make_worker(dataclasses.replace(settings, receive_batch=3), clients,
                         FakeClassifier(), metrics=metrics)

    # When the worker has processed them all
    _drain(worker)

    # Then the counts by outcome are the records in the table
    samples = scrape(generate_latest(metrics.registry).decode())
    images = "imagepipe_processor_images_total"
    written = count_results(clients.dynamodb, settings.table)
    assert written == 7
    assert total(samples, images, outcome="done") == 5
    assert total(samples, images, outcome="failed") == 2
    assert total(samples, images) - total(samples, images, outcome="retried") == written
    # An empty object and one that is no image: the reason codes the records carry.
    assert {labels["reason"]: value for labels, value in samples[images]
            if labels["outcome"] == "failed" and value} == {"empty_object": 1, "not_an_image": 1}
    # Every stage was timed, and every batch and wait observed.
    for stage in STAGES:
        assert total(samples, "imagepipe_processor_stage_seconds_count", stage=stage) > 0, stage
    assert total(samples, "imagepipe_processor_batch_images_sum") == 7
    assert total(samples, "imagepipe_processor_upload_to_result_seconds_count") == 7
    assert total(samples, "imagepipe_processor_queue_wait_seconds_count") == 7

    # And the EMF lines say the same, under the names of the table only
    documents = [json.loads(line) for line in emf.read_text().splitlines()]
    assert sum(d.get("ImagesProcessed", 0) for d in documents) == written
    by_reason = [d for d in documents if EMF_REASON in d]
    assert sum(d["ImagesFailed"] for d in by_reason) == 2
    for document in documents:
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "imagepipe/test"
        names = {m["Name"] for m in directive["Metrics"]}
        assert names <= set(EMF_METRICS)
        assert names <= set(document)
    # One main document per batch, plus one per failure reason in it: bounded by batches.
    assert len(documents) - len(by_reason) == 3


def test_retries_and_give_ups_are_counted(make_worker, settings, clients, resources) -> None:
    put_image(clients, settings, "retry/a.png", png())
    metrics = ProcessorMetrics()
    worker = make_worker(dataclasses.replace(settings, max_receives=1), clients,
                         FakeClassifier(fail=True), metrics=metrics)

    worker.run(max_batches=1)

    samples = scrape(generate_latest(metrics.registry).decode())
    # Its last receive: written failed, retries_exhausted, as the record says.
    assert total(samples, "imagepipe_processor_images_total", outcome="failed",
                 reason="retries_exhausted") == 1
    assert count_results(clients.dynamodb, settings.table) == 1


def test_the_processor_is_ready_only_once_the_model_is_warm(
        monkeypatch: pytest.MonkeyPatch, settings, clients, resources) -> None:
    """`python -m processor`: /readyz answers 503 while the model loads and warms, then 200."""
    import processor.model
    import processor.worker
    from imagepipe.local.stack import free_port
    from processor import __main__ as main_module
    from processor.batch import BatchReport

    port = free_port()
    environ = {**settings.environ(), "IMAGEPIPE_METRICS_PROCESSOR_PORT": str(port),
               "IMAGEPIPE_ENGINE": "litert"}
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    warming, seen_ready = threading.Event(), threading.Event()

    class SlowToWarm(FakeClassifier):
        def classify(self, images: list[Any], top_k: int = 5) -> Any:
            assert warming.wait(30), "the probe never saw the processor starting"
            return super().classify(images, top_k)

    monkeypatch.setattr(processor.model, "load_classifier", lambda *a, **k: SlowToWarm())

    def run(worker: Any, max_batches: int | None = None) -> BatchReport:
        assert seen_ready.wait(30), "the probe never saw the processor ready"
        return BatchReport()

    monkeypatch.setattr(processor.worker.Worker, "run", run)
    answers: list[int] = []

    def probe() -> None:
        url = f"http://127.0.0.1:{port}/readyz"
        while not seen_ready.is_set():
            try:
                status = requests.get(url, timeout=2).status_code
            except requests.ConnectionError:
                continue
            answers.append(status)
            if status == 503:
                warming.set()
            if status == 200:
                metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                assert total(scrape(metrics), "imagepipe_processor_ready") == 1
                seen_ready.set()

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    assert main_module.main(["--max-batches", "1"]) == main_module.EXIT_OK
    prober.join(5)
    assert answers[0] == 503 and answers[-1] == 200
    assert set(answers) == {503, 200}


def test_the_metrics_server_serves_metrics_and_readiness_only() -> None:
    registry = CollectorRegistry()
    metrics = ProcessorMetrics(registry)
    server = MetricsServer(registry, "127.0.0.1", 0, ready=lambda: metrics.ready)
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert requests.get(f"{base}/readyz", timeout=5).status_code == 503
        metrics.set_ready()
        assert requests.get(f"{base}/readyz", timeout=5).json() == {"status": "ready"}
        names = {name for name in scrape(requests.get(f"{base}/metrics", timeout=5).text)}
        for metric in PROCESSOR_METRICS:
            assert any(name.startswith(metric.name) for name in names), metric.name
        assert requests.get(f"{base}/", timeout=5).status_code == 404
    finally:
        server.close()


def test_the_front_counts_requests_by_route_and_status(settings, clients, store, resources
                                                       ) -> None:
    from imagepipe.app import METRICS, create_app

    registry = CollectorRegistry()
    app = create_app(dataclasses.replace(settings, auth=False), clients, store,
                     registry=registry)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    assert client.get("/api/results/AAAAAAAAAAAAAAAAAAAAAA").status_code == 404
    assert client.post("/api/uploads", json={"filename": "a.jpg", "content_type": "image/jpeg",
                                             "size": 10}).status_code == 201
    assert client.get("/no/such/page").status_code == 404
    assert app.extensions[METRICS] is registry

    samples = scrape(generate_latest(registry).decode())
    requests_total = "imagepipe_front_requests_total"
    assert total(samples, requests_total, route="/healthz", status="200") == 3
    # The rule, not the path: one series for every image ID.
    assert total(samples, requests_total, route="/api/results/<image_id>", status="404") == 1
    assert total(samples, requests_total, route="(no route)", status="404") == 1
    # The presign latency is the upload route's.
    assert total(samples, "imagepipe_front_request_seconds_count", route="/api/uploads",
                 method="POST") == 1
    assert {m.name for m in FRONT_METRICS} == {"imagepipe_front_requests",
                                               "imagepipe_front_request_seconds"}


def test_two_apps_in_one_process_keep_their_own_figures(settings, clients, store, resources
                                                       ) -> None:
    from imagepipe.app import METRICS, create_app

    apps = [create_app(dataclasses.replace(settings, auth=False), clients, store)
            for _ in range(2)]
    apps[0].test_client().get("/healthz")
    counts = [total(scrape(generate_latest(app.extensions[METRICS]).decode()),
                    "imagepipe_front_requests_total") for app in apps]
    assert counts == [1, 0]


def test_an_emf_document_follows_the_specification() -> None:
    document = emf_document("imagepipe/x", {"ImagesFailed": 2}, {EMF_REASON: "too_large"},
                            timestamp=1700000000.5)
    assert document == {
        "_aws": {"Timestamp": 1700000000500, "CloudWatchMetrics": [{
            "Namespace": "imagepipe/x", "Dimensions": [["Reason"], []],
            "Metrics": [{"Name": "ImagesFailed", "Unit": "Count"}]}]},
        "Reason": "too_large", "ImagesFailed": 2,
    }
    values = emf_document("n", {"QueueWaitSeconds": [0.1] * 150})
    assert len(values["QueueWaitSeconds"]) == 100  # the specification's limit per metric
    with pytest.raises(ValueError, match="NotAMetric"):
        emf_document("n", {"NotAMetric": 1})


def test_the_front_writes_one_emf_document_per_route_and_status(settings, clients, store,
                                                                 resources, tmp_path: Path,
                                                                 monkeypatch) -> None:
    import imagepipe.app
    from imagepipe.app import EMF_TALLY, create_app, front

    path = tmp_path / "metrics.log"
    local = dataclasses.replace(settings, auth=False, metrics_emf_file=path,
                                metrics_namespace="imagepipe/test")
    monkeypatch.setattr(imagepipe.app, "create_app",
                        lambda: create_app(local, clients, store))
    monkeypatch.setattr(imagepipe.app.atexit, "register", lambda close: None)
    app = front()
    tally = app.extensions[EMF_TALLY]
    client = app.test_client()
    for _ in range(5):
        client.get("/healthz")
    client.get("/api/results/AAAAAAAAAAAAAAAAAAAAAA")

    tally.close()

    documents = [json.loads(line) for line in path.read_text().splitlines()]
    by_key = {(d["Route"], d["Method"], d["Status"]): d for d in documents}
    assert set(by_key) == {("/healthz", "GET", "200"),
                           ("/api/results/<image_id>", "GET", "404")}
    assert by_key["/healthz", "GET", "200"]["Requests"] == 5
    assert len(by_key["/healthz", "GET", "200"]["RequestSeconds"]) == 5
    for document in documents:
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        assert directive["Dimensions"] == [["Method", "Route", "Status"], []]
        assert {m["Name"] for m in directive["Metrics"]} <= set(EMF_METRICS)
