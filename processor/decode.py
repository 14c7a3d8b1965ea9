"""Turn an object's bytes into an RGB image, within byte and pixel caps."""

from __future__ import annotations

import functools
import io
import logging
import struct
import warnings
import zlib
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from imagepipe.core.formats import PILLOW_NAMES
from processor.errors import PermanentError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodedImage:
    """An image ready for the model, and the facts the result reports about it."""

    image: Image.Image
    format: str
    width: int
    height: int


@functools.cache
def register_heif() -> bool:
    """Teach Pillow to open HEIC/HEIF (phone photos) when pillow-heif is installed."""
    try:
        import pillow_heif
    except ImportError:
        logger.warning("pillow-heif is not installed: HEIC images will fail as unsupported")
        return False
    pillow_heif.register_heif_opener()
    return True


def decode_image(data: bytes, max_pixels: int, min_side: int = 256, draft: bool = True
                 ) -> DecodedImage:
    """Decode `data` into an RGB image whose short side is at least `min_side` where possible.

    Width and height are those of the full image after EXIF orientation. JPEGs are
    decoded at reduced scale when the model needs fewer pixels, which is most of the
    cost of a phone photo; ``draft=False`` decodes every pixel (the benchmark compares them).
    """
    if not data:
        raise PermanentError("empty_object", "the object is empty")
    register_heif()
    try:
        with warnings.catch_warnings():
            # Our own pixel cap applies below; Pillow's warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise PermanentError("too_many_pixels", str(exc)) from None
    except UnidentifiedImageError:
        raise PermanentError("not_an_image", "the object is not an image Pillow recognises"
                             ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise PermanentError("corrupt_image", f"cannot read the image header: {exc}") from None

    fmt = image.format or "unknown"
    if fmt not in PILLOW_NAMES:
        raise PermanentError("unsupported_format", f"{fmt} images are not supported")
    if fmt == "PNG":
        check_png_chunks(data)
    width, height = image.size
    if width < 1 or height < 1:
        raise PermanentError("corrupt_image", f"image has size {width}x{height}")
    if width * height > max_pixels:
        raise PermanentError(
            "too_many_pixels", f"{width}x{height} is more than the {max_pixels} pixel cap"
        )
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block should not cost the image
        orientation = 1
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    try:
        if draft and fmt in ("JPEG", "MPO"):
            _draft(image, min_side)
        image.load()
        image = ImageOps.exif_transpose(image) or image
        rgb = _to_rgb(image)
    except PermanentError:
        raise
    except Image.DecompressionBombError as exc:
        raise PermanentError("too_many_pixels", str(exc)) from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError) as exc:
        raise PermanentError("corrupt_image", f"cannot decode the image: {exc}") from None
    return DecodedImage(image=rgb, format=fmt, width=width, height=height)


def check_png_chunks(data: bytes) -> None:
    """Verify every PNG chunk's CRC: Pillow does not check image data and decodes garbage."""
    view = memoryview(data)
    offset = 8  # the signature
    while offset < len(data):
        if offset + 12 > len(data):
            raise PermanentError("corrupt_image", "the PNG file is truncated")
        (length,) = struct.unpack_from(">I", data, offset)
        end = offset + 8 + length
        if end + 4 > len(data):
            raise PermanentError("corrupt_image", "the PNG file is truncated")
        (crc,) = struct.unpack_from(">I", data, end)
        if zlib.crc32(view[offset + 4:end]) != crc:
            chunk = bytes(view[offset + 4:offset + 8]).decode("latin-1")
            raise PermanentError("corrupt_image", f"PNG chunk {chunk!r} fails its CRC check")
        if view[offset + 4:offset + 8] == b"IEND":
            return
        offset = end + 4
    raise PermanentError("corrupt_image", "the PNG file has no IEND chunk")


def _draft(image: Image.Image, min_side: int) -> None:
    """Ask the JPEG decoder to scale down while decoding, keeping the short side >= min_side."""
    w, h = image.size
    short = min(w, h)
    if short <= min_side:
        return
    scale = min_side / short
    image.draft("RGB", (max(1, round(w * scale)), max(1, round(h * scale))))


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB on white for images with transparency; 16-bit and float scaled to 8 bits."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Pillow's convert("L") clips these instead of scaling; divide by 256 (16-bit range).
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    elif image.mode == "F":
        image = image.convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode != "RGB":
        return image.convert("RGB")
    return image
