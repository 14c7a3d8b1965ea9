"""Plain functions behind the upload routes: the daily quota, new uploads, stored images,
waiting for results."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta

import requests
from botocore.exceptions import BotoCoreError

from imagepipe.core.formats import key_suffix
from imagepipe.core.ids import new_image_id, upload_key
from imagepipe.core.polling import poll
from imagepipe.core.quota import (
    DailyQuota,
    QuotaExceeded,
    Reservation,
    day_start,
    never_arrived,
    seconds_until_reset,
    utc_day,
)
from imagepipe.core.records import ResultRecord, ResultStore, StoreError
from imagepipe.core.records.record import expiry
from imagepipe.core.services import Services
from imagepipe.core.settings import Settings
from imagepipe.core.timestamps import format_utc
from imagepipe.core.webhooks import WebhookStore
from uploader.presign import PresignedUpload, post_upload, presign_upload

logger = logging.getLogger(__name__)

NEVER_UPLOADED = "never_uploaded"
# S3 refuses a presigned POST after its expiry, but one that began just before may still be
# sending, and the front's clock and S3's may disagree a little: wait this much longer.
UNSENT_MARGIN = timedelta(minutes=5)
# The most objects one request over the quota looks for (HEAD) among the user's pending uploads.
MAX_UNSENT_CHECKS = 100
_PAGE = 100


@dataclass(frozen=True)
class NewUpload:
    image_id: str
    key: str
    upload: PresignedUpload


def reserve_image(services: Services, quota: DailyQuota, owner: str) -> Reservation:
    """Count one more image on the user's day, or raise QuotaExceeded.

    At the limit, the units of the user's uploads that were presigned today but can no longer
    arrive are given back first, then the count is tried once more.
    """
    reservation = quota.take(owner)
    if reservation is not None:
        return reservation
    reclaim_unsent(services, quota, owner)
    # Once more even if nothing was reclaimed here: another front may have just refunded the
    # same uploads, which this one then found no longer pending.
    reservation = quota.take(owner)
    if reservation is None:
        raise QuotaExceeded(quota.limit, seconds_until_reset(quota.now()))
    return reservation


def reclaim_unsent(services: Services, quota: DailyQuota, owner: str) -> int:
    """Fail and uncount the user's uploads of today whose presigned POST expired unused.

    Found by an index query on the user's pending results (newest first, never a scan);
    an upload counts as never sent when its POST expired a margin ago and its object is not in
    the bucket. Returns how many units were given back.
    """
    now = quota.now()
    day = utc_day(now)
    first = format_utc(day_start(day))
    expired_before = format_utc(
        now - timedelta(seconds=services.settings.presign_expires_seconds) - UNSENT_MARGIN)
    reclaimed = checked = 0
    cursor = None
    while True:
        page = services.store.list_results(owner=owner, status="pending", limit=_PAGE,
                                           cursor=cursor)
        for record in page.records:
            if record.created_at < first:
                return reclaimed  # the rest are older still, counted on earlier days
            if record.source != "upload" or record.created_at >= expired_before:
                continue
            if checked == MAX_UNSENT_CHECKS:
                return reclaimed
            checked += 1
            if not never_arrived(services.clients.s3, record):
                continue  # sent, and waiting for the processor: it counts
            failed = record.failed(NEVER_UPLOADED,
                                   "the presigned upload expired before the image was sent")
            if quota.refund_unsent(failed, day):
                reclaimed += 1
        if page.next_cursor is None:
            return reclaimed
        cursor = page.next_cursor


def unsent_expiry(settings: Settings, moment: float | None = None) -> int:
    """The expires_at of a pending upload: when its POST has expired unused, plus the margin.

    The processor's outcome replaces it (with the results' own expiry, or none), so only an
    upload that never came is removed by the table's TTL, and read as gone meanwhile.
    """
    start = time.time() if moment is None else moment
    return int(start + settings.presign_expires_seconds + UNSENT_MARGIN.total_seconds())


def _new_image(services: Services, content_type: str, owner: str | None,
               counted: Reservation | None, callback_url: str | None = None, *,
               presigned: bool) -> tuple[str, str]:
    """A new image ID and its key, with its pending record written: the ID answers at once.

    A callback URL is registered with it, before the object can arrive, so that the deliverer
    finds it when the result's event comes.

    Once the record is written the image counts for good; an upload that then never comes is
    given back by `reclaim_unsent`. If the record cannot be written, its unit is given back now.
    A presigned upload's record expires soon unless its image arrives (`unsent_expiry`).
    """
    settings = services.settings
    image_id = new_image_id()
    key = upload_key(image_id, key_suffix(content_type), owner)
    expires_at = (unsent_expiry(settings) if presigned
                  else expiry(settings.result_expiry_days))
    try:
        services.store.create_pending(ResultRecord(
            image_id=image_id, bucket=settings.bucket, key=key, source="upload", owner=owner,
            expires_at=expires_at))
        if callback_url:
            # Kept while the upload may come and its delivery be retried, then the TTL clears it.
            keep = settings.presign_expires_seconds + settings.webhook_give_up_seconds + 86400
            WebhookStore(services.clients.dynamodb, settings.table).set_callback(
                image_id, callback_url, int(time.time()) + keep)
    except Exception:
        if counted is not None:
            give_back_quietly(counted)
        raise
    return image_id, key


def give_back_quietly(counted: Reservation) -> None:
    """Give a unit back after a failure; if that fails too, the first failure is what matters."""
    try:
        counted.give_back()
    except (StoreError, BotoCoreError) as exc:
        logger.warning("could not give back an image of %s: %s", counted.owner, exc)


def start_upload(services: Services, content_type: str, owner: str | None,
                 counted: Reservation | None = None, callback_url: str | None = None
                 ) -> NewUpload:
    """Choose the key, presign the POST and write the pending record."""
    settings = services.settings
    image_id, key = _new_image(services, content_type, owner, counted, callback_url,
                               presigned=True)
    upload = presign_upload(
        services.clients.s3,
        settings.bucket,
        key,
        content_type,
        settings.max_upload_bytes,
        settings.presign_expires_seconds,
    )
    logger.info("presigned upload %s (%s)", image_id, content_type)
    return NewUpload(image_id=image_id, key=key, upload=upload)


def store_image(services: Services, data: bytes, content_type: str, owner: str | None,
                counted: Reservation | None = None, callback_url: str | None = None) -> str:
    """Put the image in the bucket like any upload; the S3 event starts its processing."""
    settings = services.settings
    # The front sends the bytes itself at once: no unsent-upload expiry on its record.
    image_id, key = _new_image(services, content_type, owner, counted, callback_url,
                               presigned=False)
    upload = presign_upload(services.clients.s3, settings.bucket, key, content_type,
                            settings.max_upload_bytes, settings.presign_expires_seconds)
    try:
        post_upload(upload, data, content_type)
    except requests.HTTPError as exc:
        raise StoreError(f"storing {key}: {exc}", str(exc.response.status_code)) from exc
    except requests.RequestException as exc:
        raise StoreError(f"storing {key}: {exc}") from exc
    logger.info("stored image %s (%d bytes, %s)", image_id, len(data), content_type)
    return image_id


def wait_for_result(store: ResultStore, image_id: str, timeout: float) -> ResultRecord | None:
    """Poll until the image is done or failed, backing off; the last record read, or None."""
    return poll(lambda: store.get(image_id),
                lambda record: record is None or record.status != "pending", timeout)
