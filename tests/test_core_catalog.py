"""The model catalog: names, versions and shapes of models, without loading them."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from imagepipe.core.catalog import (
    ModelError,
    check_model_name,
    describe_model,
    keras_file_input_size,
    read_labels,
)
from imagepipe.core.settings import Settings, SettingsError


def _fake_keras_file(path: Path, shape: list) -> Path:
    """A .keras archive with just the config the catalog reads."""
    config = {"class_name": "Functional", "config": {"layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": shape}},
        {"class_name": "Dense", "config": {"units": 3}},
    ]}}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
    return path


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2",
                                  "keras:MobileNetV3Small", "keras:ResNet50", "/m/pets.keras"])
def test_known_kinds_of_names(name: str) -> None:
    check_model_name(name)


@pytest.mark.parametrize("name", ["resnet50", "keras:", "keras:../evil", "efficientnet_lite9",
                                  "model.h5"])
def test_unknown_names_are_refused(name: str) -> None:
    with pytest.raises(ModelError, match="efficientnet_lite0"):
        check_model_name(name)


def test_lite_versions_come_from_the_weights_file_hash() -> None:
    infos = [describe_model(f"efficientnet_lite{n}") for n in range(3)]

    assert [(i.version, i.input_size, i.classes) for i in infos] == [
        ("1-57934424", 224, 1000), ("1-77cc7160", 240, 1000), ("1-9656183e", 260, 1000)]


def test_keras_application_version_follows_its_weights(tmp_path: Path) -> None:
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"first")
    first = describe_model("keras:EfficientNetV2S", weights)
    weights.write_bytes(b"second, longer")

    second = describe_model("keras:EfficientNetV2S", weights)

    assert first.input_size == 384 and first.classes == 1000
    assert first.version != second.version and second.version.startswith("keras3")
    assert describe_model("keras:ResNet50").version.endswith("-imagenet")
    with pytest.raises(ModelError, match="does not exist"):
        describe_model("keras:ResNet50", tmp_path / "missing.h5")


def test_custom_model_with_labels_beside_it(tmp_path: Path) -> None:
    model = _fake_keras_file(tmp_path / "pets.keras", [None, 192, 192, 3])
    (tmp_path / "pets.labels.txt").write_text("cat\ndog\nhamster\n\n")

    info = describe_model(str(model))

    assert (info.name, info.kind, info.input_size, info.classes) == ("custom:pets", "custom",
                                                                     192, 3)
    (tmp_path / "pets.labels.txt").write_text("cat\ndog\nrabbit\n")
    assert describe_model(str(model)).version != info.version


def test_custom_model_problems_are_named(tmp_path: Path) -> None:
    model = _fake_keras_file(tmp_path / "pets.keras", [None, 192, 128, 3])
    with pytest.raises(ModelError, match="labels file"):
        describe_model(str(model))
    (tmp_path / "pets.labels.txt").write_text("cat\n\ndog\n")
    with pytest.raises(ModelError, match="one non-empty label per line"):
        read_labels(tmp_path / "pets.labels.txt")
    with pytest.raises(ModelError, match="not"):
        keras_file_input_size(model)
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match=r"not a \.keras model archive"):
        keras_file_input_size(tmp_path / "junk.keras")


def test_model_settings() -> None:
    settings = Settings.from_env({"IMAGEPIPE_MODEL": "keras:ResNet50",
                                  "IMAGEPIPE_MODEL_WEIGHTS": "/w/resnet.h5",
                                  "IMAGEPIPE_MIN_SCORE": "0.25", "IMAGEPIPE_ENGINE": "keras"})

    assert settings.model_weights == Path("/w/resnet.h5") and settings.model_labels is None
    assert settings.min_score == 0.25 and settings.engine == "keras"


@pytest.mark.parametrize(("name", "value"), [
    ("IMAGEPIPE_MODEL", "resnet"),
    ("IMAGEPIPE_MIN_SCORE", "1.5"),
    ("IMAGEPIPE_ENGINE", "tpu"),
    ("IMAGEPIPE_INFERENCE_THREADS", "-1"),
])
def test_bad_model_settings_are_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_models_endpoint(client) -> None:
    body = client.get("/api/models").get_json()

    assert body["top_k"] == 5 and body["min_score"] == 0
    [in_use] = [m for m in body["models"] if m["in_use"]]
    assert in_use == {"name": "efficientnet_lite0", "kind": "efficientnet_lite",
                      "version": "1-57934424", "input_size": 224, "classes": 1000,
                      "in_use": True}
    assert {m["name"] for m in body["models"]} == {f"efficientnet_lite{n}" for n in range(3)}


def test_models_endpoint_names_a_missing_model_file(app, client, tmp_path: Path) -> None:
    from imagepipe.core.services import EXTENSION

    services = app.extensions[EXTENSION]
    settings = dataclasses.replace(services.settings, model=str(tmp_path / "gone.keras"))
    app.extensions[EXTENSION] = dataclasses.replace(services, settings=settings)

    response = client.get("/api/models")

    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "model_unavailable"


def test_describing_models_does_not_import_tensorflow() -> None:
    code = ("import sys; from imagepipe.core.catalog import describe_model; "
            "import results_api.routes; describe_model('efficientnet_lite1'); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
