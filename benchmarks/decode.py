"""CPU time of the processor's decoding and preprocessing per image, the bound on a GPU instance.

Run: .venv/bin/python benchmarks/decode.py   (one core; prints medians over 30 runs)
"""

from __future__ import annotations

import io
import statistics
import time

import numpy as np
from PIL import Image
from skimage import data

from processor.decode import decode_image
from processor.model import preprocess_image

RUNS = 30


def photo(width: int, height: int) -> bytes:
    """A JPEG of the cat at this size, with sensor-like noise so it weighs what a photo does."""
    pixels = np.asarray(Image.fromarray(data.chelsea()).resize((width, height),
                                                              Image.Resampling.BICUBIC))
    noisy = pixels + np.random.default_rng(0).normal(0, 6, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def main() -> None:
    for width, height in ((4000, 3000), (1280, 960)):
        jpeg = photo(width, height)
        times = []
        for _ in range(RUNS):
            start = time.perf_counter()
            decoded = decode_image(jpeg, 64_000_000, min_side=256)
            preprocess_image(decoded.image, 224)
            times.append(time.perf_counter() - start)
        times.sort()
        median, p90 = statistics.median(times) * 1000, times[int(RUNS * 0.9)] * 1000
        print(f"{width}x{height} JPEG, {len(jpeg) / 1e6:.2f} MB: decode + preprocess median "
              f"{median:.1f} ms, p90 {p90:.1f} ms")


if __name__ == "__main__":
    main()
