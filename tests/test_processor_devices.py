"""What the processor computes on: device logging, and mixed float16 as set on a GPU.

These machines have no GPU, so configure_devices() takes its CPU path here; the mixed
float16 policy it sets on a GPU is applied by hand to check the model still gives the same
answers under it (TensorFlow runs float16 on the CPU too, slowly).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from processor.devices import MIXED_POLICY, configure_devices


@pytest.fixture
def restore_policy() -> Iterator[None]:
    import keras

    before = keras.mixed_precision.global_policy().name
    yield
    keras.mixed_precision.set_global_policy(before)


def test_without_a_gpu_the_devices_are_logged_and_float32_kept(caplog, restore_policy) -> None:
    import keras
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU; the CPU path is not taken")
    with caplog.at_level(logging.INFO, logger="processor.devices"):
        assert configure_devices() == []
    assert keras.mixed_precision.global_policy().name == "float32"
    assert "/physical_device:CPU:0" in caplog.text
    assert "no GPU" in caplog.text


def test_main_configures_devices_before_building_the_model() -> None:
    source = (Path(__file__).resolve().parents[1] / "processor" / "__main__.py").read_text()
    assert source.index("configure_devices()") < source.index("load_classifier(")


@pytest.mark.slow
def test_model_built_under_mixed_float16_gives_the_float32_answers(
        classifier: Any, photos: Any, model_cache: Path, restore_policy) -> None:
    import io

    import keras
    import numpy as np
    from PIL import Image

    from processor.model import load_classifier

    images = [Image.open(io.BytesIO(photo)) for photo in (photos.cat_jpeg, photos.coffee_jpeg)]
    reference = classifier.classify(images, top_k=3)

    keras.mixed_precision.set_global_policy(MIXED_POLICY)
    # The TensorFlow engine, as on a GPU (on a CPU "auto" would pick LiteRT).
    mixed = load_classifier("efficientnet_lite0", cache_dir=model_cache / "models",
                            engine="keras")
    answers = mixed.classify(images, top_k=3)

    # The network computes in float16; only its output layer stays float32, so the scores
    # keep their precision.
    layers = mixed.engine.model.layers
    compute = {layer.dtype_policy.compute_dtype for layer in layers if layer.weights}
    assert "float16" in compute
    assert layers[-1].dtype_policy.compute_dtype == "float32"
    assert all(np.isfinite(p.score) for top in answers for p in top)
    for want, got in zip(reference, answers, strict=True):
        assert [p.label for p in got][:2] == [p.label for p in want][:2]
        for a, b in zip(want, got, strict=True):
            assert abs(a.score - b.score) < 0.01
