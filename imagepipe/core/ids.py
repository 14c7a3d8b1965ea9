"""Image IDs and the object keys they map to."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

UPLOAD_PREFIX = "uploads/"

# 22 URL-safe base64 characters carry 132 bits; new IDs use 128 of them.
_ID_RE = re.compile(r"[A-Za-z0-9_-]{22}")
_UPLOAD_KEY_RE = re.compile(r"uploads/([A-Za-z0-9_-]{22})\.[a-z0-9]{1,5}")


def new_image_id() -> str:
    """A random, unguessable, URL-safe image ID (128 bits)."""
    return secrets.token_urlsafe(16)


def is_image_id(value: str) -> bool:
    """Whether `value` has the shape of an image ID."""
    return bool(_ID_RE.fullmatch(value))


def upload_key(image_id: str, extension: str) -> str:
    """The server-chosen object key of an upload; never derived from a client's filename."""
    return f"{UPLOAD_PREFIX}{image_id}.{extension}"


def image_id_for_object(bucket: str, key: str) -> str:
    """The image ID of an object: the one in an upload key, else derived from bucket and key.

    Derived IDs are stable across re-deliveries and let a tool know an object's ID before
    it is processed.
    """
    match = _UPLOAD_KEY_RE.fullmatch(key)
    if match:
        return match.group(1)
    digest = hashlib.sha256(f"{bucket}\0{key}".encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")
