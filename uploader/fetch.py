"""Fetch an image from a URL for an import, never reaching into our own network.

The guard (imagepipe.core.egress) checks every address before and after connecting; here
every redirect is a new URL checked the same way, and size and time are bounded over the
whole fetch.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urljoin

from imagepipe.core.egress import (
    AddressGuard,
    Connector,
    FetchError,
    GuardedConnection,
    Resolver,
    open_guarded,
    parse_url,
    refusal_reason,
    remaining,
    resolve,
    system_resolver,
)
from imagepipe.core.formats import CONTENT_TYPES, SNIFF_BYTES, sniff_content_type
from imagepipe.core.settings import AllowedAddress

__all__ = ["MAX_REDIRECTS", "FetchError", "FetchedImage", "fetch_image", "refusal_reason"]

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 3
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_HEADERS = {
    "User-Agent": "imagepipe-import/1",
    "Accept": ", ".join(CONTENT_TYPES) + ", image/*;q=0.8",
    # Compressed bodies could expand past the byte cap after the check.
    "Accept-Encoding": "identity",
}


@dataclass(frozen=True)
class FetchedImage:
    data: bytes
    content_type: str
    url: str


def fetch_image(
    url: str,
    *,
    max_bytes: int,
    timeout: float,
    allow: Sequence[AllowedAddress] = (),
    resolver: Resolver = system_resolver,
    connector: Connector = socket.create_connection,
    ssl_context: ssl.SSLContext | None = None,
) -> FetchedImage:
    """Fetch the image at url within max_bytes and timeout seconds, following few redirects.

    `resolver` and `connector` are the system's; tests hand in their own to play a name that
    resolves to a private address or a network that delivers the connection elsewhere.
    """
    guard = AddressGuard(allow)
    deadline = time.monotonic() + timeout
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        target = parse_url(current)
        addresses = resolve(target, guard, resolver, deadline)
        connection, response = open_guarded(target, addresses, guard, connector, ssl_context,
                                            deadline, headers=_HEADERS)
        try:
            if response.status in _REDIRECT_STATUSES:
                location = response.getheader("Location")
                if not location:
                    raise FetchError(502, "fetch_failed",
                                     f"the server answered {response.status} without a Location")
                current = urljoin(current, location.strip())
                continue
            if not 200 <= response.status < 300:
                raise FetchError(502, "fetch_failed",
                                 f"the server answered {response.status} {response.reason}",
                                 upstream_status=response.status)
            data, content_type = _read_image(response, connection, max_bytes, deadline)
        finally:
            connection.close()
        logger.info("fetched %d bytes (%s) from %s", len(data), content_type, target.host)
        return FetchedImage(data=data, content_type=content_type, url=current)
    raise FetchError(400, "too_many_redirects",
                     f"the URL redirects more than {MAX_REDIRECTS} times")


def _read_image(response: http.client.HTTPResponse, connection: GuardedConnection,
                max_bytes: int, deadline: float) -> tuple[bytes, str]:
    """The body, refused as soon as it is too large or does not start like an image."""
    length = response.getheader("Content-Length")
    if length and length.strip().isdigit() and int(length) > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    content_type: str | None = None
    try:
        while True:
            if connection.sock is not None:
                connection.sock.settimeout(remaining(deadline))
            chunk = response.read(min(_CHUNK, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(max_bytes)
            if content_type is None and size >= SNIFF_BYTES:
                content_type = _sniffed(b"".join(chunks))
    except TimeoutError:
        raise FetchError(504, "fetch_timeout", "the image took too long to fetch") from None
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(502, "fetch_failed", f"the download broke off: {exc}") from None
    data = b"".join(chunks)
    if not data:
        raise FetchError(400, "empty_image", "the URL returned an empty body")
    return data, content_type or _sniffed(data)


def _sniffed(head: bytes) -> str:
    content_type = sniff_content_type(head)
    if content_type is None:
        raise FetchError(400, "not_an_image",
                         f"the URL does not return a supported image ({', '.join(CONTENT_TYPES)})")
    return content_type


def _too_large(max_bytes: int) -> FetchError:
    return FetchError(413, "too_large", f"the image is more than the {max_bytes} byte limit",
                      max_bytes=max_bytes)
