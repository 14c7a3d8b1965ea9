"""Inference engines: LiteRT agrees with Keras; draft decoding agrees with full decoding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from skimage import data

from benchmarks.bench import phone_jpeg
from processor.decode import decode_image
from processor.model import load_classifier
from processor.worker import min_decode_side

PHOTOS = ("chelsea", "coffee", "rocket")


@pytest.mark.slow
def test_litert_and_keras_agree_on_the_test_photos(classifier, model_cache: Path,
                                                   photos) -> None:
    keras_classifier = load_classifier(cache_dir=model_cache / "models", engine="keras")
    images = [decode_image(jpeg, 40_000_000).image
              for jpeg in (photos.cat_jpeg, photos.coffee_jpeg, photos.rocket_jpeg)]
    batch = np.stack([classifier.preprocess(image) for image in images])

    litert, keras = classifier.predict(batch), keras_classifier.predict(batch)

    assert classifier.engine.name == "litert" and keras_classifier.engine.name == "keras"
    assert list(litert.argmax(axis=1)) == list(keras.argmax(axis=1))
    np.testing.assert_allclose(litert, keras, atol=1e-4)
    tops = [top[0].label for top in classifier.classify(images, top_k=1)]
    assert tops[1:] == ["espresso", "missile"]


@pytest.mark.slow
def test_serving_a_cached_export_does_not_import_tensorflow(classifier,
                                                            model_cache: Path) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from processor.model import load_classifier\n"
        f"c = load_classifier(cache_dir=Path({str(model_cache / 'models')!r}))\n"
        "assert c.engine.name == 'litert'\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


@pytest.mark.slow
def test_draft_decoding_keeps_the_labels_of_12_megapixel_photos(classifier) -> None:
    rng = np.random.default_rng(0)
    for name in PHOTOS:
        jpeg = phone_jpeg(getattr(data, name)(), rng, progressive=False)
        side = min_decode_side(classifier.input_size)
        full = decode_image(jpeg, 40_000_000, min_side=side, draft=False)
        draft = decode_image(jpeg, 40_000_000, min_side=side)

        assert (full.width, full.height) == (draft.width, draft.height)
        assert full.width * full.height > 11_000_000
        assert min(draft.image.size) < min(full.image.size) // 4
        [[top_full], [top_draft]] = classifier.classify([full.image, draft.image], top_k=1)
        assert top_draft.label == top_full.label, name
