"""Tests for the torch pickle reader, the EfficientNet-Lite port and the classifier."""

from __future__ import annotations

import collections
import os
import pickle
import struct
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagepipe.core.catalog import lite_weights_path
from imagepipe.core.records import Label
from processor import model as model_module
from processor import torch_pickle
from processor.model import imagenet_labels, load_classifier, preprocess_image

WEIGHTS_FILE_NAME = "efficientnet-lite0-57934424.pth"
CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat"}


class _Storage:
    """A storage the fake pickler turns into a persistent id, as torch.save does."""

    def __init__(self, storage_type: type, key: str, data: np.ndarray) -> None:
        self.storage_type = storage_type
        self.key = key
        self.data = data


class _Tensor:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self) -> tuple:
        # Looked up at pickling time: the fake_torch fixture provides the module.
        return (sys.modules["torch._utils"]._rebuild_tensor_v2, self.args)


class _Hostile:
    """Pickles as a call to os.remove: the reader must refuse it before it can run."""

    def __init__(self, victim: Path) -> None:
        self.victim = victim

    def __reduce__(self) -> tuple:
        return (os.remove, (str(self.victim),))


class _LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> tuple | None:
        if isinstance(obj, _Storage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.data.size, None)
        return None


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Register stand-in torch modules so pickle can name torch globals without torch."""
    torch_mod = types.ModuleType("torch")
    utils_mod = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args: object) -> None:
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch_mod._utils = utils_mod
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch_mod, name, type(name, (), {"__module__": "torch"}))
    monkeypatch.setitem(sys.modules, "torch", torch_mod)
    monkeypatch.setitem(sys.modules, "torch._utils", utils_mod)
    return types.SimpleNamespace(
        FloatStorage=torch_mod.FloatStorage, LongStorage=torch_mod.LongStorage
    )


def _write_legacy(path: Path, state: dict, storages: list[_Storage]) -> None:
    """Write ``state`` in torch.save's legacy layout: header pickles, state, keys, raw data."""
    with path.open("wb") as file:
        pickle.dump(torch_pickle.LEGACY_MAGIC_NUMBER, file, protocol=2)
        pickle.dump(torch_pickle.LEGACY_PROTOCOL_VERSION, file, protocol=2)
        sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {}}
        pickle.dump(sys_info, file, protocol=2)
        _LegacyPickler(file, protocol=2).dump(collections.OrderedDict(state))
        pickle.dump([s.key for s in storages], file, protocol=2)
        for storage in storages:
            file.write(struct.pack("<q", storage.data.size))
            file.write(storage.data.tobytes())


def _sample_file(tmp_path: Path, fake_torch: types.SimpleNamespace) -> Path:
    floats = _Storage(fake_torch.FloatStorage, "1", np.arange(30, dtype="<f4"))
    counter = _Storage(fake_torch.LongStorage, "2", np.array([7], dtype="<i8"))
    state = {
        # A permuted view with an offset, like the TF-ported kernels in the real file.
        "conv.weight": _Tensor(floats, 3, (4, 3, 2), (1, 4, 12)),
        "bn.bias": _Tensor(floats, 0, (5,), (2,)),
        "bn.num_batches_tracked": _Tensor(counter, 0, (), ()),
    }
    path = tmp_path / "sample.pth"
    _write_legacy(path, state, [floats, counter])
    return path


def test_reads_non_contiguous_tensors(tmp_path: Path, fake_torch: types.SimpleNamespace) -> None:
    tensors = torch_pickle.read_state_dict(_sample_file(tmp_path, fake_torch))

    assert list(tensors) == ["conv.weight", "bn.bias", "bn.num_batches_tracked"]
    weight = tensors["conv.weight"]
    expected = np.empty((4, 3, 2), dtype=np.float32)
    for i, j, k in np.ndindex(4, 3, 2):
        expected[i, j, k] = 3 + i * 1 + j * 4 + k * 12
    assert weight.dtype == np.float32
    np.testing.assert_array_equal(weight, expected)
    assert weight.flags.c_contiguous and weight.flags.owndata
    np.testing.assert_array_equal(tensors["bn.bias"], [0, 2, 4, 6, 8])
    counter = tensors["bn.num_batches_tracked"]
    assert counter.dtype == np.int64 and counter.shape == () and counter == 7


def test_refuses_forbidden_global(tmp_path: Path, fake_torch: types.SimpleNamespace) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("still here")
    path = tmp_path / "hostile.pth"
    _write_legacy(path, {"evil": _Hostile(victim)}, [])

    with pytest.raises(ValueError, match="forbidden global"):
        torch_pickle.read_state_dict(path)
    assert victim.exists()


def test_refuses_view_outside_storage(tmp_path: Path, fake_torch: types.SimpleNamespace) -> None:
    floats = _Storage(fake_torch.FloatStorage, "1", np.arange(6, dtype="<f4"))
    path = tmp_path / "overflow.pth"
    _write_legacy(path, {"w": _Tensor(floats, 2, (3, 2), (2, 1))}, [floats])

    with pytest.raises(ValueError, match="exceeds storage"):
        torch_pickle.read_state_dict(path)


def test_refuses_truncated_file(tmp_path: Path, fake_torch: types.SimpleNamespace) -> None:
    path = _sample_file(tmp_path, fake_torch)
    path.write_bytes(path.read_bytes()[:-5])

    with pytest.raises(ValueError, match="truncated"):
        torch_pickle.read_state_dict(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"PK\x03\x04rest of a zip archive", "zip-format"),
        (b"definitely not a pickle", "cannot read"),
        (pickle.dumps(12345, protocol=2), "bad magic number"),
    ],
)
def test_refuses_other_formats(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "other.pth"
    path.write_bytes(content)

    with pytest.raises(ValueError, match=message):
        torch_pickle.read_state_dict(path)


def test_reads_real_weights_file() -> None:
    tensors = torch_pickle.read_state_dict(lite_weights_path("efficientnet_lite0"))

    assert len(tensors) == 296
    stem = tensors["_conv_stem.weight"]
    assert stem.shape == (32, 3, 3, 3) and stem.dtype == np.float32
    assert stem.flags.c_contiguous
    assert tensors["_fc.weight"].shape == (1000, 1280)
    assert tensors["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)


@pytest.mark.parametrize("size", [(1, 1), (3000, 20), (20, 3000), (451, 300)])
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_preprocess_shape_and_range(size: tuple[int, int], mode: str) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)

    out = preprocess_image(image, 224)

    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255


def test_preprocess_keeps_pixel_values() -> None:
    out = preprocess_image(Image.new("RGB", (300, 200), (127, 255, 0)), 224)

    np.testing.assert_allclose(out[100, 100], [127.0, 255.0, 0.0])


@pytest.mark.slow
def test_network_normalises_like_tf() -> None:
    import keras

    from processor.efficientnet_lite import build_efficientnet_lite

    network = build_efficientnet_lite("lite0")
    normalise = keras.Model(network.input, network.get_layer("normalise").output)

    out = normalise(np.full((1, 224, 224, 3), [127.0, 255.0, 0.0], dtype=np.float32))

    np.testing.assert_allclose(np.asarray(out)[0, 5, 5], [0.0, 1.0, -127 / 128], rtol=1e-6)


def test_labels_use_first_synonym() -> None:
    labels = imagenet_labels()

    assert len(labels) == 1000
    assert [labels[i] for i in (281, 282, 285, 967, 657, 744)] == [
        "tabby",
        "tiger cat",
        "Egyptian cat",
        "espresso",
        "missile",
        "projectile",
    ]


def test_unknown_model_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        load_classifier("resnet50")
    with pytest.raises(ValueError, match="engine"):
        load_classifier("efficientnet_lite0", engine="tpu")


def test_importing_model_module_does_not_import_tensorflow() -> None:
    code = "import sys, processor.model; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def classifier(cache_dir: Path) -> model_module.Classifier:
    return load_classifier(cache_dir=cache_dir)


def _photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("photo", "expected"),
    [
        ("chelsea", CAT_LABELS),
        ("coffee", {"espresso"}),
        ("rocket", {"missile", "projectile"}),
    ],
)
def test_classifies_photos(
    classifier: model_module.Classifier, photo: str, expected: set[str]
) -> None:
    [predictions] = classifier.classify([_photo(photo)], top_k=3)

    assert predictions[0].label in expected, predictions
    assert len(predictions) == 3
    assert all(isinstance(p, Label) for p in predictions)
    scores = [p.score for p in predictions]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.slow
def test_classifier_metadata_and_probabilities(classifier: model_module.Classifier) -> None:
    assert classifier.name == "efficientnet_lite0"
    assert classifier.version == f"{model_module.CONVERSION_VERSION}-57934424"
    assert classifier.input_size == 224
    batch = np.stack([classifier.preprocess(_photo(n)) for n in ("chelsea", "coffee")])

    probabilities = classifier.predict(batch)

    assert probabilities.shape == (2, 1000) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="batch shape"):
        classifier.predict(batch[:, :100])


@pytest.mark.slow
def test_second_load_uses_cache(
    classifier: model_module.Classifier, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stem = f"efficientnet_lite0-{classifier.version}"
    assert classifier.engine.name == "litert"
    assert sorted(p.name for p in cache_dir.iterdir()) == [f"{stem}.tflite", f"{stem}.weights.npz"]

    def _no_conversion(path: object) -> None:
        raise AssertionError("the pth file was read although the cache exists")

    monkeypatch.setattr(torch_pickle, "read_state_dict", _no_conversion)
    again = load_classifier(cache_dir=cache_dir)
    through_keras = load_classifier(cache_dir=cache_dir, engine="keras")

    batch = np.stack([classifier.preprocess(_photo(n)) for n in ("chelsea", "rocket")])
    np.testing.assert_array_equal(again.predict(batch), classifier.predict(batch))
    np.testing.assert_allclose(through_keras.predict(batch), classifier.predict(batch), atol=1e-5)
    assert through_keras.engine.name == "keras"
    assert sorted(p.name for p in cache_dir.iterdir()) == [f"{stem}.tflite", f"{stem}.weights.npz"]


@pytest.mark.slow
def test_unreadable_cache_is_reconverted(
    classifier: model_module.Classifier, tmp_path: Path
) -> None:
    cache_file = tmp_path / f"efficientnet_lite0-{classifier.version}.weights.npz"
    cache_file.write_bytes(b"half a file")
    (tmp_path / f"efficientnet_lite0-{classifier.version}.tflite").write_bytes(b"not a model")

    reloaded = load_classifier(cache_dir=tmp_path)

    batch = classifier.preprocess(_photo("coffee"))[np.newaxis]
    np.testing.assert_array_equal(reloaded.predict(batch), classifier.predict(batch))
    with np.load(cache_file) as data:
        assert len(data.files) > 0


@pytest.mark.slow
def test_weight_mapping_rejects_unused_and_missing_entries() -> None:
    from processor.efficientnet_lite import build_efficientnet_lite, load_torch_weights

    keras_model = build_efficientnet_lite("lite0")
    tensors = torch_pickle.read_state_dict(lite_weights_path("efficientnet_lite0"))

    with pytest.raises(ValueError, match="not used"):
        load_torch_weights(keras_model, {**tensors, "_extra.weight": np.zeros(3)})
    del tensors["_blocks.7._bn1.running_var"]
    with pytest.raises(ValueError, match=r"_blocks\.7\._bn1\.running_var"):
        load_torch_weights(keras_model, tensors)
