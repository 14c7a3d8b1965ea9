"""`imagepipe train`: transfer learning from EfficientNet-Lite to your own classes, on a CPU.

The ImageNet base stays frozen, so its features are computed once per image (and its mirror
image) and only a softmax layer is trained on them: minutes become seconds. The result is one
``.keras`` file, base included, that takes RGB pixels 0-255 like every model the processor
serves, and a labels file beside it; ``IMAGEPIPE_MODEL=<file>.keras`` serves it.

With ``nested`` the class folders may sit in folders of their kinds (``photos/animal/cat/``,
``photos/animal/dog/``, ``photos/vehicle/car/``): the classes are the folders that hold images,
and a parents file beside the labels (`imagepipe.core.hierarchy`) gives each its folders
above, nearest first, so its results get parents and categories as ImageNet's do.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagepipe.core.catalog import LITE_MODELS, default_labels_file, describe_model, parents_file
from imagepipe.core.formats import SUFFIXES
from processor.decode import decode_image
from processor.errors import PermanentError
from processor.model import build_keras_model, preprocess_image

logger = logging.getLogger(__name__)

FEATURE_LAYER = "avg_pool"
IMAGE_SUFFIXES = frozenset(f".{suffix}" for suffix in SUFFIXES)
MAX_PIXELS = 100_000_000


@dataclass(frozen=True)
class TrainReport:
    """What training came to."""

    model_path: Path
    labels_path: Path
    labels: list[str]
    # The parents file, written when the class folders are nested; None otherwise.
    parents_path: Path | None
    images: int
    skipped: int
    train_accuracy: float
    validation_accuracy: float | None
    seconds: float


def find_images(data_dir: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (one per sub-folder, sorted) and every image file with its class index."""
    folders = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    labels = [folder.name for folder in folders]
    files = [
        (path, index)
        for index, folder in enumerate(folders)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if len(labels) < 2:
        raise ValueError(f"{data_dir} needs at least two sub-folders, one per class")
    empty = [label for i, label in enumerate(labels) if not any(c == i for _, c in files)]
    if empty:
        raise ValueError(f"no images in the class folders {', '.join(empty)}")
    return labels, files


def find_nested_images(data_dir: Path) -> tuple[list[str], list[tuple[Path, int]],
                                               dict[str, list[str]]]:
    """Classes (the folders that hold images, sorted by path), every image with its class
    index, and each class's parent folders, nearest first."""
    folders = sorted({path.parent for path in data_dir.rglob("*")
                      if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
                      and path.parent != data_dir and not _hidden(path.relative_to(data_dir))})
    labels = [folder.name for folder in folders]
    if len(labels) < 2:
        raise ValueError(f"{data_dir} needs at least two folders of images, one per class")
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ValueError(f"class folders must have distinct names: {', '.join(twice)}")
    inner = sorted(f.name for f in folders if any(o != f and f in o.parents for o in folders))
    if inner:
        raise ValueError(f"folders hold both images and classes: {', '.join(inner)}")
    files = [(path, index) for index, folder in enumerate(folders)
             for path in sorted(folder.iterdir())
             if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES]
    parents = {folder.name: [p.name for p in folder.relative_to(data_dir).parents if p.name]
               for folder in folders}
    return labels, files, {label: chain for label, chain in parents.items() if chain}


def _hidden(path: Path) -> bool:
    return any(part.startswith(".") for part in path.parts)


def train_classifier(
    data_dir: Path,
    output: Path,
    base: str = "efficientnet_lite0",
    epochs: int = 30,
    validation_split: float = 0.2,
    cache_dir: Path | None = None,
    seed: int = 0,
    nested: bool = False,
) -> TrainReport:
    """Train a softmax head on the frozen ``base`` over ``data_dir/<label>/*`` images (with
    ``nested``, ``data_dir/<kind>/.../<label>/*``, and write the parents file)."""
    import keras

    if base not in LITE_MODELS:
        raise ValueError(f"the base must be one of {', '.join(sorted(LITE_MODELS))}")
    if output.suffix != ".keras":
        raise ValueError(f"the output must end in .keras, not {output.name}")
    started = time.perf_counter()
    parents: dict[str, list[str]] = {}
    if nested:
        labels, files, parents = find_nested_images(data_dir)
    else:
        labels, files = find_images(data_dir)
    info = describe_model(base)
    pixels, classes, skipped = [], [], 0
    for path, class_index in files:
        try:
            decoded = decode_image(path.read_bytes(), MAX_PIXELS)
        except PermanentError as exc:
            logger.warning("skipping %s: %s", path, exc.message)
            skipped += 1
            continue
        pixels.append(preprocess_image(decoded.image, info.input_size))
        classes.append(class_index)
    images = np.stack(pixels)
    targets = np.asarray(classes)

    network = build_keras_model(info, cache_dir)
    extractor = keras.Model(network.input, network.get_layer(FEATURE_LAYER).output)
    extractor.trainable = False
    # Mirrored copies double the data for free; the features are all the head ever sees.
    features = extractor.predict(np.concatenate([images, images[:, :, ::-1]]), batch_size=32,
                                 verbose=0)
    targets = np.concatenate([targets, targets])
    order = np.random.default_rng(seed).permutation(len(images))
    held_out = int(len(order) * validation_split) if len(order) >= 10 else 0
    val_rows, train_rows = order[:held_out], order[held_out:]
    # An image and its mirror stay on the same side of the split.
    train_rows = np.concatenate([train_rows, train_rows + len(images)])
    val_rows = np.concatenate([val_rows, val_rows + len(images)])

    keras.utils.set_random_seed(seed)
    head = keras.Sequential([
        keras.Input(shape=features.shape[1:]),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(len(labels), activation="softmax", name="classes"),
    ])
    head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                 metrics=["accuracy"])
    head.fit(features[train_rows], targets[train_rows], epochs=epochs, batch_size=32, verbose=0)
    train_accuracy = float(head.evaluate(features[train_rows], targets[train_rows], verbose=0)[1])
    validation_accuracy = None
    if len(val_rows):
        validation_accuracy = float(
            head.evaluate(features[val_rows], targets[val_rows], verbose=0)[1]
        )

    model = keras.Model(network.input, head(extractor.output), name=output.stem)
    labels_path = default_labels_file(output)
    parents_path = parents_file(labels_path) if parents else None
    _save(model, labels, output, labels_path, parents)
    report = TrainReport(output, labels_path, labels, parents_path, len(images), skipped,
                         train_accuracy, validation_accuracy, time.perf_counter() - started)
    logger.info("trained %s: %s", output, report)
    return report


def _save(model: object, labels: list[str], output: Path, labels_path: Path,
          parents: dict[str, list[str]]) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed, so a processor never loads half a model.
    fd, tmp_name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.stem}.", suffix=".keras")
    os.close(fd)
    try:
        model.save(tmp_name)  # type: ignore[attr-defined]
        labels_path.write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
        # A parents file left from an earlier, nested training would give these labels
        # another model's tree: it goes, or is replaced.
        parents_path = parents_file(labels_path)
        if parents:
            parents_path.write_text(json.dumps({"parents": parents}, indent=1) + "\n",
                                    encoding="utf-8")
        else:
            parents_path.unlink(missing_ok=True)
        os.replace(tmp_name, output)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
