"""Fakes and small builders the tests share: defined once, imported where needed."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from imagepipe.core.aws import Clients
from imagepipe.core.ids import image_id_for_object
from imagepipe.core.records import Label
from imagepipe.core.settings import Settings


class FakeClassifier:
    """Labels every image "fake"; the worker tests need no real model."""

    name = "fake"
    version = "0"
    input_size = 224

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.batches: list[int] = []

    def preprocess(self, image: Any) -> Any:
        return image

    def classify(self, images: list[Any], top_k: int = 5) -> list[list[Label]]:
        if self.fail:
            raise RuntimeError("model exploded")
        self.batches.append(len(images))
        return [[Label("fake", 0.9, 1), Label("other", 0.1, 2)][:top_k]
                for _ in images]


class CountingClassifier:
    """Labels images by their width, and counts the images it was given."""

    name = "fake"
    input_size = 224

    def __init__(self, version: str = "1", fail: bool = False) -> None:
        self.version = version
        self.fail = fail
        self.images = 0

    def preprocess(self, image: Any) -> Any:
        return image

    def classify(self, images: list[Any], top_k: int = 5) -> list[list[Label]]:
        if self.fail:
            raise RuntimeError("model exploded")
        self.images += len(images)
        return [[Label(f"width {image.width}", 0.9, image.width)] for image in images]


class FixedEngine:
    """An engine that answers every image with one probability vector (`row`, settable)."""

    name = "fixed"

    def __init__(self, row: Any) -> None:
        self.row = np.asarray(row, dtype=np.float32)

    def predict(self, batch: Any) -> Any:
        return np.tile(self.row, (len(batch), 1))


def imagenet_row(probabilities: dict[str, float]) -> Any:
    """A softmax over the 1000 ImageNet classes: these labels' scores, the rest shared out."""
    from processor.model import imagenet_labels

    labels = imagenet_labels()
    row = np.zeros(len(labels), dtype=np.float64)
    for label, score in probabilities.items():
        row[labels.index(label)] = score
    rest = 1.0 - row.sum()
    row[row == 0] = rest / int((row == 0).sum())
    return row


# What EfficientNet-Lite0 says of scikit-image's `chelsea` (a tabby): siblings share the cat.
TABBY_PHOTO = {"tiger cat": 0.41, "Egyptian cat": 0.34, "tabby": 0.17, "lynx": 0.02}


def imagenet_classifier(probabilities: dict[str, float], name: str = "fake-imagenet",
                        version: str = "1") -> Any:
    """The real Classifier over ImageNet's labels and hierarchy, its engine answering every
    image with these probabilities (see imagenet_row): no network, the rest is real."""
    from imagepipe.core.catalog import ModelInfo
    from imagepipe.core.hierarchy import imagenet_hierarchy
    from processor.model import Classifier, imagenet_labels

    info = ModelInfo(name, "efficientnet_lite", version, 224, 1000, None)
    return Classifier(info, imagenet_labels(), FixedEngine(imagenet_row(probabilities)),
                      imagenet_hierarchy())


def png(size: tuple[int, int] = (64, 48), mode: str = "RGB", colour: Any = 0) -> bytes:
    """A plain PNG of this size and mode."""
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def png_of_width(width: int) -> bytes:
    """A PNG whose bytes, and CountingClassifier's label, follow its width."""
    return png((width, 40), colour=(width % 256, 10, 20))


def put_image(clients: Clients, settings: Settings, key: str, body: bytes) -> str:
    """Drop an object into the bucket; the image ID its result will have."""
    clients.s3.put_object(Bucket=settings.bucket, Key=key, Body=body)
    return image_id_for_object(settings.bucket, key)


def queue_counts(clients: Clients, url: str) -> tuple[int, int]:
    """(visible, in flight) on a queue."""
    attrs = clients.sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]))
