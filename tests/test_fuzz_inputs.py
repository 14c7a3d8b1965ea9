"""Fuzzing the event parser, the decoder and the HTTP front with a bounded budget."""

from __future__ import annotations

import io
import json
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from processor.decode import decode_image
from processor.errors import PermanentError
from processor.events import MalformedEvent, parse_body
from tests.conftest import s3_event

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["Records", "eventName", "s3", "bucket", "object", "key",
                                       "name", "size", "eTag", "Event"]) | st.text(max_size=5),
                      children, max_size=5),
    max_leaves=20,
)


@FUZZ
@given(st.one_of(st.text(), json_values.map(json.dumps)))
def test_parser_either_parses_or_says_malformed(body: str) -> None:
    try:
        events = parse_body(body)
    except MalformedEvent:
        return
    for event in events:
        assert isinstance(event.bucket, str) and event.bucket
        assert isinstance(event.key, str) and event.key


@FUZZ
@given(st.lists(st.text(alphabet=string.printable + "éü猫😀 +%/", min_size=1, max_size=200),
                min_size=1, max_size=5))
def test_any_key_survives_s3_encoding(keys: list[str]) -> None:
    assert [e.key for e in parse_body(s3_event("b", *keys))] == keys


def _seed_images() -> list[bytes]:
    out = []
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"):
        buffer = io.BytesIO()
        Image.new("RGB", (24, 16), (200, 40, 90)).save(buffer, fmt)
        out.append(buffer.getvalue())
    return out


SEEDS = _seed_images()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) if draw(st.booleans()) else bytes(data)


@FUZZ
@given(st.one_of(mutated_images(), st.binary(max_size=512)))
def test_decoder_returns_rgb_or_a_permanent_error(data: bytes) -> None:
    try:
        decoded = decode_image(data, max_pixels=1_000_000)
    except PermanentError as exc:
        assert exc.code in {"empty_object", "not_an_image", "corrupt_image",
                            "unsupported_format", "too_many_pixels"}
        return
    assert decoded.image.mode == "RGB"
    assert decoded.width >= 1 and decoded.height >= 1


@FUZZ
@given(body=st.one_of(json_values, st.text()))
def test_upload_endpoint_never_answers_500(client, body) -> None:
    if isinstance(body, str):
        response = client.post("/api/uploads", data=body, content_type="application/json")
    else:
        response = client.post("/api/uploads", json=body)
    assert response.status_code in (201, 400, 413, 429)
    assert "error" in response.get_json() or response.status_code == 201


@FUZZ
@given(path=st.text(alphabet=string.printable + "é猫", max_size=60))
def test_results_endpoint_never_answers_500(client, path: str) -> None:
    response = client.get("/api/results/" + path.replace("?", "").replace("#", ""))
    assert response.status_code in (200, 301, 308, 400, 404, 405)
    if response.status_code not in (301, 308):
        assert response.is_json
