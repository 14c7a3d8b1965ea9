"""The served EfficientNet-Lite0/1/2 give what the reference PyTorch implementation gives.

tests/data/reference_logits.npz holds the reference's logits for a few of scikit-image's
photos, prepared as the processor prepares them; scripts/make_reference_logits.py made it by
running ``efficientnet-lite-pytorch`` (in a throw-away torch environment). Both engines the
processor serves through, LiteRT and Keras, are checked on the very same input tensors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imagepipe.core.catalog import ENGINE_KERAS, ENGINE_LITERT
from processor.model import load_classifier
from scripts.make_reference_logits import OUT_FILE, VARIANTS, input_digest, reference_inputs

# Float32 through two other kernels (XNNPACK, TensorFlow) than torch's; measured at most
# 1e-6 on probabilities and 1.1e-5 on top-5 log-probabilities, so ten times that.
PROBABILITY_TOLERANCE = 1e-5
# Log-probabilities of the classes that matter (the reference's top 5).
LOG_TOLERANCE = 1e-4


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(OUT_FILE) as saved:
        return {name: saved[name] for name in saved.files}


def test_the_saved_reference_is_what_the_issue_found(reference) -> None:
    # Lite0 reads the cat as a tiger cat, Lite1 and Lite2 as an Egyptian cat.
    tops = {variant: [int(i) for i in reference[f"{variant}/logits"].argmax(axis=1)]
            for variant in VARIANTS}
    assert [top[0] for top in tops.values()] == [282, 285, 285]
    assert all(top[1] == 967 for top in tops.values())  # espresso
    assert list(reference["photos"]) == ["chelsea", "coffee", "astronaut", "rocket"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", [ENGINE_LITERT, ENGINE_KERAS])
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_served_model_matches_the_reference(variant: str, engine: str, reference,
                                                model_cache: Path) -> None:
    pixels = reference_inputs(variant)
    # The very tensors the reference was given, not merely the same photos.
    assert [input_digest(p) for p in pixels] == list(reference[f"{variant}/sha256"])
    classifier = load_classifier(variant, cache_dir=model_cache / "models", engine=engine)

    served = classifier.predict(pixels)

    expected = _softmax(reference[f"{variant}/logits"].astype(np.float64))
    assert np.abs(served - expected).max() < PROBABILITY_TOLERANCE
    for row, want in zip(served, expected, strict=True):
        top = np.argsort(-want)[:5]
        assert list(np.argsort(-row)[:5]) == list(top)
        assert np.abs(np.log(row[top]) - np.log(want[top])).max() < LOG_TOLERANCE
