"""The metrics of the running local stack: the front under gunicorn, the processor daemon."""

from __future__ import annotations

import boto3
import pytest
import requests

from imagepipe.core.aws import make_clients
from imagepipe.core.ids import image_id_for_object
from imagepipe.core.metrics import OUTCOMES
from imagepipe.core.records import ResultStore
from imagepipe.core.settings import Settings
from imagepipe.local.stack import LocalStack, port_open
from tests.conftest import wait_for
from tests.fakes import png
from tests.test_metrics import scrape, total

pytestmark = pytest.mark.slow


def _metrics(stack: LocalStack, port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    return scrape(requests.get(f"http://{stack.settings.metrics_host}:{port}/metrics",
                               timeout=10).text)


def test_after_n_images_the_counts_by_outcome_equal_the_records_written(
        stack: LocalStack) -> None:
    local = Settings.from_env(stack.env)
    session = boto3.session.Session(aws_access_key_id="testing",
                                    aws_secret_access_key="testing")
    clients = make_clients(local, session)
    store = ResultStore(clients.dynamodb, local.table)
    port = stack.settings.metrics_processor_port
    # The processor serves its metrics from the start, and says ready once its model is warm.
    readyz = f"http://{stack.settings.metrics_host}:{port}/readyz"
    wait_for(lambda: port_open(stack.settings.metrics_host, port), "the metrics port", 120, 0.2)
    wait_for(lambda: requests.get(readyz, timeout=10).status_code == 200, "processor ready",
             300, 0.5)
    before = _metrics(stack, port)
    images = "imagepipe_processor_images_total"

    # Given six images the model reads and two objects that are not images
    keys = [f"metrics/good{i}.png" for i in range(6)] + ["metrics/bad0.png", "metrics/bad1.png"]
    for i, key in enumerate(keys):
        body = png((50 + i, 40), colour=(i * 30, 90, 10)) if "good" in key else b"%PDF-1.4 no"
        clients.s3.put_object(Bucket=local.bucket, Key=key, Body=body)

    # When the processor has written a result for each
    ids = [image_id_for_object(local.bucket, key) for key in keys]
    records = wait_for(lambda: (found := [store.get(i) for i in ids]) and all(
        r is not None and r.status != "pending" for r in found) and found,
        "the eight results", timeout=120, every=0.5)
    # A batch is counted once all its results are written, so the counters lag the records.
    after = wait_for(lambda: (now := _metrics(stack, port)) and sum(
        total(now, images, outcome=o) - total(before, images, outcome=o) for o in OUTCOMES
    ) >= len(keys) and now, "the counters to catch up", timeout=30, every=0.2)

    # Then the counters moved by exactly the records written, by outcome and reason
    def moved(**labels: str) -> float:
        return total(after, images, **labels) - total(before, images, **labels)

    assert moved(outcome="done") + moved(outcome="reused") == sum(
        r.status == "done" for r in records) == 6
    assert moved(outcome="failed") == sum(r.status == "failed" for r in records) == 2
    assert moved(outcome="failed", reason="not_an_image") == 2
    assert moved(outcome="retried") == 0
    for stage in ("receive", "fetch", "decode", "classify", "write", "ack"):
        assert total(after, "imagepipe_processor_stage_seconds_count", stage=stage) > 0
    assert total(after, "imagepipe_processor_model_load_seconds") > 0
    assert total(after, "imagepipe_processor_ready") == 1


def test_the_front_serves_its_metrics_on_its_own_port(stack: LocalStack) -> None:
    base = f"http://{stack.settings.host}:{stack.settings.port}"
    assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
    assert requests.get(f"{base}/readyz", timeout=10).status_code == 200
    # Not on the front's own port: only the metrics port serves them.
    assert requests.get(f"{base}/metrics", timeout=10).status_code == 404

    samples = _metrics(stack, stack.settings.metrics_front_port)

    assert total(samples, "imagepipe_front_requests_total", route="/healthz",
                 status="200") >= 1
    assert total(samples, "imagepipe_front_requests_total", route="/readyz",
                 status="200") >= 1
