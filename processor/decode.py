"""Turn an object's bytes into an RGB image, within byte and pixel caps.

JPEGs are decoded at reduced scale (libjpeg's `draft`). Partial decoding
(IMAGEPIPE_PARTIAL_DECODE) goes further: progressive JPEGs from their first scans alone
(`progressive_prefix` says how many bytes hold them, so the fetch can stop reading there),
WebP and PNG shrunk while decoding, by libvips where pyvips is installed (it measured faster
for those two; Pillow stays faster for JPEG).
"""

from __future__ import annotations

import functools
import io
import logging
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import Any

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


def decode_image(data: bytes, max_pixels: int, min_side: int = 256, draft: bool = True,
                 partial: bool = False) -> DecodedImage:
    """Decode `data` into an RGB image whose short side is at least `min_side` where possible.

    Width and height are those of the full image after EXIF orientation. JPEGs are
    decoded at reduced scale when the model needs fewer pixels, which is most of the
    cost of a phone photo; ``draft=False`` decodes every pixel (the benchmark compares them).
    With `partial` (and `draft`), a progressive JPEG is decoded from the scans the model needs
    (`data` may then be only the object's head, up to past those scans) and WebP and PNG
    are shrunk while decoding.
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
    png_exif = check_png_chunks(data) if fmt == "PNG" else None
    width, height = image.size
    if width < 1 or height < 1:
        raise PermanentError("corrupt_image", f"image has size {width}x{height}")
    if width * height > max_pixels:
        raise PermanentError(
            "too_many_pixels", f"{width}x{height} is more than the {max_pixels} pixel cap"
        )
    try:
        if fmt == "PNG" and partial and draft:
            exif = Image.Exif()
            if png_exif:
                exif.load(png_exif)
            orientation = exif.get(0x0112, 1)
        else:
            orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block should not cost the image
        orientation = 1
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    try:
        rgb = None
        if draft and partial:
            rgb = _decode_scaled(data, image, fmt, min_side, orientation)
        if rgb is None:
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


def check_png_chunks(data: bytes) -> bytes | None:
    """Verify every PNG chunk's CRC: Pillow does not check image data and decodes garbage.

    Returns the eXIf chunk's payload, if any (Pillow's getexif() decodes the pixels to find it).
    """
    view = memoryview(data)
    offset = 8  # the signature
    exif = None
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
            return exif
        if view[offset + 4:offset + 8] == b"eXIf":
            exif = bytes(view[offset + 8:end])
        offset = end + 4
    raise PermanentError("corrupt_image", "the PNG file has no IEND chunk")


def _draft(image: Image.Image, min_side: int) -> None:
    """Ask the JPEG decoder to scale down while decoding, keeping the short side >= min_side."""
    wanted = _draft_request(*image.size, min_side)
    if wanted is not None:
        image.draft("RGB", wanted)


def _draft_request(width: int, height: int, min_side: int) -> tuple[int, int] | None:
    """The size `_draft` asks Pillow for: the short side at min_side (None: no smaller)."""
    short = min(width, height)
    if short <= min_side:
        return None
    scale = min_side / short
    return max(1, round(width * scale)), max(1, round(height * scale))


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


# --- progressive JPEGs: the first scans alone ------------------------------------------------

_EOI = b"\xff\xd9"
# Markers without a length field: SOI, EOI, TEM and the restart markers.
_STANDALONE = frozenset({0xD8, 0xD9, 0x01, *range(0xD0, 0xD8)})
# Frame headers (SOF0-15 less DHT, JPG and DAC); SOF2 is the progressive Huffman one.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PROGRESSIVE_SOF = 0xC2


def _zigzag_limits() -> tuple[int, ...]:
    """For k = 1..8, the last zigzag index of the k x k low-frequency corner of a block."""
    order: list[tuple[int, int]] = []
    for diagonal in range(15):
        cells = [(r, diagonal - r) for r in range(8) if 0 <= diagonal - r < 8]
        order.extend(cells if diagonal % 2 else cells[::-1])
    return tuple(max(i for i, (r, c) in enumerate(order) if r < k and c < k)
                 for k in range(1, 9))


_ZIGZAG_LIMIT = _zigzag_limits()


@dataclass(frozen=True)
class Prefix:
    """How much of a progressive JPEG to read: `end` bytes, or more than read so far (None)."""

    end: int | None


def draft_reduction(width: int, height: int, min_side: int) -> int:
    """The factor (1, 2, 4 or 8) libjpeg scales a JPEG down by in `_draft`, as Pillow picks it."""
    wanted = _draft_request(width, height, min_side)
    if wanted is None:
        return 1
    fits = min(width // wanted[0], height // wanted[1])
    return next(s for s in (8, 4, 2, 1) if fits >= s)


def progressive_prefix(data: bytes, min_side: int) -> Prefix | None:
    """How many leading bytes of a progressive JPEG hold every scan the model needs.

    A scan is needed while some component still lacks the first pass of a coefficient that
    libjpeg uses at the draft scale: the DC alone at 1/8, the low k x k corner at k/8.
    Subsampled chroma is decoded at twice that scale, but its missing low AC terms are
    predicted by libjpeg's block smoothing from the neighbours' DC: waiting for them cost
    10% more CPU and 2x the bytes on the bench's photos for a mean pixel difference of 0.5
    instead of 1 (of 255) against the full decode. The bytes end where the marker
    after the last needed scan begins. None when the bytes are no progressive JPEG worth
    cutting (not JPEG, baseline, full scale, or a header this parser does not follow): those
    are read and decoded whole, so their errors are what they always were.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, n = 2, len(data)
    needed: dict[int, int] = {}  # component id -> last zigzag index the decoder will use
    have: dict[int, set[int]] = {}
    while True:
        marker_at = data.find(b"\xff", pos)
        if marker_at < 0 or marker_at + 1 >= n:
            return Prefix(None)
        pos = marker_at + 1
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            return Prefix(None)
        marker = data[pos]
        pos += 1
        if marker == 0xD9 or marker == 0x00:
            return None  # EOI before the scans, or stray bytes: not ours to cut
        if marker in _STANDALONE:
            continue
        if pos + 2 > n:
            return Prefix(None)
        (length,) = struct.unpack_from(">H", data, pos)
        body, pos = pos + 2, pos + length
        if length < 2:
            return None
        if pos > n:
            return Prefix(None)
        if marker in _SOF:
            if marker != _PROGRESSIVE_SOF or length < 8:
                return None
            height, width, count = struct.unpack_from(">HHB", data, body + 1)
            if width == 0 or height == 0 or length < 8 + 3 * count:
                return None
            k = 8 // draft_reduction(width, height, min_side)
            if k == 8:
                return None  # every coefficient is needed: nothing to save
            for i in range(count):
                ident = data[body + 6 + 3 * i]
                needed[ident] = _ZIGZAG_LIMIT[k - 1]
                have[ident] = set()
        elif marker == 0xDA:
            if not needed or length < 6:
                return None
            count = data[body]
            if length < 6 + 2 * count:
                return None
            idents = [data[body + 1 + 2 * i] for i in range(count)]
            start, end, approx = data[pos - 3], data[pos - 2], data[pos - 1]
            # The scan's entropy-coded data runs to the next marker that is not a stuffed
            # zero byte or a restart marker.
            scan_end = pos
            while True:
                scan_end = data.find(b"\xff", scan_end)
                if scan_end < 0 or scan_end + 1 >= n:
                    return Prefix(None)
                following = data[scan_end + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
                    scan_end += 1 if following == 0xFF else 2
                    continue
                break
            if approx >> 4 == 0 and start <= end:  # a first pass, not a refinement
                for ident in idents:
                    if ident in have:
                        have[ident].update(range(start, end + 1))
            pos = scan_end
            if all(set(range(needed[i] + 1)) <= have[i] for i in needed):
                return Prefix(scan_end)


def _decode_prefix(data: bytes, end: int, min_side: int) -> Image.Image:
    """The image from the first `end` bytes of a progressive JPEG, ended as a complete file."""
    image = Image.open(io.BytesIO(data[:end] + _EOI))
    _draft(image, min_side)
    image.load()
    return image


# --- WebP and PNG: libvips shrinks while decoding ---------------------------------------------

_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
# Where libvips measured faster than Pillow (benchmarks/bench.py, "decode per format").
VIPS_FORMATS = frozenset({"WEBP", "PNG"})


@functools.cache
def vips() -> Any | None:
    """pyvips when it and libvips are installed (the processor's `vips` extra), else None."""
    try:
        import pyvips
    except (ImportError, OSError):
        logger.info("pyvips is not installed: WebP and PNG are decoded by Pillow")
        return None
    pyvips.cache_set_max(0)  # every object is decoded once; caching would only hold memory
    # The fetch threads already decode side by side; libvips' own threads only add overhead.
    pyvips.concurrency_set(1)
    return pyvips


def _decode_scaled(data: bytes, image: Image.Image, fmt: str, min_side: int,
                   orientation: int) -> Image.Image | None:
    """The image decoded at the scale the model needs, or None to decode it the usual way."""
    if fmt == "JPEG" and image.info.get("progressive"):
        prefix = progressive_prefix(data, min_side)
        if prefix is not None and prefix.end is not None:
            small = _decode_prefix(data, prefix.end, min_side)
            return _to_rgb(ImageOps.exif_transpose(small) or small)
        return None
    if fmt in VIPS_FORMATS and (pyvips := vips()) is not None:
        return _vips_decode(pyvips, data, fmt, image.size, min_side, orientation)
    return None


def _vips_decode(pyvips: Any, data: bytes, fmt: str, size: tuple[int, int], min_side: int,
                 orientation: int) -> Image.Image | None:
    """Decode 8-bit WebP or PNG with libvips, shrunk by a whole factor to >= `min_side`.

    Other depths and anything libvips refuses go back to Pillow, so the colour handling and
    every failure's reason code stay Pillow's.
    """
    factor = max(1, min(size) // min_side)
    try:
        if fmt == "WEBP":
            # libwebp scales while decoding.
            vimage = pyvips.Image.webpload_buffer(data, scale=1 / factor)
        else:
            vimage = pyvips.Image.pngload_buffer(data, access="sequential")
            if vimage.format != "uchar" or vimage.bands not in (1, 2, 3, 4):
                return None
            if factor > 1:
                vimage = vimage.shrink(factor, factor)
        if vimage.format != "uchar":
            return None
        if vimage.hasalpha():
            # On white, as _to_rgb does.
            vimage = vimage.flatten(background=[255] * (vimage.bands - 1))
        if vimage.bands == 1:
            vimage = vimage.bandjoin([vimage, vimage])
        pixels = vimage.cast("uchar").write_to_memory()
    except pyvips.Error as exc:
        logger.info("libvips could not decode this %s, Pillow will: %s", fmt, exc)
        return None
    rgb = Image.frombuffer("RGB", (vimage.width, vimage.height), pixels, "raw", "RGB", 0, 1)
    if orientation in _TRANSPOSE:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    return rgb
