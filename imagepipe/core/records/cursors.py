"""Pagination cursors: an index's start key, opaque to clients and checked when it comes back."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from imagepipe.core.records.indexes import Index


class InvalidCursor(ValueError):
    """A pagination cursor that this store did not hand out."""


def encode_cursor(index: Index, key: dict[str, Any]) -> str:
    """A cursor that resumes a query of `index` after the item with this key."""
    raw = json.dumps({"i": index.name, "k": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, index: Index, partition: str | None = None) -> dict[str, Any]:
    """The start key in a cursor, checked against the index and partition it must belong to.

    A cursor of another query (another label, status or owner) is refused, not followed.
    """
    body = _body(cursor)
    key = body.get("k")
    if body.get("i") != index.name or not isinstance(key, dict):
        raise InvalidCursor("the cursor belongs to another query")
    return _checked_key(key, index, partition)


def encode_shards_cursor(index: Index, query: str, positions: dict[str, dict[str, Any] | None]
                         ) -> str:
    """A cursor that resumes a query of several partitions of `index`, each at its position.

    `positions` holds the partitions not yet exhausted: each one's last key read, or None for
    a partition not read yet. `query` names what else the query asks (a status, say), so a
    cursor of another query over the same partitions is refused.
    """
    raw = json.dumps({"i": index.name, "q": query, "s": positions},
                     separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_shards_cursor(cursor: str, index: Index, query: str, partitions: tuple[str, ...]
                         ) -> dict[str, dict[str, Any] | None]:
    """The position in each partition that a cursor of `encode_shards_cursor` holds, checked."""
    body = _body(cursor)
    positions = body.get("s")
    if (body.get("i") != index.name or body.get("q") != query
            or not isinstance(positions, dict) or not positions
            or not set(positions) <= set(partitions)):
        raise InvalidCursor("the cursor belongs to another query")
    checked: dict[str, dict[str, Any] | None] = {}
    for partition in partitions:
        if partition not in positions:
            continue
        key = positions[partition]
        if key is not None and not isinstance(key, dict):
            raise InvalidCursor("the cursor is malformed")
        checked[partition] = None if key is None else _checked_key(key, index, partition)
    return checked


def _body(cursor: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        body = json.loads(raw)
    except (binascii.Error, ValueError):
        raise InvalidCursor("the cursor is not one this API handed out") from None
    if not isinstance(body, dict):
        raise InvalidCursor("the cursor belongs to another query")
    return body


def _checked_key(key: dict[str, Any], index: Index, partition: str | None) -> dict[str, Any]:
    expected = {"image_id": "S", index.partition: "S", index.sort: index.sort_type}
    if set(key) != set(expected):
        raise InvalidCursor("the cursor belongs to another query")
    for name, kind in expected.items():
        value = key[name]
        if not isinstance(value, dict) or set(value) != {kind} or not isinstance(value[kind], str):
            raise InvalidCursor("the cursor is malformed")
    if partition is not None and key[index.partition]["S"] != partition:
        raise InvalidCursor("the cursor belongs to another query")
    return key
