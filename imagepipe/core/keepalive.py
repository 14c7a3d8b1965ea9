"""Keep-alive that survives a refused request body: drain a small rest, else close."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

logger = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# gunicorn drains this much of an unread body by itself; past it, it drops a connection it has
# already announced as kept alive, and the client's next request on it gets no answer.
DRAIN_LIMIT = 64 * 1024
_CHUNK = 16 * 1024


class _TrackedInput:
    """wsgi.input that knows whether the body has been read to its end."""

    def __init__(self, stream: Any, length: int | None) -> None:
        self._stream = stream
        # None: a chunked body, read until the server says it ends.
        self._left = length
        self.finished = length == 0

    def read(self, size: int | None = -1) -> bytes:
        if self.finished:
            return b""
        if self._left is not None:
            size = self._left if size is None or size < 0 else min(size, self._left)
        data = self._stream.read(size) if size is not None and size >= 0 else self._stream.read()
        self._consumed(data, asked=size)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        if self.finished:
            return b""
        if self._left is not None:
            size = self._left if size is None or size < 0 else min(size, self._left)
        data = self._stream.readline(size) if size is not None and size >= 0 \
            else self._stream.readline()
        self._consumed(data, asked=None)
        return data

    def readlines(self, hint: int | None = None) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def _consumed(self, data: bytes, asked: int | None) -> None:
        if self._left is not None:
            self._left -= len(data)
            self.finished = self._left <= 0
        # An empty read is the end of a chunked body (or a client that went away).
        if not data and asked != 0:
            self.finished = True

    def drain(self, limit: int) -> bool:
        """Read and drop the rest of the body if it is at most `limit` bytes; whether it ended."""
        if self._left is not None and self._left > limit:
            return False
        drained = 0
        while not self.finished and drained <= limit:
            drained += len(self.read(_CHUNK))
        return self.finished


def close_on_unread_body(app: WSGIApp, drain_limit: int = DRAIN_LIMIT) -> WSGIApp:
    """Wrap a WSGI app so that an answer given before the body was read keeps the connection sane.

    A small rest is drained, so the connection stays alive; a larger one is not read at all,
    and the answer closes the connection instead of leaving bytes a server would mistake for
    the next request, or drop the connection over without saying so.
    """

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = _content_length(environ)
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not length and not chunked:
            return app(environ, start_response)
        body = _TrackedInput(environ["wsgi.input"], None if chunked else length)
        environ["wsgi.input"] = body

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if not body.finished and not body.drain(drain_limit):
                logger.debug("closing the connection after %s: the body was left unread",
                             status)
                headers = [(name, value) for name, value in headers
                           if name.lower() != "connection"]
                headers.append(("Connection", "close"))
                _force_close(start_response)
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return guarded


def _content_length(environ: dict[str, Any]) -> int | None:
    try:
        return max(0, int(environ.get("CONTENT_LENGTH") or 0))
    except ValueError:
        return None


def _force_close(start_response: Callable[..., Any]) -> None:
    # gunicorn drops an application's Connection header (hop-by-hop, PEP 3333) and decides
    # keep-alive itself; its start_response is a method of the response, which can be told.
    response = getattr(start_response, "__self__", None)
    force_close = getattr(response, "force_close", None)
    if callable(force_close):
        force_close()
