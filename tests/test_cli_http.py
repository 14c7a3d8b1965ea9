"""The command line's session tries a GET again when the server dropped the connection."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import requests

from imagepipe.cli.http import new_session


class DropFirst:
    """A server that closes its first connection without answering, then answers 200."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                head = conn.recv(65536)
                self.requests.append(head.split(b"\r\n", 1)[0])
                if len(self.requests) > 1:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")


@pytest.fixture
def server() -> Iterator[DropFirst]:
    made = DropFirst()
    yield made
    made.sock.close()


def test_a_get_is_tried_again_on_a_new_connection(server: DropFirst) -> None:
    reply = new_session().get(f"http://127.0.0.1:{server.port}/api/results/x", timeout=5)
    assert reply.status_code == 200
    assert server.requests == [b"GET /api/results/x HTTP/1.1"] * 2


def test_a_post_is_never_sent_twice(server: DropFirst) -> None:
    with pytest.raises(requests.ConnectionError):
        new_session().post(f"http://127.0.0.1:{server.port}/api/uploads", json={}, timeout=5)
    assert server.requests == [b"POST /api/uploads HTTP/1.1"]
