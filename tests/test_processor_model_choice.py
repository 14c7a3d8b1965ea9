"""Choosing the model: a keras.applications model, a custom trained one, switching between them."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from imagepipe.core.catalog import describe_model
from processor.model import load_classifier
from processor.train import train_classifier
from processor.worker import Worker
from tests.conftest import s3_event
from tests.fakes import (
    put_image,
)

CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat"}


def _shape_image(kind: str, rng: np.random.Generator, fmt: str = "PNG") -> bytes:
    """A red disc or a blue square of random size and place on a light, noisy background."""
    size = int(rng.integers(96, 200))
    background = rng.integers(200, 256, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    side = int(rng.integers(size // 3, size * 3 // 4))
    x, y = (int(v) for v in rng.integers(0, size - side, 2))
    if kind == "circles":
        draw.ellipse((x, y, x + side, y + side), fill=(int(rng.integers(180, 256)), 30, 30))
    else:
        draw.rectangle((x, y, x + side, y + side), fill=(30, 30, int(rng.integers(180, 256))))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shapes_model(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    """A two-class model trained on the frozen Lite0 base from 16 synthetic images per class."""
    data = tmp_path_factory.mktemp("shapes-data")
    rng = np.random.default_rng(1)
    for kind in ("circles", "squares"):
        (data / kind).mkdir()
        for i in range(16):
            (data / kind / f"{i}.png").write_bytes(_shape_image(kind, rng))
    (data / "circles" / "notes.txt").write_text("not an image, ignored")
    output = tmp_path_factory.mktemp("shapes-model") / "shapes.keras"

    report = train_classifier(data, output, cache_dir=model_cache / "models", epochs=40)

    assert report.labels == ["circles", "squares"]
    assert report.images == 32 and report.skipped == 0
    assert report.train_accuracy >= 0.9
    assert report.labels_path.read_text() == "circles\nsquares\n"
    return output


def _drain(worker: Worker) -> None:
    for _ in range(10):
        if worker.run(max_batches=1).received == 0:
            return


@pytest.mark.slow
def test_custom_model_serves_its_labels_end_to_end(make_worker, settings, clients, resources, store,
                                                   shapes_model: Path, model_cache: Path,
                                                   client_for) -> None:
    # Given the trained model is the configured one, and new shapes it has never seen
    settings = dataclasses.replace(settings, model=str(shapes_model))
    classifier = load_classifier(settings.model, cache_dir=model_cache / "models")
    rng = np.random.default_rng(99)
    expected = {}
    for i, kind in enumerate(["circles", "squares"] * 3):
        fmt = "JPEG" if i % 2 else "PNG"
        expected[put_image(clients, settings, f"shapes/{i}.{fmt.lower()}",
                      _shape_image(kind, rng, fmt))] = kind

    # When the processor drains the queue
    _drain(make_worker(settings, clients, classifier))

    # Then every image has the right label, from the custom model, through the results API
    api = client_for(settings)
    info = describe_model(str(shapes_model))
    for image_id, kind in expected.items():
        result = api.get(f"/api/results/{image_id}").get_json()
        assert result["status"] == "done"
        assert result["labels"][0]["label"] == kind, result["labels"]
        assert len(result["labels"]) == 2  # top_k 5 is clamped to the two classes
        assert result["model"] == {"name": "custom:shapes", "version": info.version}
    [model] = [m for m in api.get("/api/models").get_json()["models"] if m["in_use"]]
    assert model == {"name": "custom:shapes", "kind": "custom", "version": info.version,
                     "input_size": 224, "classes": 2, "in_use": True}


@pytest.fixture(scope="module")
def mobilenet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights of a MobileNetV3Small built here (untrained: there is no download here)."""
    import keras

    keras.utils.set_random_seed(3)
    path = tmp_path_factory.mktemp("keras-weights") / "mobilenet_v3_small.weights.h5"
    keras.applications.MobileNetV3Small(weights=None).save_weights(path)
    return path


@pytest.mark.slow
def test_keras_application_from_a_local_weights_file(make_worker, settings, clients, resources,
                                                     store,
                                                     mobilenet_weights: Path, photos,
                                                     model_cache: Path) -> None:
    classifier = load_classifier("keras:MobileNetV3Small", cache_dir=model_cache / "models",
                                 weights_file=mobilenet_weights)
    image_id = put_image(clients, settings, "apps/cat.jpg", photos.cat_jpeg)

    _drain(make_worker(settings, clients, classifier))

    record = store.get(image_id)
    assert record.status == "done" and len(record.labels) == 5
    assert record.model_name == "keras:MobileNetV3Small"
    assert record.model_version == describe_model("keras:MobileNetV3Small",
                                                  mobilenet_weights).version
    assert record.model_version.startswith("keras3.")
    assert classifier.engine.name == "litert" and classifier.input_size == 224


@pytest.mark.slow
def test_keras_application_applies_its_own_preprocessing(tmp_path: Path) -> None:
    import keras

    # MobileNetV2 expects pixels scaled to [-1, 1] by its preprocess_input.
    reference = keras.applications.MobileNetV2(weights=None)
    weights = tmp_path / "mobilenet_v2.weights.h5"
    reference.save_weights(weights)
    classifier = load_classifier("keras:MobileNetV2", cache_dir=tmp_path, weights_file=weights,
                                 engine="keras")
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)

    np.testing.assert_allclose(classifier.predict(pixels),
                               reference.predict(pixels / 127.5 - 1, verbose=0), atol=1e-5)


class _BrokenModel:
    """A model that fails, as a new model might on its first batches."""

    name = "broken"
    version = "9"
    input_size = 224

    def preprocess(self, image: Any) -> Any:
        return image

    def classify(self, images: list[Any], top_k: int = 5) -> list:
        raise RuntimeError("the new model is not ready")


@pytest.mark.slow
def test_switching_models_replaces_results_only_once_written(make_worker,
        settings, clients, resources, store, classifier, shapes_model: Path, photos,
        model_cache: Path) -> None:
    # Given a result from the default model
    image_id = put_image(clients, settings, "switch/cat.jpg", photos.cat_jpeg)
    _drain(make_worker(settings, clients, classifier))
    first = store.get(image_id)
    assert (first.model_name, first.model_version) == (classifier.name, classifier.version)
    assert first.labels[0].label in CAT_LABELS

    def reprocess(model: Any) -> None:
        clients.sqs.send_message(QueueUrl=resources.queue_url,
                                 MessageBody=s3_event(settings.bucket, "switch/cat.jpg"))
        _drain(make_worker(settings, clients, model))

    # When re-processing with a new model fails, the old result stays whole
    reprocess(_BrokenModel())
    assert store.get(image_id) == first

    # When the new model's result is written, it replaces the old one entirely
    custom = load_classifier(str(shapes_model), cache_dir=model_cache / "models")
    reprocess(custom)
    second = store.get(image_id)
    assert (second.model_name, second.model_version) == (custom.name, custom.version)
    assert {label.label for label in second.labels} == {"circles", "squares"}
    assert second.created_at == first.created_at
    assert second.processed_at > first.processed_at


@pytest.mark.slow
def test_nested_class_folders_give_labels_parents_and_categories(
        tmp_path: Path, model_cache: Path) -> None:
    # Given classes in folders of their kinds: shapes/round/circles, shapes/angular/squares
    data = tmp_path / "data"
    rng = np.random.default_rng(5)
    for kind, chain in (("circles", "shapes/round"), ("squares", "shapes/angular")):
        (data / chain / kind).mkdir(parents=True)
        for i in range(8):
            (data / chain / kind / f"{i}.png").write_bytes(_shape_image(kind, rng))
    output = tmp_path / "nested.keras"

    report = train_classifier(data, output, cache_dir=model_cache / "models", epochs=20,
                              nested=True)

    # Then the parents file beside the labels gives each class its folders, nearest first
    assert report.labels == ["squares", "circles"]
    assert report.parents_path == tmp_path / "nested.parents.json"
    assert json.loads(report.parents_path.read_text()) == {
        "parents": {"squares": ["angular", "shapes"], "circles": ["round", "shapes"]}}
    classifier = load_classifier(str(output), cache_dir=model_cache / "models")
    [prediction] = classifier.label_images([Image.open(io.BytesIO(_shape_image("circles", rng)))],
                                           category_top_k=8, category_min_score=0.2)
    assert prediction.labels[0].label == "circles"
    assert prediction.labels[0].parents == ("round", "shapes")
    assert [c.label for c in prediction.categories][-1] == "shapes"
    assert prediction.categories[-1].score == pytest.approx(1.0, abs=1e-4)
    assert {"circles", "round", "shapes"} <= set(prediction.words)

    # Trained again flat (the kinds as classes), no parents file is left over
    flat = train_classifier(data / "shapes", output, cache_dir=model_cache / "models", epochs=1)
    assert flat.labels == ["angular", "round"] and flat.parents_path is None
    assert not report.parents_path.exists()
