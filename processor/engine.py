"""Inference engines: the Keras model through TensorFlow, or its LiteRT export with XNNPACK.

The Keras model is the source of truth. On a CPU it is exported once to a ``.tflite`` file that
LiteRT runs with its XNNPACK delegate, about twice as fast as TensorFlow on these depthwise,
memory-bound networks and without importing TensorFlow at all once the file is cached. On a GPU
TensorFlow runs the Keras model (under whatever precision policy was set before loading).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from imagepipe.core.catalog import ENGINE_KERAS, ENGINE_LITERT

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

# Measured with `make bench` on 2 cores: one image per invoke beats batches of 4-16 under
# XNNPACK (static shapes let it plan once), so the export has a fixed batch of one.
LITERT_BATCH = 1


class Engine(Protocol):
    """Runs a classifier network on a batch of RGB pixels 0-255."""

    name: str

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


class KerasEngine:
    """The Keras model through a traced tf.function (TensorFlow picks the GPU when there is one)."""

    name = ENGINE_KERAS

    def __init__(self, model: keras.Model, input_size: int) -> None:
        import tensorflow as tf

        self.model = model
        # One trace serves every batch size thanks to the fixed signature; model.predict() would
        # build a data pipeline per call, which costs more than the network on small batches.
        self._forward = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec([None, input_size, input_size, 3], tf.float32)],
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a float32 (N, size, size, 3) batch."""
        return np.asarray(self._forward(batch), dtype=np.float32)


class LiteRTEngine:
    """A .tflite export run by LiteRT's interpreter with the XNNPACK delegate (its default)."""

    name = ENGINE_LITERT

    def __init__(self, path: Path, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = path
        self.threads = threads or default_threads()
        self._interpreter = Interpreter(model_path=str(path), num_threads=self.threads)
        self._interpreter.allocate_tensors()
        [self._input] = self._interpreter.get_input_details()
        [self._output] = self._interpreter.get_output_details()
        self.input_shape = tuple(int(n) for n in self._input["shape"])
        # The interpreter is not thread-safe; invoke() releases the GIL, so others still run.
        self._lock = threading.Lock()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a float32 (N, size, size, 3) batch, one invoke per image."""
        rows = []
        step = self.input_shape[0]
        with self._lock:
            for start in range(0, len(batch), step):
                self._interpreter.set_tensor(self._input["index"], batch[start : start + step])
                self._interpreter.invoke()
                rows.append(self._interpreter.get_tensor(self._output["index"]).copy())
        return np.concatenate(rows).astype(np.float32, copy=False)


def default_threads() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def gpu_available() -> bool:
    """Whether TensorFlow sees a GPU; imports TensorFlow only where an NVIDIA device exists."""
    if not any(Path("/dev").glob("nvidia[0-9]*")):
        return False
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def export_litert(model: keras.Model, path: Path, input_size: int,
                  batch: int = LITERT_BATCH,
                  calibration: Iterable[np.ndarray] | None = None) -> None:
    """Export ``model`` to a .tflite file with a fixed (batch, size, size, 3) float input.

    With ``calibration`` (preprocessed images) weights and activations are quantised to int8.
    Only the benchmark uses that: int8 agreed with float32 on 79% of 300 varied images (the
    bar is 99%) and was barely faster on this CPU, so it is not served.
    """
    import tensorflow as tf

    forward = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([batch, input_size, input_size, 3], tf.float32)],
    )
    # Without a trackable object the converter freezes the variables into constants directly:
    # 5 s here against 25-50 s through a SavedModel (Keras's own export), for the same graph.
    converter = tf.lite.TFLiteConverter.from_concrete_functions([forward.get_concrete_function()])
    if calibration is not None:
        images = list(calibration)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[np.newaxis]] for image in images)
    flatbuffer = converter.convert()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a concurrent reader never sees half a file.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(flatbuffer)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
