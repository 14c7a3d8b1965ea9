"""Fuzzing the event parser, the decoder and the HTTP front with a bounded budget."""

from __future__ import annotations

import dataclasses
import io
import json
import string
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imagepipe.core.formats import CONTENT_TYPES
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


def _either(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a value of the right shape, sometimes any JSON value."""
    return st.sampled_from(["valid"] * 7 + ["any"]).flatmap(
        lambda shape: valid if shape == "valid" else json_values)


@st.composite
def notifications(draw: st.DrawFn) -> str:
    """An S3 notification body with the real keys, each field of the right shape or not."""
    if draw(st.sampled_from(["records", "records", "records", "test event"])) == "test event":
        return json.dumps({"Event": "s3:TestEvent", "Bucket": draw(st.text(max_size=10))})
    records = []
    for _ in range(draw(st.integers(0, 3))):
        obj = {"key": draw(_either(st.text(min_size=1, max_size=30))),
               "size": draw(_either(st.integers(0, 10**9))),
               "eTag": draw(_either(st.text(max_size=32)))}
        record = {
            "eventName": draw(_either(st.sampled_from(
                ["ObjectCreated:Put", "ObjectCreated:CompleteMultipartUpload",
                 "ObjectRemoved:Delete"]))),
            "eventTime": draw(_either(st.just("2026-01-01T00:00:00.000Z"))),
            "s3": draw(_either(st.fixed_dictionaries({
                "bucket": _either(st.fixed_dictionaries(
                    {"name": _either(st.text(min_size=1, max_size=20))})),
                "object": _either(st.just(obj)),
            }))),
        }
        records.append(draw(_either(st.just(record))))
    return json.dumps({"Records": draw(_either(st.just(records)))})


def test_parser_either_parses_or_says_malformed() -> None:
    outcomes: Counter[str] = Counter()

    @FUZZ
    @given(st.sampled_from(["notification", "notification", "other"]).flatmap(
        lambda shape: notifications() if shape == "notification"
        else st.one_of(st.text(), json_values.map(json.dumps))))
    def parse(body: str) -> None:
        try:
            events = parse_body(body)
        except MalformedEvent:
            outcomes["malformed"] += 1
            return
        outcomes["parsed, with events" if events else "parsed, nothing created"] += 1
        for event in events:
            assert isinstance(event.bucket, str) and event.bucket
            assert isinstance(event.key, str) and event.key
            assert event.event_name.startswith("ObjectCreated:")
            assert event.size is None or type(event.size) is int

    parse()
    print("\nS3 event parser fuzz, examples per outcome:", dict(sorted(outcomes.items())))
    # Each way out was taken, so the checks on parsed events ran.
    for outcome in ("malformed", "parsed, with events", "parsed, nothing created"):
        assert outcomes[outcome] >= 5, outcome


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


# What POST /api/uploads answers for a body that reached the validator: 201, or 400 and a code.
UPLOAD_CODES = ("invalid_json", "missing_field", "invalid_filename", "unsupported_content_type",
                "invalid_size", "too_large")

# Each field of an upload request, as the validator accepts it and as it must refuse it.
VALID = {
    "filename": st.text(alphabet=string.ascii_letters + string.digits + " ._-éü猫",
                        min_size=1, max_size=40).filter(str.strip),
    "content_type": st.sampled_from(list(CONTENT_TYPES))
    | st.sampled_from(list(CONTENT_TYPES)).map(str.upper),
    "size": st.integers(1, 2 * 1024 * 1024),  # the test settings' max_upload_bytes
}
INVALID = {
    "filename": st.sampled_from(["", "   ", "../etc/passwd", "a/b.jpg", "a\\b.jpg", "a\x00.jpg",
                                 "x" * 256]) | st.integers() | st.lists(st.text(), max_size=2),
    "content_type": st.sampled_from(["image/svg+xml", "text/html", "image/", "", "image/jpg",
                                     "video/mp4"]) | st.text(max_size=20) | st.integers(),
    "size": st.integers(2 * 1024 * 1024 + 1, 10**12) | st.integers(max_value=0) | st.booleans()
    | st.floats(allow_nan=False) | st.text(max_size=5) | st.none(),
}


@st.composite
def upload_requests(draw: st.DrawFn) -> dict:
    """A body with the real keys: all valid, or one invalid or left out; maybe extra keys."""
    body = {name: draw(values) for name, values in VALID.items()}
    if draw(st.booleans()):
        # Size first: it is checked last, so it is the one reached least.
        name = draw(st.sampled_from(["size", "filename", "content_type"]))
        if draw(st.sampled_from(["invalid", "invalid", "invalid", "missing"])) == "invalid":
            body[name] = draw(INVALID[name])
        else:
            del body[name]
    body.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    return body


@st.composite
def upload_bodies(draw: st.DrawFn) -> dict | str:
    """Two in three of them upload requests, the rest any JSON value or any text."""
    if draw(st.sampled_from(["request", "request", "other"])) == "request":
        return draw(upload_requests())
    return draw(st.one_of(json_values, st.text()))


@pytest.fixture
def unlimited_client(settings, client_for):
    """The front with the rate limit off: every example must reach the validator."""
    return client_for(dataclasses.replace(settings, rate_limit_per_minute=0))


def test_upload_endpoint_validates_every_body(unlimited_client) -> None:
    outcomes: Counter[str] = Counter()

    @FUZZ
    @given(body=upload_bodies())
    def post(body) -> None:
        if isinstance(body, str):
            response = unlimited_client.post("/api/uploads", data=body,
                                             content_type="application/json")
        else:
            response = unlimited_client.post("/api/uploads", json=body)
        if response.status_code == 201:
            assert response.get_json()["upload"]["fields"]["key"].startswith("uploads/")
            outcomes["201 created"] += 1
            return
        assert response.status_code == 400
        code = response.get_json()["error"]["code"]
        assert code in UPLOAD_CODES
        outcomes[f"400 {code}"] += 1

    post()
    print("\nPOST /api/uploads fuzz, examples per answer:", dict(sorted(outcomes.items())))
    assert sum(outcomes.values()) >= 300
    # Every branch of the validator was reached, and not by a fluke.
    for outcome in ("201 created", *(f"400 {code}" for code in UPLOAD_CODES)):
        assert outcomes[outcome] >= 5, outcome


@FUZZ
@given(path=st.text(alphabet=string.printable + "é猫", max_size=60))
def test_results_endpoint_never_answers_500(client, path: str) -> None:
    response = client.get("/api/results/" + path.replace("?", "").replace("#", ""))
    assert response.status_code in (200, 301, 308, 400, 404, 405)
    if response.status_code not in (301, 308):
        assert response.is_json
