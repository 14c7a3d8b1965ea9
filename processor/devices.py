"""What the processor computes on: TensorFlow's devices, and mixed float16 when there is a GPU."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

MIXED_POLICY = "mixed_float16"


def configure_devices() -> list[str]:
    """Log the devices TensorFlow found; on a GPU, grow its memory and use mixed float16.

    Call before the model is built: Keras applies a dtype policy to layers created after it is
    set, and memory growth can only be set before a GPU is first used. Returns the GPUs' names.
    """
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    cpus = tf.config.list_physical_devices("CPU")
    logger.info("TensorFlow %s sees %s", tf.__version__,
                ", ".join(device.name for device in cpus + gpus))
    if not gpus:
        logger.info("no GPU: the model runs in float32 on the CPU")
        return []
    for gpu in gpus:
        # Several processor daemons share one GPU; by default the first would take all its memory.
        tf.config.experimental.set_memory_growth(gpu, True)
        details = tf.config.experimental.get_device_details(gpu)
        logger.info("GPU %s: %s, compute capability %s", gpu.name,
                    details.get("device_name", "?"), details.get("compute_capability", "?"))
    # float16 maths on the tensor cores, float32 variables: the weights load unchanged.
    keras.mixed_precision.set_global_policy(MIXED_POLICY)
    logger.info("Keras dtype policy %s", MIXED_POLICY)
    return [gpu.name for gpu in gpus]
