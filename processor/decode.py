"""Turn an object's bytes into an RGB image, within byte and pixel caps.

JPEGs are decoded at reduced scale (libjpeg's `draft`). Partial decoding
(IMAGEPIPE_PARTIAL_DECODE) goes further for progressive JPEGs: at 1/8 scale from their DC scans
alone, pixel-identical (`progressive_prefix` says how many bytes hold them, so the fetch can
stop reading there); IMAGEPIPE_PARTIAL_DECODE_DC leaves out 4:2:0 chroma's AC scans too (close,
not identical: off by default). IMAGEPIPE_VIPS_DECODE decodes PNG (pixel-identical) and shrinks
large WebPs while decoding, by libvips (faster for those two; off by default: the shrink changes
the model's answer on more of the bench's varied WebPs than the 1% the guard allows).
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
                 partial: bool = False, vips_formats: bool = False,
                 dc_only: bool = False) -> DecodedImage:
    """Decode `data` into an RGB image whose short side is at least `min_side` where possible.

    Width and height are those of the full image after EXIF orientation. JPEGs are
    decoded at reduced scale when the model needs fewer pixels, which is most of the
    cost of a phone photo; ``draft=False`` decodes every pixel (the benchmark compares them).
    With `partial` (and `draft`), a progressive JPEG large enough for the 1/8 scale is decoded
    from its DC scans alone (`data` may then be only the object's head, up to past those scans),
    pixel-identical to the whole file's decode (with `dc_only` from the DC scans of every
    component, 4:2:0 chroma too: close, not identical); with `vips_formats` (and `draft`) WebP
    and PNG are shrunk while decoding by libvips.
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
        if fmt == "PNG" and vips_formats and draft:
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
        if draft and (partial or vips_formats):
            rgb = _decode_scaled(data, image, fmt, min_side, orientation, partial, vips_formats,
                                 dc_only)
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


# --- progressive JPEGs: the DC scans alone ---------------------------------------------------

_EOI = b"\xff\xd9"
# Markers without a length field: SOI, EOI, TEM and the restart markers.
_STANDALONE = frozenset({0xD8, 0xD9, 0x01, *range(0xD0, 0xD8)})
# Frame headers (SOF0-15 less DHT, JPG and DAC); SOF2 is the progressive Huffman one.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PROGRESSIVE_SOF = 0xC2
_DQT = 0xDB
# Zigzag index of the coefficient at row 2, column 0 of a block: libjpeg's block smoothing
# needs its quantizer, the 1x1 and 2x2 IDCTs of the 1/8 scale never read it.
_ZIGZAG_Q20 = 3
# The last zigzag index of the k x k low-frequency corner for k = 1 and 2 (the IDCT sizes at 1/8).
_CORNER = {1: 0, 2: 4}


@dataclass(frozen=True)
class Prefix:
    """How much of a progressive JPEG to read: `end` bytes, or more than read so far (None).

    `keep` lists the byte ranges (below `end`) that make the JPEG decoded at 1/8: the header
    and every scan that carries a coefficient the 1/8-scale IDCT reads.
    """

    end: int | None
    keep: tuple[tuple[int, int], ...] = ()


def draft_reduction(width: int, height: int, min_side: int) -> int:
    """The factor (1, 2, 4 or 8) libjpeg scales a JPEG down by in `_draft`, as Pillow picks it."""
    wanted = _draft_request(width, height, min_side)
    if wanted is None:
        return 1
    fits = min(width // wanted[0], height // wanted[1])
    return next(s for s in (8, 4, 2, 1) if fits >= s)


def _idct_size(h: int, v: int, max_h: int, max_v: int) -> int:
    """The IDCT size libjpeg(-turbo) gives a component at 1/8 scale (jpeg_core_output_dimensions):
    subsampled chroma is scaled up by a larger IDCT rather than by upsampling."""
    size = 1
    while size < 8 and max_h % (h * size * 2) == 0 and max_v % (v * size * 2) == 0:
        size *= 2
    return size


def progressive_prefix(data: bytes, min_side: int, dc_only: bool = False) -> Prefix | None:
    """Which bytes of a progressive JPEG the 1/8-scale decode needs, and up to where.

    At 1/8 scale libjpeg's 1x1 IDCT reads only a block's DC coefficient (2x2 for chroma
    subsampled by 2 both ways), so the scans carrying other coefficients can be left out and
    the decode is pixel-identical to the whole file's: every needed coefficient to its last bit
    (the DC refinement scan comes late in libjpeg's own progression), and every earlier pass
    of whatever a kept scan also carries, so each kept refinement follows its first pass.
    The bytes end where the marker after the last needed scan begins. None when the bytes are
    no progressive JPEG worth cutting (not JPEG, baseline, a scale above 1/8, or a header
    this parser does not follow): those are read and decoded whole, so their errors are what
    they always were. With `dc_only` only the DC is needed of every component, 4:2:0 chroma too:
    its 2x2 IDCT then sees no AC terms, so its blocks are flat (only chroma detail below the 1/8
    scale is lost), and the chroma AC scans are neither read nor decoded.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, n = 2, len(data)
    needed: dict[int, int] = {}  # component id -> last zigzag index the IDCT reads
    complete: set[tuple[int, int]] = set()  # (component, coefficient) with its last bit read
    scans: list[tuple[int, int, frozenset[tuple[int, int]]]] = []  # start, end, coefficients
    others: list[tuple[int, int]] = []  # the header's segments, and the tables between scans
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
            return None  # EOI before the scans are complete, or stray bytes: not ours to cut
        if marker in _STANDALONE:
            continue
        if pos + 2 > n:
            return Prefix(None)
        (length,) = struct.unpack_from(">H", data, pos)
        segment, body, pos = marker_at, pos + 2, pos + length
        if length < 2:
            return None
        if pos > n:
            return Prefix(None)
        if marker in _SOF:
            if marker != _PROGRESSIVE_SOF or length < 8 or needed:
                return None
            height, width, count = struct.unpack_from(">HHB", data, body + 1)
            if width == 0 or height == 0 or count == 0 or length < 8 + 3 * count:
                return None
            if draft_reduction(width, height, min_side) != 8:
                return None  # the larger IDCTs read AC terms that come late: read it whole
            factors = [(data[body + 7 + 3 * i] >> 4, data[body + 7 + 3 * i] & 15)
                       for i in range(count)]
            max_h, max_v = max(h for h, _ in factors), max(v for _, v in factors)
            for i, (h, v) in enumerate(factors):
                if h == 0 or v == 0:
                    return None
                corner = _CORNER.get(_idct_size(h, v, max_h, max_v))
                if corner is None:
                    return None  # chroma subsampled 4x: a 4x4 IDCT, which reads more
                needed[data[body + 6 + 3 * i]] = 0 if dc_only else corner
            others.append((segment, pos))
        elif marker == 0xDA:
            if not needed or length < 6:
                return None
            count = data[body]
            if length < 6 + 2 * count:
                return None
            idents = [data[body + 1 + 2 * i] for i in range(count)]
            start, end, approx = data[pos - 3], data[pos - 2], data[pos - 1]
            if start > end or end > 63 or any(i not in needed for i in idents):
                return None
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
            coefficients = frozenset((i, k) for i in idents for k in range(start, end + 1))
            scans.append((segment, scan_end, coefficients))
            if approx & 15 == 0:  # the last bit of these coefficients
                complete |= coefficients
            pos = scan_end
            if all((i, k) in complete for i, last in needed.items() for k in range(last + 1)):
                return Prefix(scan_end, _kept_ranges(scans, others, needed))
        else:
            others.append((segment, pos))


def _kept_ranges(scans: list[tuple[int, int, frozenset[tuple[int, int]]]],
                 others: list[tuple[int, int]], needed: dict[int, int]
                 ) -> tuple[tuple[int, int], ...]:
    """SOI, the other segments, and each scan the 1/8 decode needs, in the file's order."""
    wanted = {(i, k) for i, last in needed.items() for k in range(last + 1)}
    kept: set[int] = set()
    changed = True
    while changed:  # a kept scan's coefficients need every earlier pass of theirs kept too
        changed = False
        for index, (_, _, coefficients) in enumerate(scans):
            if index not in kept and coefficients & wanted:
                kept.add(index)
                wanted |= coefficients
                changed = True
    ranges = [(0, 2), *others, *(scans[i][:2] for i in kept)]
    return tuple(sorted(ranges))


def _decode_prefix(data: bytes, prefix: Prefix, min_side: int) -> Image.Image:
    """The 1/8-scale image from the scans `prefix` keeps, ended as a complete file."""
    parts = []
    for start, end in prefix.keep:
        part = data[start:end]
        if data[start + 1] == _DQT:
            part = _without_smoothing(part)
        parts.append(part)
    image = Image.open(io.BytesIO(b"".join(parts) + _EOI))
    _draft(image, min_side)
    image.load()
    return image


def _without_smoothing(segment: bytes) -> bytes:
    """A DQT segment with each table's row-2 column-0 quantizer zeroed.

    libjpeg-turbo smooths the blocks of a progressive JPEG whose AC scans are missing, and
    since 2.1 that moves the DC too; its smoothing is off where any of those quantizers is
    zero. The 1/8 scale's 1x1 and 2x2 IDCTs never read this one, so only smoothing changes.
    """
    table = bytearray(segment)
    pos = 4
    while pos < len(table):
        wide = table[pos] >> 4
        pos += 1
        if wide:
            table[pos + 2 * _ZIGZAG_Q20:pos + 2 * _ZIGZAG_Q20 + 2] = b"\0\0"
        elif pos + _ZIGZAG_Q20 < len(table):
            table[pos + _ZIGZAG_Q20] = 0
        pos += 128 if wide else 64
    return bytes(table)


# --- WebP and PNG: libvips shrinks while decoding ---------------------------------------------

_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
# Where libvips measured faster than Pillow (benchmarks/bench.py, "decode per format").
VIPS_FORMATS = frozenset({"WEBP", "PNG"})
# libvips shrinks a WebP to at least this many times the short side the model needs; Pillow's
# crop and resize do the rest, as for every other image. At 2 (and 3) the box-like shrink
# changed the model's answer on 7-13% of the bench's varied WebPs it shrank; at 4 Pillow's
# bicubic still reduces 4x or more, and the answers held (docs/throughput.md).
VIPS_MARGIN = 4


def vips_factor(fmt: str, size: tuple[int, int], min_side: int) -> int:
    """The whole factor libvips shrinks an image of this format and size by while decoding.

    PNG is never shrunk: lossless, it decodes pixel-identical to Pillow, and faster, at 1.
    """
    if fmt != "WEBP":
        return 1
    return max(1, min(size) // (VIPS_MARGIN * min_side))


@functools.cache
def vips() -> Any | None:
    """pyvips (a processor dependency; libvips comes in pyvips-binary's wheel), else None."""
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
                   orientation: int, partial: bool, vips_formats: bool,
                   dc_only: bool = False) -> Image.Image | None:
    """The image decoded at the scale the model needs, or None to decode it the usual way."""
    if fmt == "JPEG" and image.info.get("progressive"):
        if not partial:
            return None
        prefix = progressive_prefix(data, min_side, dc_only)
        if prefix is not None and prefix.end is not None:
            small = _decode_prefix(data, prefix, min_side)
            return _to_rgb(ImageOps.exif_transpose(small) or small)
        return None
    if vips_formats and fmt in VIPS_FORMATS and (pyvips := vips()) is not None:
        return _vips_decode(pyvips, data, fmt, image.size, min_side, orientation)
    return None


def _vips_decode(pyvips: Any, data: bytes, fmt: str, size: tuple[int, int], min_side: int,
                 orientation: int) -> Image.Image | None:
    """Decode 8-bit WebP or PNG with libvips, a WebP shrunk by `vips_factor`.

    Other depths, a WebP it would not shrink (Pillow decodes those faster) and anything libvips
    refuses go back to Pillow, so the colour handling and every failure's reason code stay
    Pillow's.
    """
    factor = vips_factor(fmt, size, min_side)
    try:
        if fmt == "WEBP":
            if factor == 1:
                return None
            # libwebp scales while decoding.
            vimage = pyvips.Image.webpload_buffer(data, scale=1 / factor)
        else:
            vimage = pyvips.Image.pngload_buffer(data, access="sequential")
            if vimage.format != "uchar" or vimage.bands not in (1, 2, 3, 4):
                return None
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
