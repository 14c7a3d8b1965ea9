"""Image IDs and the object keys they map to."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

UPLOAD_PREFIX = "uploads/"
# Objects under users/<owner>/ belong to that user, however they reached the bucket.
USERS_PREFIX = "users/"

# 22 URL-safe base64 characters carry 132 bits; new IDs use 128 of them.
_ID_RE = re.compile(r"[A-Za-z0-9_-]{22}")
# An owner is a Cognito user's `sub`: a UUID, kept to a safe alphabet and length.
_OWNER = r"[A-Za-z0-9-]{1,64}"
_OWNER_RE = re.compile(_OWNER)
_UPLOAD_KEY_RE = re.compile(rf"uploads/(?:({_OWNER})/)?([A-Za-z0-9_-]{{22}})\.[a-z0-9]{{1,5}}")
_USERS_KEY_RE = re.compile(rf"users/({_OWNER})/.+", re.DOTALL)


def new_image_id() -> str:
    """A random, unguessable, URL-safe image ID (128 bits)."""
    return secrets.token_urlsafe(16)


def is_image_id(value: str) -> bool:
    """Whether `value` has the shape of an image ID."""
    return bool(_ID_RE.fullmatch(value))


def is_owner(value: str) -> bool:
    """Whether `value` can name an owner in an object key."""
    return bool(_OWNER_RE.fullmatch(value))


def upload_key(image_id: str, extension: str, owner: str | None = None) -> str:
    """The server-chosen object key of an upload; never derived from a client's filename.

    The owner is part of the key, so whoever reads the object knows whose it is.
    """
    if owner is None:
        return f"{UPLOAD_PREFIX}{image_id}.{extension}"
    if not is_owner(owner):
        raise ValueError(f"{owner!r} cannot name an owner in a key")
    return f"{UPLOAD_PREFIX}{owner}/{image_id}.{extension}"


def owner_of_key(key: str) -> str | None:
    """The user an object belongs to: named by its upload key or its users/<owner>/ prefix."""
    match = _UPLOAD_KEY_RE.fullmatch(key) or _USERS_KEY_RE.fullmatch(key)
    return match.group(1) if match else None


def image_id_for_object(bucket: str, key: str) -> str:
    """The image ID of an object: the one in an upload key, else derived from bucket and key.

    Derived IDs are stable across re-deliveries and let a tool know an object's ID before
    it is processed.
    """
    match = _UPLOAD_KEY_RE.fullmatch(key)
    if match:
        return match.group(2)
    digest = hashlib.sha256(f"{bucket}\0{key}".encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")
