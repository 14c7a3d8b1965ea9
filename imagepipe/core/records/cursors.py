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
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        body = json.loads(raw)
    except (binascii.Error, ValueError):
        raise InvalidCursor("the cursor is not one this API handed out") from None
    key = body.get("k") if isinstance(body, dict) else None
    expected = {"image_id": "S", index.partition: "S", index.sort: index.sort_type}
    if not isinstance(key, dict) or body.get("i") != index.name or set(key) != set(expected):
        raise InvalidCursor("the cursor belongs to another query")
    for name, kind in expected.items():
        value = key[name]
        if not isinstance(value, dict) or set(value) != {kind} or not isinstance(value[kind], str):
            raise InvalidCursor("the cursor is malformed")
    if partition is not None and key[index.partition]["S"] != partition:
        raise InvalidCursor("the cursor belongs to another query")
    return key
