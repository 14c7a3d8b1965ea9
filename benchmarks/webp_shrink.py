"""Why the WebP shrink stays off: its top-1 agreement, and that of other two-step reductions.

`python -m benchmarks.webp_shrink [COUNT] [SEED]` builds COUNT varied WebPs (the bench's
agreement recipe, WebP only) and, on those large enough for libvips to shrink, compares the
model's top-1 label after Pillow's whole decode (what the processor serves) with:

- ``libvips``: the processor's path with IMAGEPIPE_VIPS_DECODE (libwebp shrinks while decoding,
  then Pillow's centre crop and bicubic resize);
- ``libvips, exact crop``: the same shrunk image, cropped at the sub-pixel box the whole
  image's crop maps to (rules out the crop's rounding);
- ``Pillow reduce``: Pillow's own box `reduce` by the same factor, then its crop and resize;
- ``Pillow reducing_gap=3``: Pillow's two-step `resize` on the whole decode;
- ``libvips, Lanczos`` / ``Hamming``: a sharper or a softer second step.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.bench import (
    DECODES,
    DEFAULT_CACHE_DIR,
    ENGINE_LITERT,
    MAX_PIXELS,
    MODEL,
    agreement_images,
    model_cache_dir,
)
from processor.decode import decode_image, vips, vips_factor
from processor.model import centre_crop_box, load_classifier, preprocess_image
from processor.worker import min_decode_side


def _resized(image: Image.Image, size: int, resample: Image.Resampling = Image.Resampling.BICUBIC,
             **options: Any) -> np.ndarray:
    """The model's input as preprocess_image makes it, with another filter or resize option."""
    image = image.crop(centre_crop_box(*image.size, size))
    return np.asarray(image.resize((size, size), resample, **options), dtype=np.float32)


def main(count: int = 300, seed: int = 11) -> None:
    if vips() is None:
        sys.exit("pyvips is not installed")
    classifier = load_classifier(MODEL, cache_dir=model_cache_dir(DEFAULT_CACHE_DIR),
                                 engine=ENGINE_LITERT)
    size = classifier.input_size
    min_side = min_decode_side(size)

    def top1(pixels: np.ndarray) -> int:
        return int(classifier.predict(pixels[None])[0].argmax())

    def exact_crop(whole: Image.Image, small: Image.Image) -> np.ndarray:
        # The whole image's crop, mapped onto the shrunk one at sub-pixel precision.
        scales = (small.width / whole.width, small.height / whole.height) * 2
        box = tuple(c * s for c, s in zip(centre_crop_box(*whole.size, size), scales, strict=True))
        return np.asarray(small.resize((size, size), Image.Resampling.BICUBIC, box=box),
                          dtype=np.float32)

    ways: dict[str, Callable[[Image.Image, Image.Image, int], np.ndarray]] = {
        "libvips": lambda whole, small, f: preprocess_image(small, size),
        "libvips, exact crop": lambda whole, small, f: exact_crop(whole, small),
        "Pillow reduce": lambda whole, small, f: preprocess_image(whole.reduce(f), size),
        "Pillow reducing_gap=3": lambda whole, small, f: _resized(
            whole, size, reducing_gap=3.0),
        "libvips, Lanczos": lambda whole, small, f: _resized(
            small, size, Image.Resampling.LANCZOS),
        "libvips, Hamming": lambda whole, small, f: _resized(
            small, size, Image.Resampling.HAMMING),
    }
    agreed: dict[str, list[bool]] = {name: [] for name in ways}
    factors: dict[int, int] = {}
    for _, body in agreement_images(count, seed, ("webp",)):
        # What the processor decodes without IMAGEPIPE_VIPS_DECODE: every pixel, by Pillow.
        whole = decode_image(body, MAX_PIXELS, min_side=min_side, **DECODES["draft"]).image
        factor = vips_factor("WEBP", whole.size, min_side)
        factors[factor] = factors.get(factor, 0) + 1
        if factor == 1:
            continue  # Pillow decodes it, as without libvips
        # What the processor decodes with IMAGEPIPE_VIPS_DECODE.
        small = decode_image(body, MAX_PIXELS, min_side=min_side, **DECODES["vips"]).image
        assert small.width < whole.width, "shrunk by libvips"
        before = top1(preprocess_image(whole, size))
        for name, way in ways.items():
            agreed[name].append(top1(way(whole, small, factor)) == before)
    print(f"{count} WebPs, by libvips' shrink factor: {dict(sorted(factors.items()))}")
    for name, same in agreed.items():
        print(f"  {name:<24} top-1 as Pillow's whole decode on {sum(same)} of {len(same)} "
              f"shrunk ({np.mean(same):.1%})")


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:3]))
