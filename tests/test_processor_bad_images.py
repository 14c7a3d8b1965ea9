"""Every kind of broken or odd image ends as the right record, and the next good one is done."""

from __future__ import annotations

import dataclasses
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from imagepipe.core.ids import image_id_for_object
from imagepipe.core.records import ResultStore
from processor.decode import decode_image, register_heif
from processor.errors import PermanentError

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _broken_crc(png: bytes) -> bytes:
    data = bytearray(png)
    data[png.index(b"IDAT") + 6] ^= 0xFF
    return bytes(data)


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("photo.jpg", b"not really")
    return buffer.getvalue()


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (64, 48), colour) for colour in ((250, 0, 0), (0, 250, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def _with_orientation(photo: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(photo, "JPEG", exif=exif, quality=90)


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.chelsea())  # 451 x 300


def _bad_inputs(cat: Image.Image) -> dict[str, tuple[bytes, str]]:
    """Name -> (bytes, expected outcome: a reason code, or "done")."""
    cat_jpeg = _encode(cat, "JPEG", quality=90)
    cat_png = _encode(cat, "PNG")
    bomb = _encode(Image.new("1", (30_000, 30_000)), "PNG")  # ~110 kB, 900 megapixels
    return {
        "zero bytes": (b"", "empty_object"),
        "text named .jpg": (b"hello, this is a text file\n" * 20, "not_an_image"),
        "html named .jpg": (b"<!doctype html><html><body>hi</body></html>", "not_an_image"),
        "pdf named .jpg": (b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n",
                           "not_an_image"),
        "zip named .jpg": (_zip(), "not_an_image"),
        "truncated jpeg": (cat_jpeg[: len(cat_jpeg) // 3], "corrupt_image"),
        "truncated png": (cat_png[: len(cat_png) // 3], "corrupt_image"),
        "png with broken crc": (_broken_crc(cat_png), "corrupt_image"),
        "decompression bomb": (bomb, "too_many_pixels"),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
                "not_an_image"),
        "ico": (_encode(Image.new("RGB", (32, 32)), "ICO"), "unsupported_format"),
        "1x1": (_encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), "done"),
        "16-bit grayscale": (
            _encode(Image.fromarray(np.linspace(0, 65535, 64 * 48, dtype=np.uint16)
                                    .reshape(48, 64)), "PNG"), "done"),
        "palette": (_encode(cat.convert("P"), "PNG"), "done"),
        "palette with transparency": (
            _encode(cat.convert("P"), "PNG", transparency=0), "done"),
        "cmyk jpeg": (_encode(cat.convert("CMYK"), "JPEG"), "done"),
        "grayscale with alpha": (_encode(cat.convert("LA"), "PNG"), "done"),
        "animated gif": (_animated("GIF"), "done"),
        "animated webp": (_animated("WEBP"), "done"),
        "progressive jpeg": (_encode(cat, "JPEG", progressive=True), "done"),
        "tiff": (_encode(cat, "TIFF"), "done"),
        "bmp": (_encode(cat, "BMP"), "done"),
    }


def test_decoder_outcomes(cat: Image.Image) -> None:
    for name, (data, expected) in _bad_inputs(cat).items():
        if expected == "done":
            decoded = decode_image(data, max_pixels=40_000_000)
            assert decoded.image.mode == "RGB", name
            assert decoded.image.size[0] >= 1, name
        else:
            with pytest.raises(PermanentError) as caught:
                decode_image(data, max_pixels=40_000_000)
            assert caught.value.code == expected, name
            assert caught.value.message, name


def test_animated_images_use_the_first_frame() -> None:
    for fmt in ("GIF", "WEBP"):
        decoded = decode_image(_animated(fmt), max_pixels=10_000)
        red, green, _ = decoded.image.getpixel((10, 10))
        assert red > 200 and green < 30, fmt


def test_heic_from_a_phone_is_supported(cat: Image.Image) -> None:
    assert register_heif()
    decoded = decode_image(_encode(cat, "HEIF"), max_pixels=10**7)
    assert (decoded.format, decoded.width, decoded.height) == ("HEIF", 451, 300)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(cat: Image.Image, orientation: int) -> None:
    decoded = decode_image(_with_orientation(cat, orientation), max_pixels=10**7)
    expected = (300, 451) if orientation >= 5 else (451, 300)
    assert (decoded.width, decoded.height) == expected
    # The pixels the model sees are turned too (scaled by the JPEG draft or not).
    w, h = decoded.image.size
    assert (w > h) == (expected[0] > expected[1])


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    ramp = np.linspace(0, 65535, 256, dtype=np.uint16).reshape(1, 256).repeat(4, axis=0)
    decoded = decode_image(_encode(Image.fromarray(ramp), "PNG"), max_pixels=10**6)
    row = np.asarray(decoded.image)[0, :, 0]
    assert row[0] < 5 and row[-1] > 250 and 100 < row[128] < 160


@pytest.mark.slow
def test_bad_images_through_the_processor(make_worker, settings, clients, resources,
                                          store: ResultStore,
                                          classifier, cat: Image.Image) -> None:
    # Given every bad input under an awkward key, each followed by a good photo
    capped = dataclasses.replace(settings, max_upload_bytes=1_000_000, max_pixels=40_000_000)
    cat_jpeg = _encode(cat, "JPEG", quality=90)
    cases = _bad_inputs(cat)
    cases["bigger than the byte cap"] = (cat_jpeg + b"\0" * 1_000_001, "too_large")
    cases["exif orientation 6"] = (_with_orientation(cat, 6), "done")
    cases["heic"] = (_encode(cat, "HEIF"), "done")
    odd_keys = ["with space.jpg", "plus+sign.jpg", "100%.jpg", "ünïcødé/猫.jpg",
                "deep/" + "k" * 1010 + ".jpg"]
    expected: dict[str, str] = {}
    for i, (name, (data, outcome)) in enumerate(cases.items()):
        key = f"bad/{i:02d} {name} + %.jpg"
        clients.s3.put_object(Bucket=settings.bucket, Key=key, Body=data)
        expected[key] = outcome
        good_key = odd_keys[i % len(odd_keys)].replace(".jpg", f"-{i}.jpg")
        clients.s3.put_object(Bucket=settings.bucket, Key=good_key, Body=cat_jpeg)
        expected[good_key] = "done"
    # An object deleted before the processor reads it
    clients.s3.put_object(Bucket=settings.bucket, Key="bad/deleted.jpg", Body=cat_jpeg)
    clients.s3.delete_object(Bucket=settings.bucket, Key="bad/deleted.jpg")
    expected["bad/deleted.jpg"] = "object_missing"

    # When the processor drains the queue
    worker = make_worker(capped, clients, classifier)
    for _ in range(30):
        if worker.run(max_batches=1).received == 0:
            break

    # Then each object has its outcome, and every good photo is a cat
    for key, outcome in expected.items():
        record = store.get(image_id_for_object(settings.bucket, key))
        assert record is not None, key
        if outcome == "done":
            assert record.status == "done", (key, record.error_code, record.error_message)
            assert record.labels, key
        else:
            assert (record.status, record.error_code) == ("failed", outcome), key
    for key in (k for k, v in expected.items() if v == "done" and not k.startswith("bad/")):
        assert store.get(image_id_for_object(settings.bucket, key)).labels[0].label in CAT_CLASSES
    rotated = store.get(image_id_for_object(settings.bucket,
                                            next(k for k in expected if "orientation 6" in k)))
    assert (rotated.image.width, rotated.image.height) == (300, 451)
