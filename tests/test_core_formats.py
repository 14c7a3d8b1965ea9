"""The image-format table: its signatures, Pillow's names and the suffixes agree."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from imagepipe.core.formats import (
    CONTENT_TYPES,
    FORMATS,
    PILLOW_NAMES,
    SNIFF_BYTES,
    by_mime_type,
    by_pillow_name,
    key_suffix,
    sniff_content_type,
)


def _head(signature) -> bytes:
    head = bytearray(b"\x00" * SNIFF_BYTES)
    for offset, run in signature:
        head[offset:offset + len(run)] = run
    return bytes(head)


@pytest.mark.parametrize("image_format", FORMATS, ids=lambda f: f.mime_type)
def test_each_signature_announces_its_own_format(image_format) -> None:
    for signature in image_format.signatures:
        assert sniff_content_type(_head(signature)) == image_format.mime_type


@pytest.mark.parametrize("head", [b"", b"\x00" * 16, b"<svg xmlns=", b"%PDF-1.7",
                                  b"RIFF\0\0\0\0WAVE", b"\0\0\0\x18ftypmp42"])
def test_other_files_are_not_images(head: bytes) -> None:
    assert sniff_content_type(head) is None


@pytest.mark.parametrize("pillow_name", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_what_pillow_writes_is_sniffed_as_the_type_of_its_name(pillow_name: str) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buffer, pillow_name)
    data = buffer.getvalue()

    image_format = by_pillow_name(Image.open(io.BytesIO(data)).format or "")
    assert image_format is not None
    assert sniff_content_type(data[:SNIFF_BYTES]) == image_format.mime_type


def test_the_table_has_one_entry_per_type_name_and_suffix() -> None:
    assert len(set(CONTENT_TYPES)) == len(FORMATS)
    suffixes = [suffix for f in FORMATS for suffix in f.suffixes]
    assert len(set(suffixes)) == len(suffixes)
    assert len(PILLOW_NAMES) == sum(len(f.pillow_names) for f in FORMATS)
    # MPO is how Pillow names many phone JPEGs; HEIC decodes as Pillow's HEIF.
    assert by_pillow_name("MPO") == by_mime_type("image/jpeg")
    assert by_pillow_name("HEIF") == by_mime_type("image/heif")


def test_the_key_suffix_is_the_first_suffix_whatever_the_case() -> None:
    assert key_suffix("image/jpeg") == "jpg"
    assert key_suffix("IMAGE/TIFF") == "tiff"
    assert by_mime_type("image/svg+xml") is None
