"""Presigned S3 POST uploads: the browser sends the bytes straight to the bucket."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import requests

from imagepipe.core.timestamps import format_utc


@dataclass(frozen=True)
class PresignedUpload:
    url: str
    fields: dict[str, str]
    expires_at: str


def presign_upload(
    s3: Any,
    bucket: str,
    key: str,
    content_type: str,
    max_bytes: int,
    expires_seconds: int,
) -> PresignedUpload:
    """A POST policy that admits exactly this key and content type, 1 to max_bytes long.

    S3 enforces the policy; moto does not, which is why the tests decode it.
    """
    expires_at = datetime.now(timezone.utc) + timedelta(seconds=expires_seconds)
    post = s3.generate_presigned_post(
        Bucket=bucket,
        Key=key,
        Fields={"Content-Type": content_type},
        Conditions=[
            {"Content-Type": content_type},
            ["content-length-range", 1, max_bytes],
        ],
        ExpiresIn=expires_seconds,
    )
    return PresignedUpload(
        url=post["url"],
        fields=dict(post["fields"]),
        expires_at=format_utc(expires_at, timespec="seconds"),
    )


def post_upload(upload: PresignedUpload, data: bytes, content_type: str,
                timeout: float = 30.0) -> None:
    """Send the bytes as a browser sends them, for objects the front stores itself.

    The front's own objects are POSTed rather than PUT because the bucket tells the
    interactive lane of POSTs under uploads/ only (imagepipe.core.provision).
    """
    response = requests.post(
        upload.url, data=upload.fields,
        files={"file": ("image", data, content_type)}, timeout=timeout,
    )
    response.raise_for_status()
