"""GET /api/events: the caller's results as server-sent events, served apart from the front.

An open stream is a coroutine and a small queue here, not one of gunicorn's worker threads:
this is its own asyncio (aiohttp) process beside the front, which the ALB (and locally the
page, by the URL /api/config gives) reaches for /api/events. Each instance feeds itself from
its own SQS queue subscribed to the results topic (`QueueFeed`), never by reading the table
per client, and fans every event out to the streams whose caller may see it: their own
results, and every result for admins.

A client that reconnects sends `Last-Event-ID`; the events since then are replayed from a
ring of the instance's recent events. Comments every IMAGEPIPE_EVENTS_HEARTBEAT seconds keep
idle connections open through proxies (the ALB drops one idle for 60 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web
from botocore.exceptions import BotoCoreError, ClientError

from imagepipe.core.auth import ACCESS_COOKIE
from imagepipe.core.errors import ApiError
from imagepipe.core.identity import Caller, InvalidToken, KeysUnavailable, TokenVerifier
from imagepipe.core.result_events import event_from_message
from imagepipe.core.settings import Settings

logger = logging.getLogger(__name__)

EVENT_NAME = "result"
# Events a stream may fall behind by before it is closed (the browser reconnects and resumes).
_BACKLOG = 1000
_RECENT = 2000

Event = dict[str, Any]


class EventHub:
    """The events of this instance: a ring of recent ones, and a queue per open stream.

    Used from the event loop's thread only; the feed hands events over with
    call_soon_threadsafe.
    """

    def __init__(self, recent: int = _RECENT) -> None:
        self._recent: deque[Event] = deque(maxlen=recent)
        self._streams: set[asyncio.Queue[Event | None]] = set()

    @property
    def streams(self) -> int:
        return len(self._streams)

    def publish(self, event: Event) -> None:
        self._recent.append(event)
        for queue in list(self._streams):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # Too slow a reader: end its stream (it resumes by Last-Event-ID) rather than
                # hold events for it without bound.
                self._streams.discard(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)

    def since(self, last_event_id: str | None) -> list[Event]:
        """The recent events after the one with this ID; none if it is unknown or unset."""
        if not last_event_id:
            return []
        events = list(self._recent)
        for position in range(len(events) - 1, -1, -1):
            if events[position].get("event_id") == last_event_id:
                return events[position + 1:]
        return []

    def subscribe(self) -> asyncio.Queue[Event | None]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=_BACKLOG)
        self._streams.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event | None]) -> None:
        self._streams.discard(queue)


def may_see(caller: Caller | None, event: Event) -> bool:
    """Whether a stream's caller may see an event: their own, any for admins or with no sign-in."""
    return caller is None or caller.is_admin or event.get("owner") == caller.sub


def sse(event: Event) -> bytes:
    """One event in the text/event-stream format."""
    return (f"id: {event.get('event_id', '')}\nevent: {EVENT_NAME}\n"
            f"data: {json.dumps(event, separators=(',', ':'))}\n\n").encode()


def _json_error(error: ApiError) -> web.Response:
    return web.json_response(error.to_json(), status=error.status_code,
                             headers=error.headers or None)


def make_events_app(settings: Settings, hub: EventHub, verifier: TokenVerifier | None,
                    heartbeat_seconds: float) -> web.Application:
    """The aiohttp application of GET /api/events (and /healthz for the load balancer)."""
    origins = set(settings.web_origin_list())

    async def caller_of(request: web.Request) -> Caller | None:
        if not settings.auth:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else request.cookies.get(
            ACCESS_COOKIE, "")
        if not token:
            raise ApiError(401, "unauthorized", "sign in first",
                           headers={"WWW-Authenticate": "Bearer"})
        assert verifier is not None
        try:
            # Verifying may fetch the pool's keys: off the event loop.
            return await asyncio.to_thread(verifier.verify, token)
        except InvalidToken:
            raise ApiError(401, "unauthorized", "the access token is not valid; sign in again",
                           headers={"WWW-Authenticate": "Bearer"}) from None
        except KeysUnavailable:
            raise ApiError(503, "identity_unavailable",
                           "sign-in cannot be checked right now; try again shortly") from None

    def cors(request: web.Request) -> dict[str, str]:
        # The local page is on the front's port, this is on another: another origin.
        origin = request.headers.get("Origin", "")
        if origin in origins:
            return {"Access-Control-Allow-Origin": origin,
                    "Access-Control-Allow-Credentials": "true", "Vary": "Origin"}
        return {}

    async def events(request: web.Request) -> web.StreamResponse:
        try:
            caller = await caller_of(request)
        except ApiError as error:
            response = _json_error(error)
            response.headers.update(cors(request))
            return response
        stream = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            # Proxies must pass each event on at once, not buffer the stream.
            "X-Accel-Buffering": "no", **cors(request)})
        await stream.prepare(request)
        queue = hub.subscribe()
        try:
            # How long the browser waits before reconnecting when the stream drops.
            await stream.write(b"retry: 2000\n: connected\n\n")
            for event in hub.since(request.headers.get("Last-Event-ID")):
                if may_see(caller, event):
                    await stream.write(sse(event))
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), heartbeat_seconds)
                except asyncio.TimeoutError:
                    await stream.write(b": heartbeat\n\n")
                    continue
                if event is None:
                    break
                if may_see(caller, event):
                    await stream.write(sse(event))
        except ConnectionResetError:
            pass  # the client went away; a cancelled handler (server stop) ends here too
        finally:
            hub.unsubscribe(queue)
        return stream

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "streams": hub.streams})

    app = web.Application()
    app.router.add_get("/api/events", events)
    app.router.add_get("/healthz", healthz)
    return app


class QueueFeed:
    """This instance's queue on the results topic, read on a thread into the hub.

    The queue is made at start and removed at stop: events are for the streams open now, so
    it keeps them a few minutes only.
    """

    def __init__(self, sqs: Any, queue_url: str, deliver: Callable[[Event], None],
                 wait_seconds: int = 20) -> None:
        self._sqs = sqs
        self.queue_url = queue_url
        self._deliver = deliver
        self._wait = wait_seconds
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="events-feed", daemon=True)

    def start(self) -> QueueFeed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.poll_once()

    def poll_once(self) -> int:
        """One receive into the hub, the messages then deleted; how many there were."""
        try:
            messages = self._sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                WaitTimeSeconds=self._wait).get("Messages", [])
        except (ClientError, BotoCoreError) as exc:
            logger.warning("reading the events queue failed: %s", exc)
            self._stopping.wait(1.0)
            return 0
        for message in messages:
            try:
                self._deliver(event_from_message(message["Body"]))
            except (KeyError, ValueError) as exc:
                logger.warning("dropping a message that is not an event: %s", exc)
        if messages:
            with contextlib.suppress(ClientError, BotoCoreError):
                self._sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)])
        return len(messages)


def instance_queue_name(topic_arn: str) -> str:
    """A queue name of its own for one events instance, after the topic's (`<topic>-live-*`:
    the stack's role may make only those)."""
    return f"{topic_arn.rsplit(':', 1)[-1][:58]}-live-{uuid.uuid4().hex[:16]}"


class EventsThread:
    """The events app served on a thread of its own (tests, the stream benchmark)."""

    def __init__(self, app: web.Application, hub: EventHub, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.hub = hub
        self.loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        self._host = host
        self.port = port
        self._thread = threading.Thread(target=self.loop.run_forever, name="events-server",
                                        daemon=True)

    def start(self) -> EventsThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self.port, backlog=4096)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def publish(self, event: Event) -> None:
        """Hand an event to the hub from any thread, as the queue feed does."""
        self.loop.call_soon_threadsafe(self.hub.publish, event)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
