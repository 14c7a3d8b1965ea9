"""Webhooks: where a result's event is sent, the signature over it, and how its delivery went.

What the front registers and the deliverer reads are small items in the results table, beside
the quota counters: ``webhook#<sub>`` holds a user's default URL and secret, and
``callback#<image_id>`` the URL one upload or import asked for. Neither carries an index key,
so neither shows among results. The delivery's account (attempts, last status) sits on the
result itself (the record's `webhook` field).

The signature is Stripe's scheme: ``Imagepipe-Signature: t=<unix seconds>,v1=<hex>`` where
the hex is HMAC-SHA256 under the user's secret of ``f"{t}.{body}"``. The timestamp is signed
with the body so that a captured delivery cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from imagepipe.core.aws import error_code
from imagepipe.core.records import StoreError, WebhookDelivery, writes
from imagepipe.core.records.codec import FIELDS, TTL_ATTRIBUTE, WEBHOOK_ATTRIBUTE, to_dynamo

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "Imagepipe-Signature"
EVENT_ID_HEADER = "Imagepipe-Event-Id"
# Receivers should refuse a signature older than this (as Stripe's libraries do by default).
TOLERANCE_SECONDS = 300
USER_PREFIX = "webhook#"
CALLBACK_PREFIX = "callback#"
# Anyone's, with sign-in off: there are no users then, and one default serves them all.
NOBODY = "-"
# Marks a string as a signing secret (not a secret itself), as Stripe's whsec_ does.
_SECRET_PREFIX = "whsec_"  # noqa: S105


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header's value for this body sent at this time."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(secret: str, header: str, body: bytes, now: float | None = None,
           tolerance: int = TOLERANCE_SECONDS) -> bool:
    """Whether the header signs this body under the secret, recently enough."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).rpartition("v1=")[2]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def new_secret() -> str:
    """A new signing secret, shown to its user once."""
    return _SECRET_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class UserWebhook:
    """A user's default callback URL ("" when none) and signing secret ("" when none yet)."""

    url: str = ""
    secret: str = ""


class WebhookStore:
    """The webhook items of the results table, and the delivery account on a result."""

    def __init__(self, dynamodb: Any, table: str) -> None:
        self._db = dynamodb
        self.table = table

    def user(self, owner: str | None) -> UserWebhook:
        """The user's default URL and secret."""
        item = self._get(USER_PREFIX + (owner or NOBODY))
        return UserWebhook(url=_text(item, "url"), secret=_text(item, "secret"))

    def set_default_url(self, owner: str | None, url: str) -> UserWebhook:
        """Register (or with "", remove) the user's default URL; the secret stays."""
        current = self.user(owner)
        updated = UserWebhook(url=url, secret=current.secret)
        self._put_user(owner, updated)
        return updated

    def rotate_secret(self, owner: str | None) -> str:
        """A new secret for the user, replacing the old one at once."""
        secret = new_secret()
        self._put_user(owner, UserWebhook(url=self.user(owner).url, secret=secret))
        return secret

    def set_callback(self, image_id: str, url: str, expires_at: int) -> None:
        """The URL one image's event goes to, kept until `expires_at` (epoch seconds)."""
        self._put({"image_id": {"S": CALLBACK_PREFIX + image_id}, "url": {"S": url},
                   TTL_ATTRIBUTE: {"N": str(expires_at)}})

    def callback(self, image_id: str) -> str:
        """The URL this image's upload asked for, or ""."""
        return _text(self._get(CALLBACK_PREFIX + image_id), "url")

    def forget_callback(self, image_id: str) -> None:
        """Remove the URL of a deleted image, so that nothing of it stays behind."""
        try:
            self._db.delete_item(**writes.delete(self.table, CALLBACK_PREFIX + image_id))
        except ClientError as exc:
            raise StoreError(f"deleting the callback of {image_id}: {exc}",
                             error_code(exc)) from exc

    def record_delivery(self, image_id: str, delivery: WebhookDelivery) -> None:
        """Put the delivery's account on the result, if the result is (still) there."""
        kind = next(row.kind for row in FIELDS if row.attribute == WEBHOOK_ATTRIBUTE)
        try:
            self._db.update_item(
                TableName=self.table, Key={"image_id": {"S": image_id}},
                UpdateExpression="SET #w = :w",
                ConditionExpression="attribute_exists(image_id)",
                ExpressionAttributeNames={"#w": WEBHOOK_ATTRIBUTE},
                ExpressionAttributeValues={":w": to_dynamo(kind.to_attribute(delivery))})
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return
            raise StoreError(f"recording the webhook of {image_id}: {exc}",
                             error_code(exc)) from exc

    def _put_user(self, owner: str | None, webhook: UserWebhook) -> None:
        item = {"image_id": {"S": USER_PREFIX + (owner or NOBODY)}}
        if webhook.url:
            item["url"] = {"S": webhook.url}
        if webhook.secret:
            item["secret"] = {"S": webhook.secret}
        self._put(item)

    def _get(self, key: str) -> dict[str, Any]:
        try:
            response = self._db.get_item(TableName=self.table, Key={"image_id": {"S": key}},
                                         ConsistentRead=True)
        except ClientError as exc:
            raise StoreError(f"reading {key}: {exc}", error_code(exc)) from exc
        return dict(response.get("Item") or {})

    def _put(self, item: dict[str, Any]) -> None:
        try:
            self._db.put_item(TableName=self.table, Item=item)
        except ClientError as exc:
            raise StoreError(f"writing {item['image_id']['S']}: {exc}", error_code(exc)) from exc


def _text(item: dict[str, Any], name: str) -> str:
    return str(item.get(name, {}).get("S", ""))
