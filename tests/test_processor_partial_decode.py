"""Partial decoding: progressive JPEGs from their first scans (read by ranged GETs), large WebPs
shrunk while decoding, PNG by libvips; the same outcomes as the full decode for everything else."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageCms

import processor.decode as decode
import processor.handling as handling
import tests.test_processor_bad_images as bad_images
from imagepipe.core.ids import image_id_for_object
from imagepipe.core.records import Label, ResultStore
from processor.decode import Prefix, decode_image, progressive_prefix
from processor.dedupe import content_sha256
from processor.errors import PermanentError
from processor.model import preprocess_image
from tests.conftest import s3_event
from tests.fakes import put_image

MIN_SIDE = 256


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A 2400 x 2100 photo with sensor-like noise: big enough for libjpeg's 1/8 scale."""
    from skimage import data

    cat = Image.fromarray(data.chelsea()).resize((2400, 2100), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).normal(0, 5, (2100, 2400, 3))
    return Image.fromarray(np.clip(np.asarray(cat) + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def progressive(photo: Image.Image) -> bytes:
    return _encode(photo, "JPEG", quality=90, progressive=True)


def _model_input(data: bytes, partial: bool) -> np.ndarray:
    decoded = decode_image(data, max_pixels=40_000_000, min_side=MIN_SIDE, partial=partial)
    return preprocess_image(decoded.image, 224)


def test_progressive_jpeg_needs_only_its_dc_scans(progressive: bytes) -> None:
    prefix = progressive_prefix(progressive, MIN_SIDE)
    assert prefix is not None and prefix.end is not None
    # Read up to the DC refinement scan (libjpeg's 7th of 10), decoded: a small part.
    assert prefix.end < len(progressive) * 0.7
    assert progressive[prefix.end] == 0xFF
    assert sum(end - start for start, end in prefix.keep) < len(progressive) / 4
    # Cut inside those scans: not complete yet. Baseline JPEG and PNG: not to be cut.
    assert progressive_prefix(progressive[:prefix.end - 100], MIN_SIDE) == Prefix(None)
    baseline = _encode(Image.open(io.BytesIO(progressive)), "JPEG", quality=90)
    assert progressive_prefix(baseline, MIN_SIDE) is None
    assert progressive_prefix(_encode(Image.new("RGB", (600, 600)), "PNG"), MIN_SIDE) is None


def test_progressive_jpegs_under_the_1_8_scale_are_read_whole(photo: Image.Image) -> None:
    # At 1200 x 1050, libjpeg scales by 4 and its 2x2 IDCT reads AC terms of the late scans.
    small = _encode(photo.resize((1200, 1050)), "JPEG", quality=90, progressive=True)
    assert progressive_prefix(small, MIN_SIDE) is None
    tiny = _encode(photo.resize((500, 400)), "JPEG", progressive=True)
    assert progressive_prefix(tiny, MIN_SIDE) is None


@pytest.mark.parametrize(("mode", "subsampling", "quality"), [
    ("RGB", 2, 75), ("RGB", 2, 95), ("RGB", 0, 85), ("RGB", 1, 90), ("L", 0, 80),
    ("CMYK", 0, 90)])
def test_dc_scans_alone_decode_equal_to_the_whole_file_at_1_8(
        photo: Image.Image, mode: str, subsampling: int, quality: int) -> None:
    # 4:2:0, 4:4:4, 4:2:2, greyscale and CMYK, as Pillow writes them with progressive=True.
    data = _encode(photo.convert(mode), "JPEG", quality=quality, progressive=True,
                   subsampling=subsampling)
    prefix = progressive_prefix(data, MIN_SIDE)
    assert prefix is not None and prefix.end is not None
    whole = decode_image(data, max_pixels=40_000_000, min_side=MIN_SIDE).image
    # What a ranged read holds: up to the marker after the last DC scan.
    partial = decode_image(data[:prefix.end + 2], max_pixels=40_000_000, min_side=MIN_SIDE,
                           partial=True).image
    assert whole.size == (300, 263)  # 1/8 of 2400 x 2100
    assert np.array_equal(np.asarray(whole), np.asarray(partial))


@pytest.mark.parametrize(("mode", "subsampling"), [("RGB", 2), ("RGB", 0), ("L", 0)])
def test_dc_only_decode_is_close_and_reads_less(photo: Image.Image, mode: str,
                                                subsampling: int) -> None:
    # DC-only (IMAGEPIPE_PARTIAL_DECODE_DC) leaves out 4:2:0 chroma's AC scans: flat chroma
    # blocks at 1/8, the same for 4:4:4 and grey, whose 1x1 IDCTs read only the DC anyway.
    data = _encode(photo.convert(mode), "JPEG", quality=90, progressive=True,
                   subsampling=subsampling)
    exact, dc = progressive_prefix(data, MIN_SIDE), progressive_prefix(data, MIN_SIDE, True)
    assert exact is not None and exact.end is not None and dc is not None and dc.end is not None
    assert dc.end <= exact.end
    assert sum(e - s for s, e in dc.keep) <= sum(e - s for s, e in exact.keep)
    whole = np.asarray(decode_image(data, max_pixels=40_000_000, min_side=MIN_SIDE).image)
    partial = np.asarray(decode_image(data[:dc.end + 2], max_pixels=40_000_000,
                                      min_side=MIN_SIDE, partial=True, dc_only=True).image)
    assert whole.shape == partial.shape
    diff = np.abs(whole.astype(int) - partial.astype(int))
    if subsampling == 2:
        assert dc.end < exact.end  # the chroma AC scans come after the DC refinement
        assert 0 < diff.mean() < 2.0
    else:
        assert diff.max() == 0


@pytest.mark.parametrize("fmt", ["WEBP", "PNG"])
def test_webp_shrunk_and_png_decoded_by_libvips_look_the_same(photo: Image.Image, fmt: str
                                                              ) -> None:
    data = _encode(photo, fmt)
    vips = decode_image(data, max_pixels=40_000_000, min_side=MIN_SIDE, vips_formats=True)
    pillow = decode_image(data, max_pixels=40_000_000, min_side=MIN_SIDE)
    assert (vips.width, vips.height) == (2400, 2100)
    assert decode.vips() is not None  # a dependency of the processor, libvips in its wheel
    if fmt == "WEBP":
        assert vips.image.size == (1200, 1050)  # shrunk by 2, to 4x the side needed or more
        difference = np.abs(preprocess_image(vips.image, 224) - preprocess_image(pillow.image, 224))
        assert difference.mean() < 2.0
    else:  # a PNG is never shrunk: lossless, libvips decodes it pixel for pixel as Pillow does
        assert np.array_equal(np.asarray(vips.image), np.asarray(pillow.image))


def test_webp_too_small_to_shrink_is_decoded_by_pillow(photo: Image.Image) -> None:
    data = _encode(photo.resize((1200, 1050)), "WEBP")
    vips = decode_image(data, max_pixels=40_000_000, min_side=MIN_SIDE, vips_formats=True)
    pillow = decode_image(data, max_pixels=40_000_000, min_side=MIN_SIDE)
    assert np.array_equal(np.asarray(vips.image), np.asarray(pillow.image))


def test_alpha_is_flattened_on_white_as_before() -> None:
    rgba = Image.new("RGBA", (1024, 1024), (200, 10, 10, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 1024, 512))  # the top half fully transparent
    for fmt in ("PNG", "WEBP"):
        image = decode_image(_encode(rgba, fmt, lossless=True) if fmt == "WEBP"
                             else _encode(rgba, fmt), 10**7, min_side=MIN_SIDE,
                             partial=True, vips_formats=True).image
        pixels = np.asarray(image)
        assert image.mode == "RGB", fmt
        assert pixels[10, 10].tolist() == [255, 255, 255], fmt
        assert np.abs(pixels[-10, -10].astype(int) - [200, 10, 10]).max() <= 2, fmt


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied_when_decoding_partially(photo: Image.Image, fmt: str
                                                            ) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": stored landscape, shown portrait
    options: dict[str, Any] = {"exif": exif.tobytes()}
    if fmt == "JPEG":
        options["progressive"] = True
    data = _encode(photo, fmt, **options)
    decoded = decode_image(data, max_pixels=40_000_000, min_side=MIN_SIDE, partial=True,
                           vips_formats=True)
    assert (decoded.width, decoded.height) == (2100, 2400)
    width, height = decoded.image.size
    assert height > width


def test_icc_profile_and_grayscale_progressive_jpegs(photo: Image.Image) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for image in (photo, photo.convert("L")):
        data = _encode(image, "JPEG", progressive=True, icc_profile=icc)
        assert progressive_prefix(data, MIN_SIDE).end is not None
        decoded = decode_image(data, max_pixels=40_000_000, min_side=MIN_SIDE, partial=True)
        assert decoded.image.mode == "RGB" and min(decoded.image.size) >= MIN_SIDE


def test_without_pyvips_pillow_decodes_webp_and_png(monkeypatch: pytest.MonkeyPatch,
                                                    photo: Image.Image) -> None:
    monkeypatch.setattr(decode, "vips", lambda: None)
    for fmt in ("WEBP", "PNG"):
        decoded = decode_image(_encode(photo.resize((1200, 1050)), fmt), 10**7,
                               min_side=MIN_SIDE, partial=True, vips_formats=True)
        assert decoded.image.size == (1200, 1050), fmt


def test_bad_inputs_fail_the_same_when_decoding_partially() -> None:
    from skimage import data

    cat = Image.fromarray(data.chelsea())
    for name, (body, expected) in bad_images._bad_inputs(cat).items():
        if expected == "done":
            decoded = decode_image(body, 40_000_000, partial=True, vips_formats=True)
            assert decoded.image.mode == "RGB", name
            continue
        with pytest.raises(PermanentError) as caught:
            decode_image(body, 40_000_000, partial=True, vips_formats=True)
        assert caught.value.code == expected, name


def test_truncated_progressive_jpeg_inside_its_first_scan_fails_as_before(
        progressive: bytes) -> None:
    end = progressive_prefix(progressive, MIN_SIDE).end
    truncated = progressive[:end // 2]
    for partial in (False, True):
        with pytest.raises(PermanentError) as caught:
            decode_image(truncated, 40_000_000, min_side=MIN_SIDE, partial=partial)
        assert caught.value.code == "corrupt_image"


# --- through the processor: ranged reads -----------------------------------------------------


class PixelClassifier:
    """Keeps the pixels it was given; labels every image "seen"."""

    name = "pixels"
    version = "0"
    input_size = 224

    def __init__(self) -> None:
        self.pixels: list[np.ndarray] = []

    def preprocess(self, image: Any) -> Any:
        return preprocess_image(image, self.input_size)

    def classify(self, images: list[Any], top_k: int = 5) -> list[list[Label]]:
        self.pixels.extend(images)
        return [[Label("seen", 0.9, 1)] for _ in images]


class RangeSpy:
    """An S3 client that notes the Range of every GetObject it passes on."""

    def __init__(self, s3: Any) -> None:
        self._s3 = s3
        self.ranges: list[str | None] = []

    def get_object(self, **kwargs: Any) -> Any:
        self.ranges.append(kwargs.get("Range"))
        return self._s3.get_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)


def _process(make_worker, settings, clients, key: str, classifier: Any,
             partial: bool = True, dc: bool = False) -> RangeSpy:
    spy = RangeSpy(clients.s3)
    worker = make_worker(dataclasses.replace(settings, partial_decode=partial,
                                             partial_decode_dc=dc),
                         dataclasses.replace(clients, s3=spy), classifier)
    worker.process_messages([{"MessageId": key, "ReceiptHandle": key,
                              "Body": s3_event(settings.bucket, key)}])
    return spy


def test_first_scans_in_two_ranged_reads_decode_as_in_one(
        make_worker, settings, clients, resources, store: ResultStore, progressive: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a progressive photo whose first scan ends past the first range read
    end = progressive_prefix(progressive, MIN_SIDE).end
    image_id = put_image(clients, settings, "progressive.jpg", progressive)

    # When it is read in one range, then with a first range of half the scans needed
    one, two = PixelClassifier(), PixelClassifier()
    monkeypatch.setattr(handling, "HEAD_BYTES", end + 10)
    spy_one = _process(make_worker, settings, clients, "progressive.jpg", one)
    monkeypatch.setattr(handling, "HEAD_BYTES", end // 2 + 2)
    spy_two = _process(make_worker, settings, clients, "progressive.jpg", two)

    # Then the second took two ranged reads, neither read the whole object, and the model
    # saw the same pixels
    assert spy_one.ranges == [f"bytes=0-{end + 9}"]
    first = end // 2 + 2
    assert spy_two.ranges == [f"bytes=0-{first - 1}", f"bytes={first}-{2 * first - 1}"]
    assert 2 * first < len(progressive)
    np.testing.assert_array_equal(one.pixels[0], two.pixels[0])
    record = store.get(image_id)
    assert record.status == "done"
    assert (record.image.width, record.image.bytes) == (2400, len(progressive))
    assert record.sha256 is None  # a ranged read has no checksum, and none was claimed


def test_dc_only_reads_up_to_the_dc_refinement(
        make_worker, settings, clients, resources, store: ResultStore, progressive: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a 4:2:0 progressive photo, and a first range that holds its DC scans only
    dc_end = progressive_prefix(progressive, MIN_SIDE, True).end
    assert dc_end < progressive_prefix(progressive, MIN_SIDE).end
    image_id = put_image(clients, settings, "dc.jpg", progressive)
    monkeypatch.setattr(handling, "HEAD_BYTES", dc_end + 10)

    # When the processor reads it with IMAGEPIPE_PARTIAL_DECODE_DC on, then off
    dc, exact = PixelClassifier(), PixelClassifier()
    spy_dc = _process(make_worker, settings, clients, "dc.jpg", dc, dc=True)
    _process(make_worker, settings, clients, "dc.jpg", exact)

    # Then one ranged read was enough, and the model saw close pixels
    assert spy_dc.ranges == [f"bytes=0-{dc_end + 9}"]
    assert store.get(image_id).status == "done"
    assert 0 < np.abs(dc.pixels[0] - exact.pixels[0]).mean() < 2.0  # of 0-255


def test_the_claimed_sha256_is_kept_when_reading_part(make_worker, settings, clients,
                                                      resources, store: ResultStore,
                                                      progressive: bytes) -> None:
    import hashlib

    digest = hashlib.sha256(progressive).hexdigest()
    clients.s3.put_object(Bucket=settings.bucket, Key="claimed.jpg", Body=progressive,
                          Metadata={"sha256": digest})
    _process(make_worker, settings, clients, "claimed.jpg", PixelClassifier())
    record = store.get(image_id_for_object(settings.bucket, "claimed.jpg"))
    assert (record.status, record.sha256) == ("done", digest)


def test_truncated_progressive_jpeg_fails_with_its_reason_through_ranged_reads(
        make_worker, settings, clients, resources, store: ResultStore, progressive: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    end = progressive_prefix(progressive, MIN_SIDE).end
    monkeypatch.setattr(handling, "HEAD_BYTES", end // 8)
    image_id = put_image(clients, settings, "cut.jpg", progressive[:end // 2])
    spy = _process(make_worker, settings, clients, "cut.jpg", PixelClassifier())
    record = store.get(image_id)
    assert (record.status, record.error_code) == ("failed", "corrupt_image")
    assert len(spy.ranges) >= 2  # extended to its end, then decoded whole as before


def test_other_objects_are_read_whole_in_at_most_two_reads(
        make_worker, settings, clients, resources, store: ResultStore, photo: Image.Image,
        monkeypatch: pytest.MonkeyPatch) -> None:
    baseline = _encode(photo, "JPEG", quality=90)
    monkeypatch.setattr(handling, "HEAD_BYTES", 64 * 1024)
    image_id = put_image(clients, settings, "baseline.jpg", baseline)
    spy = _process(make_worker, settings, clients, "baseline.jpg", PixelClassifier())
    assert spy.ranges == ["bytes=0-65535", f"bytes=65536-{len(baseline) - 1}"]
    record = store.get(image_id)
    assert record.status == "done"
    assert record.sha256 == content_sha256(baseline)


def test_empty_object_and_partial_decoding_off(make_worker, settings, clients, resources,
                                               store: ResultStore, progressive: bytes) -> None:
    empty = put_image(clients, settings, "empty.jpg", b"")
    _process(make_worker, settings, clients, "empty.jpg", PixelClassifier())
    assert store.get(empty).error_code == "empty_object"
    whole = put_image(clients, settings, "whole.jpg", progressive)
    spy = _process(make_worker, settings, clients, "whole.jpg", PixelClassifier(),
                   partial=False)
    assert spy.ranges == [None]
    assert store.get(whole).sha256 == content_sha256(progressive)


@pytest.mark.slow
def test_bad_images_through_the_processor_decoding_partially(
        make_worker, settings, clients, resources, store: ResultStore, classifier) -> None:
    from skimage import data

    # The bad-input test as it stands, with ranged reads and partial decoding on.
    bad_images.test_bad_images_through_the_processor(
        make_worker, dataclasses.replace(settings, partial_decode=True), clients, resources,
        store, classifier, Image.fromarray(data.chelsea()))


@pytest.mark.parametrize("size", [(2400, 2100), (2100, 2400), (1200, 1050), (600, 500),
                                  (300, 300), (4000, 600), (2048, 2048), (2047, 2047)])
def test_draft_reduction_is_the_scale_pillow_picks(size: tuple[int, int]) -> None:
    image = Image.open(io.BytesIO(_encode(Image.new("RGB", size), "JPEG")))
    decode._draft(image, MIN_SIDE)
    reduction = decode.draft_reduction(*size, MIN_SIDE)
    assert image.size == (-(-size[0] // reduction), -(-size[1] // reduction))
