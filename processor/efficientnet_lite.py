"""EfficientNet-Lite in Keras 3, with a loader for PyTorch (lukemelas-style) weight names."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import keras
import numpy as np

logger = logging.getLogger(__name__)

# TF EfficientNet's batch-norm epsilon; PyTorch's default 1e-5 would shift every activation.
BN_EPSILON = 1e-3
NUM_CLASSES = 1000
STEM_FILTERS = 32
HEAD_FILTERS = 1280
# TF EfficientNet's input normalisation, (pixel - 127) / 128, done inside the graph.
PIXEL_MEAN = 127.0
PIXEL_SCALE = 128.0


@dataclass(frozen=True)
class StageArgs:
    """One stage of MBConv blocks in the EfficientNet-B0 layout."""

    kernel_size: int
    stride: int
    expand_ratio: int
    output_filters: int
    repeats: int


# The B0 layout; Lite drops squeeze-and-excitation and uses ReLU6. Lite also keeps the stem at 32
# and the head at 1280 filters and the first and last stage at one repeat for every variant.
BASE_STAGES: tuple[StageArgs, ...] = (
    StageArgs(3, 1, 1, 16, 1),
    StageArgs(3, 2, 6, 24, 2),
    StageArgs(5, 2, 6, 40, 2),
    StageArgs(3, 2, 6, 80, 3),
    StageArgs(5, 1, 6, 112, 3),
    StageArgs(5, 2, 6, 192, 4),
    StageArgs(3, 1, 6, 320, 1),
)


@dataclass(frozen=True)
class VariantArgs:
    """Scaling of one EfficientNet-Lite variant."""

    width: float
    depth: float
    resolution: int


VARIANTS: dict[str, VariantArgs] = {
    "lite0": VariantArgs(1.0, 1.0, 224),
    "lite1": VariantArgs(1.0, 1.1, 240),
    "lite2": VariantArgs(1.1, 1.2, 260),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` and round to a multiple of ``divisor`` (as in TF)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    # Never round down by more than 10%.
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def scaled_stages(variant: str) -> list[StageArgs]:
    """Return the stage table of ``variant`` with widths and repeats scaled the Lite way."""
    args = _variant_args(variant)
    stages = []
    for index, stage in enumerate(BASE_STAGES):
        # Lite keeps the first and last stage at one repeat so they stay cheap on mobile.
        fixed = index in (0, len(BASE_STAGES) - 1)
        repeats = stage.repeats if fixed else math.ceil(args.depth * stage.repeats)
        stages.append(
            StageArgs(
                kernel_size=stage.kernel_size,
                stride=stage.stride,
                expand_ratio=stage.expand_ratio,
                output_filters=round_filters(stage.output_filters, args.width),
                repeats=repeats,
            )
        )
    return stages


def input_size(variant: str) -> int:
    """Return the square input resolution of ``variant``."""
    return _variant_args(variant).resolution


def _variant_args(variant: str) -> VariantArgs:
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(
            f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(VARIANTS)}"
        ) from None


def _conv_bn(
    x: keras.KerasTensor, filters: int, kernel_size: int, stride: int, name: str, relu6: bool
) -> keras.KerasTensor:
    # Keras 'same' pads like TF (extra pixel at the bottom/right), which the weights expect.
    x = keras.layers.Conv2D(
        filters, kernel_size, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    if relu6:
        x = keras.layers.ReLU(max_value=6.0, name=f"{name}_relu6")(x)
    return x


def _mbconv(x: keras.KerasTensor, stage: StageArgs, stride: int, index: int) -> keras.KerasTensor:
    prefix = f"block{index}"
    inputs = x
    in_filters = x.shape[-1]
    if stage.expand_ratio != 1:
        x = _conv_bn(x, in_filters * stage.expand_ratio, 1, 1, f"{prefix}_expand", True)
    x = keras.layers.DepthwiseConv2D(
        stage.kernel_size,
        strides=stride,
        padding="same",
        use_bias=False,
        name=f"{prefix}_dwconv",
    )(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}_dw_bn")(x)
    x = keras.layers.ReLU(max_value=6.0, name=f"{prefix}_dw_relu6")(x)
    x = _conv_bn(x, stage.output_filters, 1, 1, f"{prefix}_project", False)
    if stride == 1 and in_filters == stage.output_filters:
        x = keras.layers.Add(name=f"{prefix}_add")([x, inputs])
    return x


def build_efficientnet_lite(variant: str = "lite0") -> keras.Model:
    """Build an EfficientNet-Lite classifier: RGB pixels 0-255 in, softmax probabilities out."""
    size = input_size(variant)
    inputs = keras.Input(shape=(size, size, 3), dtype="float32", name="image")
    x = keras.layers.Rescaling(
        1 / PIXEL_SCALE, offset=-PIXEL_MEAN / PIXEL_SCALE, name="normalise"
    )(inputs)
    x = _conv_bn(x, STEM_FILTERS, 3, 2, "stem", True)
    index = 0
    for stage in scaled_stages(variant):
        for repeat in range(stage.repeats):
            # Only the first block of a stage downsamples.
            x = _mbconv(x, stage, stage.stride if repeat == 0 else 1, index)
            index += 1
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "head", True)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
    # float32 even under a mixed-precision policy, so scores keep their resolution.
    outputs = keras.layers.Softmax(name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"efficientnet_{variant}")


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
    # torch (O, I, kh, kw) -> Keras (kh, kw, I, O)
    return weight.transpose(2, 3, 1, 0)


def _depthwise_kernel(weight: np.ndarray) -> np.ndarray:
    # torch (C, 1, kh, kw) -> Keras (kh, kw, C, 1)
    return weight.transpose(2, 3, 0, 1)


def _dense_kernel(weight: np.ndarray) -> np.ndarray:
    # torch (out, in) -> Keras (in, out)
    return weight.T


_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")

_Converter = Callable[[np.ndarray], np.ndarray]

# Keras layer name pattern -> (torch module name template, parameter names, converters).
_LAYER_MAP: tuple[tuple[str, str, tuple[str, ...], tuple[_Converter, ...]], ...] = (
    (r"stem_conv", "_conv_stem", ("weight",), (_conv_kernel,)),
    (r"stem_bn", "_bn0", _BN_PARAMS, ()),
    (r"block(\d+)_expand_conv", "_blocks.{0}._expand_conv", ("weight",), (_conv_kernel,)),
    (r"block(\d+)_expand_bn", "_blocks.{0}._bn0", _BN_PARAMS, ()),
    (r"block(\d+)_dwconv", "_blocks.{0}._depthwise_conv", ("weight",), (_depthwise_kernel,)),
    (r"block(\d+)_dw_bn", "_blocks.{0}._bn1", _BN_PARAMS, ()),
    (r"block(\d+)_project_conv", "_blocks.{0}._project_conv", ("weight",), (_conv_kernel,)),
    (r"block(\d+)_project_bn", "_blocks.{0}._bn2", _BN_PARAMS, ()),
    (r"head_conv", "_conv_head", ("weight",), (_conv_kernel,)),
    (r"head_bn", "_bn1", _BN_PARAMS, ()),
    (r"logits", "_fc", ("weight", "bias"), (_dense_kernel,)),
)


def _torch_params(layer_name: str) -> list[tuple[str, _Converter]]:
    for pattern, template, params, converters in _LAYER_MAP:
        match = re.fullmatch(pattern, layer_name)
        if match:
            module = template.format(*match.groups())
            # Parameters without a converter (biases, BN vectors) are copied unchanged.
            padded = converters + (np.asarray,) * (len(params) - len(converters))
            return [(f"{module}.{p}", c) for p, c in zip(params, padded, strict=True)]
    raise ValueError(f"no torch mapping for Keras layer {layer_name!r}")


def load_torch_weights(model: keras.Model, state_dict: Mapping[str, np.ndarray]) -> None:
    """Copy a PyTorch EfficientNet-Lite state dict into ``model``; every tensor must be used."""
    consumed: set[str] = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        values = []
        for torch_name, convert in _torch_params(layer.name):
            if torch_name not in state_dict:
                raise ValueError(f"state dict lacks {torch_name!r} for layer {layer.name!r}")
            if torch_name in consumed:
                raise ValueError(f"state dict entry {torch_name!r} mapped twice")
            consumed.add(torch_name)
            values.append(np.asarray(convert(state_dict[torch_name]), dtype="float32"))
        # set_weights checks count and shape, so a wrong transpose fails loudly here.
        layer.set_weights(values)
    # BN step counters are training bookkeeping with no Keras counterpart.
    unused = sorted(
        name
        for name in state_dict
        if name not in consumed and not name.endswith(".num_batches_tracked")
    )
    if unused:
        raise ValueError(f"{len(unused)} state dict entries were not used: {unused[:10]}")
    logger.debug("loaded %d torch tensors into %s", len(consumed), model.name)
