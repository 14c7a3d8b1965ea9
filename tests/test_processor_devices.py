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
    mixed = load_classifier("efficientnet_lite0", cache_dir=model_cache / "models")
    answers = mixed.classify(images, top_k=3)

    # The mixed model really computed in float16: its scores are float16 values, the
    # reference's are not.
    def in_float16(score: float) -> bool:
        return float(np.float16(score)) == score

    assert all(in_float16(p.score) for top in answers for p in top)
    assert not all(in_float16(p.score) for top in reference for p in top)
    for want, got in zip(reference, answers, strict=True):
        assert [p.label for p in got][:2] == [p.label for p in want][:2]
        for a, b in zip(want, got, strict=True):
            assert abs(a.score - b.score) < 0.01
