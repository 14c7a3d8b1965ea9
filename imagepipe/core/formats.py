"""The image formats the pipeline accepts: one table for the front, the processor and the page."""

from __future__ import annotations

from dataclasses import dataclass

# A run of bytes the file has at an offset; a signature is met when all of its runs are.
Signature = tuple[tuple[int, bytes], ...]

_HEIC_BRANDS = (b"heic", b"heix", b"hevc", b"hevx")
_HEIF_BRANDS = (b"mif1", b"msf1", b"heim", b"heis")


@dataclass(frozen=True)
class ImageFormat:
    """One accepted format, as HTTP, Pillow, file names and people call it."""

    mime_type: str
    # What the page calls it in a sentence.
    name: str
    # Pillow's names for what it decodes from such a file, as the processor records them.
    pillow_names: tuple[str, ...]
    # File name suffixes without the dot; the first one ends the keys the front chooses.
    suffixes: tuple[str, ...]
    # Any one of these at the start of a file says it is of this format.
    signatures: tuple[Signature, ...]

    @property
    def suffix(self) -> str:
        """The suffix of the keys the front chooses for such an image."""
        return self.suffixes[0]

    def announced_by(self, head: bytes) -> bool:
        """Whether the first bytes of a file carry one of this format's signatures."""
        return any(all(head[offset:offset + len(run)] == run for offset, run in signature)
                   for signature in self.signatures)


FORMATS: tuple[ImageFormat, ...] = (
    # MPO is how Pillow names many phone JPEGs (a JPEG with extra frames).
    ImageFormat("image/jpeg", "JPEG", ("JPEG", "MPO"), ("jpg", "jpeg"),
                (((0, b"\xff\xd8\xff"),),)),
    ImageFormat("image/png", "PNG", ("PNG",), ("png",), (((0, b"\x89PNG\r\n\x1a\n"),),)),
    ImageFormat("image/webp", "WebP", ("WEBP",), ("webp",), (((0, b"RIFF"), (8, b"WEBP")),)),
    ImageFormat("image/gif", "GIF", ("GIF",), ("gif",), (((0, b"GIF87a"),), ((0, b"GIF89a"),))),
    ImageFormat("image/bmp", "BMP", ("BMP",), ("bmp",), (((0, b"BM"),),)),
    ImageFormat("image/tiff", "TIFF", ("TIFF",), ("tiff", "tif"),
                (((0, b"II*\x00"),), ((0, b"MM\x00*"),))),
    # pillow-heif names HEIC and HEIF alike "HEIF": the name is listed under image/heif,
    # the type a decoded one is served as.
    ImageFormat("image/heic", "HEIC", (), ("heic",),
                tuple(((4, b"ftyp"), (8, brand)) for brand in _HEIC_BRANDS)),
    ImageFormat("image/heif", "HEIF", ("HEIF",), ("heif",),
                tuple(((4, b"ftyp"), (8, brand)) for brand in _HEIF_BRANDS)),
)

CONTENT_TYPES: tuple[str, ...] = tuple(f.mime_type for f in FORMATS)
PILLOW_NAMES: frozenset[str] = frozenset(name for f in FORMATS for name in f.pillow_names)
SUFFIXES: frozenset[str] = frozenset(suffix for f in FORMATS for suffix in f.suffixes)
# Enough leading bytes to recognise every signature above.
SNIFF_BYTES: int = max(offset + len(run) for f in FORMATS for signature in f.signatures
                       for offset, run in signature)

_BY_MIME_TYPE = {f.mime_type: f for f in FORMATS}
_BY_PILLOW_NAME = {name: f for f in FORMATS for name in f.pillow_names}


def by_mime_type(mime_type: str) -> ImageFormat | None:
    """The accepted format of a content type (any case), if it is one."""
    return _BY_MIME_TYPE.get(mime_type.lower())


def key_suffix(mime_type: str) -> str:
    """The suffix of the key the front chooses for an image of an accepted content type."""
    return _BY_MIME_TYPE[mime_type.lower()].suffix


def by_pillow_name(name: str) -> ImageFormat | None:
    """The accepted format Pillow names `name`, if it is one."""
    return _BY_PILLOW_NAME.get(name)


def sniff_content_type(data: bytes) -> str | None:
    """The content type the first bytes announce, if it is one we accept."""
    for image_format in FORMATS:
        if image_format.announced_by(data):
            return image_format.mime_type
    return None
