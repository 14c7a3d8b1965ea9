"""Daily quotas: how many images each user added on a UTC day, counted in the results table.

A user's count for a day is one item keyed ``quota#<sub>#<YYYY-MM-DD>``, which no image ID
(22 URL-safe characters) can equal and which carries none of the indexes' keys, so it never
shows among results. Every front instance updates that item with a conditional atomic counter,
so all of them see one count; the web role may update no other item of the table. Its
``expires_at`` (epoch seconds, a day after its day ends) lets a TTL on the table clear it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from imagepipe.core.aws import error_code
from imagepipe.core.records import ResultRecord, StoreError, writes
from imagepipe.core.records.codec import TTL_ATTRIBUTE

logger = logging.getLogger(__name__)

KEY_PREFIX = "quota#"
COUNT = "images"
EXPIRES = TTL_ATTRIBUTE
# The app extension that holds the front's DailyQuota.
DAILY_QUOTA = "imagepipe.daily_quota"
# An operator may still read yesterday's counters; the TTL clears them after that.
_KEPT_AFTER_THE_DAY = timedelta(days=1)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def utc_day(moment: datetime) -> date:
    """The UTC day a moment falls on: the day whose count it adds to."""
    return moment.astimezone(timezone.utc).date()


def day_start(day: date) -> datetime:
    """The first moment of a UTC day."""
    return datetime.combine(day, time(), timezone.utc)


def seconds_until_reset(now: datetime) -> int:
    """Whole seconds until the next UTC midnight, when every count starts again (at least 1)."""
    reset = day_start(utc_day(now) + timedelta(days=1))
    return max(1, math.ceil((reset - now).total_seconds()))


def quota_key(owner: str, day: date) -> str:
    """The key of a user's counter for one day."""
    return f"{KEY_PREFIX}{owner}#{day.isoformat()}"


class QuotaExceeded(Exception):
    """The user has added as many images today as the quota allows."""

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(f"the daily quota of {limit} images is used up")
        self.limit = limit
        self.retry_after = retry_after


@dataclass(frozen=True)
class Reservation:
    """One image counted on a user's day; given back if the image is not added after all."""

    quota: DailyQuota
    owner: str
    day: date

    def give_back(self) -> None:
        self.quota.give_back(self.owner, self.day)


class DailyQuota:
    """At most `limit` images per user per UTC day, one count shared by every front instance."""

    def __init__(self, dynamodb: Any, table: str, limit: int,
                 clock: Callable[[], datetime] = _now) -> None:
        self._db = dynamodb
        self.table = table
        self.limit = limit
        self._clock = clock

    def now(self) -> datetime:
        return self._clock()

    def take(self, owner: str) -> Reservation | None:
        """Count one more image today; None if the user is at the limit (nothing counted)."""
        day = utc_day(self.now())
        expires = day_start(day + timedelta(days=1)) + _KEPT_AFTER_THE_DAY
        try:
            self._db.update_item(
                TableName=self.table,
                Key={"image_id": {"S": quota_key(owner, day)}},
                # ADD is atomic, and the condition is checked against the stored count: two
                # fronts racing for the last image cannot both get it.
                UpdateExpression="ADD #n :one SET #exp = if_not_exists(#exp, :exp)",
                ConditionExpression="attribute_not_exists(#n) OR #n < :limit",
                ExpressionAttributeNames={"#n": COUNT, "#exp": EXPIRES},
                ExpressionAttributeValues={
                    ":one": {"N": "1"},
                    ":limit": {"N": str(self.limit)},
                    ":exp": {"N": str(int(expires.timestamp()))},
                },
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return None
            raise StoreError(f"counting an image of {owner}: {exc}", error_code(exc)) from exc
        return Reservation(self, owner, day)

    def give_back(self, owner: str, day: date) -> None:
        """Uncount one image of a day (never below zero)."""
        try:
            self._db.update_item(TableName=self.table, **self._give_back_update(owner, day))
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return
            raise StoreError(f"giving back an image of {owner}: {exc}", error_code(exc)) from exc

    def used(self, owner: str, day: date) -> int:
        """How many images the user has counted on a day."""
        try:
            response = self._db.get_item(
                TableName=self.table, Key={"image_id": {"S": quota_key(owner, day)}},
                ConsistentRead=True)
        except ClientError as exc:
            raise StoreError(f"reading the count of {owner}: {exc}", error_code(exc)) from exc
        count = response.get("Item", {}).get(COUNT)
        return int(count["N"]) if count else 0

    def refund_unsent(self, failed: ResultRecord, day: date) -> bool:
        """Record that a presigned upload never came and uncount it, both or neither.

        `failed` is the image's pending record turned failed. False if the record was no longer
        pending (its upload arrived, or another front refunded it first): nothing is written.
        """
        assert failed.owner is not None
        try:
            self._db.transact_write_items(TransactItems=[
                {"Put": writes.abandon_put(self.table, failed)},
                {"Update": {"TableName": self.table,
                            **self._give_back_update(failed.owner, day)}},
            ])
        except ClientError as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise StoreError(f"refunding {failed.image_id}: {exc}", error_code(exc)) from exc
            reasons = [reason.get("Code") for reason in
                       exc.response.get("CancellationReasons", [])]
            if reasons[:1] == ["ConditionalCheckFailed"] or len(reasons) < 2:
                return False
            # Only the counter refused (already at zero: counted before quotas existed, or
            # cleared): the upload still never came, so say so, with nothing to give back.
            self._abandon(failed)
            return False
        logger.info("gave back the unit of %s, presigned for %s and never uploaded",
                    failed.image_id, failed.owner)
        return True

    def refund_cancelled(self, pending: ResultRecord) -> bool:
        """Delete a pending upload's record and uncount it, both or neither (a cancel).

        False, with nothing written, if the record is no longer pending (its upload arrived,
        or another request deleted or refunded it first).
        """
        assert pending.owner is not None
        day = utc_day(datetime.fromisoformat(pending.created_at.replace("Z", "+00:00")))
        try:
            self._db.transact_write_items(TransactItems=[
                {"Delete": writes.delete_pending(self.table, pending.image_id)},
                {"Update": {"TableName": self.table,
                            **self._give_back_update(pending.owner, day)}},
            ])
        except ClientError as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise StoreError(f"refunding {pending.image_id}: {exc}", error_code(exc)) from exc
            return False
        logger.info("gave back the unit of %s, cancelled before it was sent", pending.image_id)
        return True

    def _abandon(self, failed: ResultRecord) -> None:
        try:
            self._db.put_item(**writes.abandon_put(self.table, failed))
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise StoreError(f"writing {failed.image_id}: {exc}", error_code(exc)) from exc

    def _give_back_update(self, owner: str, day: date) -> dict[str, Any]:
        return {
            "Key": {"image_id": {"S": quota_key(owner, day)}},
            "UpdateExpression": "ADD #n :minus_one",
            "ConditionExpression": "#n > :zero",
            "ExpressionAttributeNames": {"#n": COUNT},
            "ExpressionAttributeValues": {":minus_one": {"N": "-1"}, ":zero": {"N": "0"}},
        }


def never_arrived(s3: Any, record: ResultRecord) -> bool:
    """Whether the record's object is missing from the bucket (a HEAD answers 404)."""
    try:
        s3.head_object(Bucket=record.bucket, Key=record.key)
    except ClientError as exc:
        code = error_code(exc)
        if code in ("404", "NoSuchKey", "NotFound"):
            return True
        if code in ("403", "AccessDenied"):
            # Without s3:ListBucket S3 answers a missing object with 403: it cannot tell.
            logger.warning("cannot tell whether %s arrived: %s", record.key, exc)
            return False
        raise StoreError(f"looking for {record.key}: {exc}", code) from exc
    except BotoCoreError as exc:
        raise StoreError(f"looking for {record.key}: {exc}") from exc
    return False
