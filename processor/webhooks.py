"""The webhook deliverer: result events from its queue, POSTed signed to their callback URLs.

Its queue is subscribed to the results topic. Each event goes to the URL its upload asked for,
else to its owner's default, signed with the owner's secret (imagepipe.core.webhooks). A 2xx
answer is delivered; anything else (another status, no answer, a guard refusal, a redirect,
which is never followed) is tried again: the message is hidden for a backoff that doubles per
attempt (IMAGEPIPE_WEBHOOK_BACKOFF, capped at SQS's 12 hours) until IMAGEPIPE_WEBHOOK_GIVE_UP
has passed since the first attempt. Every attempt is recorded on the result.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from imagepipe.core.egress import (
    AddressGuard,
    Connector,
    FetchError,
    Resolver,
    open_guarded,
    parse_url,
    resolve,
    system_resolver,
)
from imagepipe.core.records import StoreError, WebhookDelivery
from imagepipe.core.result_events import event_from_message
from imagepipe.core.settings import Settings
from imagepipe.core.timestamps import utc_now
from imagepipe.core.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, WebhookStore, sign

logger = logging.getLogger(__name__)

# ChangeMessageVisibility takes at most 12 hours.
MAX_BACKOFF_SECONDS = 12 * 3600
_USER_AGENT = "imagepipe-webhook/1"


def backoff(base: int, attempt: int) -> int:
    """Seconds to wait after the `attempt`-th failed attempt: base, 2 base, 4 base, ..."""
    return int(min(base * 2 ** max(0, attempt - 1), MAX_BACKOFF_SECONDS))


class WebhookDeliverer:
    """Delivers the events of one queue until stopped."""

    def __init__(
        self,
        settings: Settings,
        sqs: Any,
        webhooks: WebhookStore,
        queue_url: str,
        clock: Callable[[], float] = time.time,
        resolver: Resolver = system_resolver,
        connector: Connector = socket.create_connection,
        threads: int = 8,
    ) -> None:
        self.settings = settings
        self._sqs = sqs
        self._webhooks = webhooks
        self.queue_url = queue_url
        self._clock = clock
        self._resolver = resolver
        self._connector = connector
        self._guard = AddressGuard(settings.callback_allow_list())
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="webhook")
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Return from run() after the receive in hand."""
        self._stopping.set()

    def run(self, max_receives: int | None = None) -> int:
        """Receive and deliver until stop(); how many messages it handled."""
        handled = receives = 0
        logger.info("delivering webhooks from %s", self.queue_url)
        try:
            while not self._stopping.is_set() and (max_receives is None
                                                     or receives < max_receives):
                receives += 1
                try:
                    messages = self._sqs.receive_message(
                        QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                        WaitTimeSeconds=self.settings.poll_seconds,
                        AttributeNames=["ApproximateReceiveCount",
                                        "ApproximateFirstReceiveTimestamp"],
                    ).get("Messages", [])
                except (ClientError, BotoCoreError) as exc:
                    logger.warning("receiving webhook events failed: %s", exc)
                    self._stopping.wait(1.0)
                    continue
                list(self._pool.map(self._handle_safely, messages))
                handled += len(messages)
        finally:
            self._pool.shutdown(wait=True)
        return handled

    def _handle_safely(self, message: dict[str, Any]) -> None:
        # One bad message never stops the deliverer; it comes back after its visibility.
        try:
            self.handle(message)
        except Exception:
            logger.exception("webhook message %s failed", message.get("MessageId", "?"))

    def handle(self, message: dict[str, Any]) -> None:
        """Deliver one event; delete its message when delivered, given up or undeliverable."""
        message_id = message.get("MessageId", "?")
        try:
            event = event_from_message(message["Body"])
            image_id = str(event["image_id"])
        except (KeyError, TypeError, ValueError) as exc:
            logger.error("webhook message %s is not a result event, dropping it: %s",
                         message_id, exc)
            self._delete(message)
            return
        owner = event.get("owner")
        user = self._webhooks.user(owner)
        url = self._webhooks.callback(image_id) or user.url
        if not url:
            self._delete(message)
            return
        if not user.secret:
            logger.warning("image %s: its owner has no webhook secret; not delivering", image_id)
            self._delete(message)
            return
        attributes = message.get("Attributes", {})
        attempt = int(attributes.get("ApproximateReceiveCount", 1))
        status = self._post(url, event, user.secret)
        delivered = status is not None and 200 <= status < 300
        try:
            self._webhooks.record_delivery(image_id, WebhookDelivery(
                attempts=attempt, last_status=status,
                delivered_at=utc_now() if delivered else None))
        except StoreError as exc:
            logger.warning("image %s: could not record the webhook attempt: %s", image_id, exc)
        first = int(attributes.get("ApproximateFirstReceiveTimestamp", 0)) / 1000 or self._clock()
        if delivered:
            logger.info("image %s: event %s delivered (attempt %d)", image_id,
                        event.get("event_id"), attempt)
            self._delete(message)
        elif self._clock() - first >= self.settings.webhook_give_up_seconds:
            logger.warning("image %s: giving up the webhook after %d attempts (last: %s)",
                           image_id, attempt, status)
            self._delete(message)
        else:
            delay = backoff(self.settings.webhook_backoff_seconds, attempt)
            logger.info("image %s: webhook attempt %d answered %s; again in %d s", image_id,
                        attempt, status, delay)
            self._retry_in(message, delay)

    def _post(self, url: str, event: dict[str, Any], secret: str) -> int | None:
        """POST the signed event; the answer's status, or None if there was none."""
        body = json.dumps(event).encode()
        deadline = time.monotonic() + self.settings.webhook_timeout_seconds
        headers = {"Content-Type": "application/json", "User-Agent": _USER_AGENT,
                   SIGNATURE_HEADER: sign(secret, body, int(self._clock())),
                   EVENT_ID_HEADER: str(event.get("event_id", ""))}
        try:
            target = parse_url(url)
            addresses = resolve(target, self._guard, self._resolver, deadline)
            connection, response = open_guarded(target, addresses, self._guard,
                                                self._connector, None, deadline,
                                                method="POST", headers=headers, body=body)
        except FetchError as exc:
            logger.info("webhook to %s: %s", url, exc)
            return None
        try:
            return int(response.status)
        finally:
            connection.close()

    def _delete(self, message: dict[str, Any]) -> None:
        try:
            self._sqs.delete_message(QueueUrl=self.queue_url,
                                     ReceiptHandle=message["ReceiptHandle"])
        except (ClientError, BotoCoreError) as exc:
            # It comes back and is delivered again: at least once.
            logger.warning("could not delete webhook message %s: %s",
                           message.get("MessageId"), exc)

    def _retry_in(self, message: dict[str, Any], seconds: int) -> None:
        try:
            self._sqs.change_message_visibility(QueueUrl=self.queue_url,
                                                ReceiptHandle=message["ReceiptHandle"],
                                                VisibilityTimeout=seconds)
        except (ClientError, BotoCoreError) as exc:
            # It comes back after the queue's own visibility timeout instead.
            logger.warning("could not delay webhook message %s: %s",
                           message.get("MessageId"), exc)
