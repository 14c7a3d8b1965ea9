"""Parsing S3 event notifications from SQS bodies."""

from __future__ import annotations

import json

import pytest

from processor.events import MalformedEvent, parse_body
from tests.conftest import load_event, s3_event


def test_decodes_encoded_key_with_spaces_plus_and_unicode() -> None:
    body = json.dumps(load_event("s3_object_created.json"))

    [event] = parse_body(body)

    assert event.bucket == "test-images"
    assert event.key == "photos/my cat + dog été.jpg"
    assert event.size == 1024
    assert event.etag == "d41d8cd98f00b204e9800998ecf8427e"
    assert event.event_name == "ObjectCreated:Put"
    assert event.event_time == "2026-11-25T12:00:00.000Z"


@pytest.mark.parametrize("key", ["a b.jpg", "a+b.jpg", "100%.png", "dir/ünï cödé/😀.webp",
                                 "x" * 1024])
def test_round_trips_keys_as_s3_encodes_them(key: str) -> None:
    [event] = parse_body(s3_event("b", key))
    assert event.key == key


def test_several_records_in_one_message() -> None:
    events = parse_body(s3_event("b", "one.jpg", "two.png", "three.gif"))
    assert [e.key for e in events] == ["one.jpg", "two.png", "three.gif"]


def test_test_event_yields_nothing() -> None:
    assert parse_body(json.dumps(load_event("s3_test_event.json"))) == []


def test_other_event_types_are_ignored() -> None:
    assert parse_body(json.dumps(load_event("s3_object_removed.json"))) == []


def test_every_object_created_variant_is_taken() -> None:
    for name in ("ObjectCreated:Post", "ObjectCreated:Copy",
                 "ObjectCreated:CompleteMultipartUpload"):
        assert len(parse_body(s3_event("b", "k.jpg", event_name=name))) == 1


@pytest.mark.parametrize("body", [
    "", "not json", "[]", "42", "null", '"text"', "{}", '{"Records": "x"}',
    '{"Records": [1]}', '{"Records": [{}]}',
    '{"Records": [{"eventName": "ObjectCreated:Put"}]}',
    '{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {}, "object": {}}}]}',
    '{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"},'
    ' "object": {"key": ""}}}]}',
    '{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": 5},'
    ' "object": {"key": "k"}}}]}',
])
def test_garbage_is_malformed(body: str) -> None:
    with pytest.raises(MalformedEvent):
        parse_body(body)


def test_odd_size_and_etag_are_dropped_not_fatal() -> None:
    body = json.loads(s3_event("b", "k.jpg"))
    body["Records"][0]["s3"]["object"].update(size="big", eTag=7)
    [event] = parse_body(json.dumps(body))
    assert event.size is None and event.etag is None
