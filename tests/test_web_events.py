"""GET /api/events: server-sent events of the caller's results, resumed by Last-Event-ID."""

from __future__ import annotations

import dataclasses
import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from imagepipe.core.identity import ADMINS_GROUP, Caller, InvalidToken
from imagepipe.core.settings import Settings
from web.events import EventHub, EventsThread, make_events_app


class FakeVerifier:
    """Tokens are the names of callers: "alice", "bob", "admin"."""

    def verify(self, token: str) -> Caller:
        if token not in ("alice", "bob", "admin"):
            raise InvalidToken("no such token")
        groups = frozenset({ADMINS_GROUP}) if token == "admin" else frozenset()
        return Caller(sub=f"sub-{token}", username=token, groups=groups)


@pytest.fixture
def server(settings: Settings) -> Iterator[EventsThread]:
    hub = EventHub()
    settings = dataclasses.replace(settings, auth=True)
    running = EventsThread(make_events_app(settings, hub, FakeVerifier(), 0.2), hub).start()
    yield running
    running.stop()


def _event(n: int, owner: str) -> dict[str, Any]:
    return {"event_id": f"e{n}", "type": "result.done", "image_id": f"img{n}", "owner": owner}


class Stream:
    def __init__(self, port: int, token: str | None, last_event_id: str | None = None) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        self.connection.request("GET", "/api/events", headers=headers)
        self.response = self.connection.getresponse()

    def events(self, count: int) -> list[dict[str, Any]]:
        """The next `count` events, skipping comments."""
        found: list[dict[str, Any]] = []
        fields: dict[str, str] = {}
        while len(found) < count:
            line = self.response.readline().decode().rstrip("\n")
            if not line:
                if "data" in fields:
                    found.append({"id": fields["id"], "event": fields["event"],
                                  **json.loads(fields["data"])})
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
        return found

    def close(self) -> None:
        self.connection.close()


def test_a_stream_gets_the_callers_own_results_and_heartbeats(server: EventsThread) -> None:
    alice = Stream(server.port, "alice")
    admin = Stream(server.port, "admin")
    assert alice.response.status == 200
    assert alice.response.getheader("Content-Type") == "text/event-stream"

    server.publish(_event(1, "sub-bob"))
    server.publish(_event(2, "sub-alice"))

    got = alice.events(1)
    assert [(e["id"], e["event"], e["image_id"]) for e in got] == [("e2", "result", "img2")]
    assert [e["id"] for e in admin.events(2)] == ["e1", "e2"]
    # Idle, the stream still speaks: a heartbeat comment within the interval
    assert alice.response.readline().startswith(b":")
    alice.close()
    admin.close()


def test_a_reconnect_with_last_event_id_gets_what_it_missed(server: EventsThread) -> None:
    first = Stream(server.port, "alice")
    for n in range(1, 4):
        server.publish(_event(n, "sub-alice"))
    assert [e["id"] for e in first.events(3)] == ["e1", "e2", "e3"]
    first.close()
    server.publish(_event(4, "sub-alice"))
    server.publish(_event(5, "sub-bob"))

    again = Stream(server.port, "alice", last_event_id="e2")

    assert [e["id"] for e in again.events(2)] == ["e3", "e4"]
    again.close()


@pytest.mark.parametrize("token", [None, "mallory"])
def test_without_a_valid_token_the_stream_is_refused(server: EventsThread,
                                                    token: str | None) -> None:
    stream = Stream(server.port, token)

    assert stream.response.status == 401
    assert json.loads(stream.response.read())["error"]["code"] == "unauthorized"
    stream.close()
