"""Shared fixtures: fake credentials, moto, provisioned resources, the app, photos, events."""

from __future__ import annotations

import copy
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from moto import mock_aws
from PIL import Image

from imagepipe.core.aws import Clients, make_clients
from imagepipe.core.provision import Resources, provision
from imagepipe.core.records import ResultStore
from imagepipe.core.settings import Settings

EVENTS = Path(__file__).parent / "events"

_AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE",
             "AWS_SHARED_CREDENTIALS_FILE")


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials, so nothing can reach a real account."""
    for name in _AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SECURITY_TOKEN", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One converted-weights cache for the whole run, outside the user's home."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture
def settings(model_cache: Path) -> Settings:
    return Settings(
        bucket="test-images",
        queue="test-events",
        dead_letter_queue="test-events-dlq",
        table="test-results",
        poll_seconds=0,
        sync_wait_seconds=2,
        max_upload_bytes=2 * 1024 * 1024,
        max_pixels=40_000_000,
        cache_dir=model_cache,
    )


@pytest.fixture
def aws() -> Iterator[None]:
    """moto's in-process mock, active before any client is made."""
    with mock_aws():
        yield


@pytest.fixture
def clients(aws: None, settings: Settings) -> Clients:
    return make_clients(settings)


@pytest.fixture
def resources(settings: Settings, clients: Clients) -> Resources:
    return provision(settings, clients)


@pytest.fixture
def store(resources: Resources, clients: Clients, settings: Settings) -> ResultStore:
    return ResultStore(clients.dynamodb, settings.table)


@pytest.fixture
def app(settings: Settings, clients: Clients, store: ResultStore) -> Any:
    from imagepipe.app import create_app

    app = create_app(settings, clients, store)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture(scope="session")
def classifier(model_cache: Path) -> Any:
    """The real EfficientNet-Lite0, built once per run."""
    from processor.model import load_classifier

    return load_classifier("efficientnet_lite0", cache_dir=model_cache / "models")


def _encode(array: Any, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


@dataclass(frozen=True)
class Photos:
    """Real photos from scikit-image, as files a person would upload."""

    cat_jpeg: bytes
    coffee_jpeg: bytes
    rocket_jpeg: bytes
    cat_png: bytes


@pytest.fixture(scope="session")
def photos() -> Photos:
    from skimage import data

    return Photos(
        cat_jpeg=_encode(data.chelsea(), "JPEG", quality=92),
        coffee_jpeg=_encode(data.coffee(), "JPEG", quality=92),
        rocket_jpeg=_encode(data.rocket(), "JPEG", quality=92),
        cat_png=_encode(data.chelsea(), "PNG"),
    )


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def s3_event(bucket: str, *keys: str, event_name: str = "ObjectCreated:Put") -> str:
    """An S3 notification body for these keys, encoded the way S3 encodes them."""
    template = load_event("s3_object_created.json")["Records"][0]
    records = []
    for key in keys:
        record = copy.deepcopy(template)
        record["eventName"] = event_name
        record["s3"]["bucket"]["name"] = bucket
        record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
        record["s3"]["object"]["key"] = quote_plus(key, safe="")
        records.append(record)
    return json.dumps({"Records": records})


@pytest.fixture
def make_event() -> Any:
    return s3_event


def env_with(**values: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(values)
    return env
