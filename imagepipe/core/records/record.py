"""The result record: one image's outcome, and the steps that make one outcome from another."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from imagepipe.core.records import codec
from imagepipe.core.records.codec import ResultJson
from imagepipe.core.records.indexes import index_attributes, label_key
from imagepipe.core.records.parts import Category, ImageFacts, Label, Status, WebhookDelivery
from imagepipe.core.timestamps import utc_now


def expiry(days: int, moment: float | None = None) -> int | None:
    """The expires_at of a record written at `moment` (now) that is kept `days` (0: for good)."""
    if days <= 0:
        return None
    return int((time.time() if moment is None else moment) + days * 86400)


@dataclass(frozen=True)
class ResultRecord:
    """One image's result; the image ID is the table's key.

    Its JSON and its attributes in the table are derived from `codec.FIELDS`, one row a field.
    """

    image_id: str
    bucket: str
    key: str
    status: Status = "pending"
    labels: tuple[Label, ...] = ()
    categories: tuple[Category, ...] = ()
    # The words a search finds this result by, with their scores (see records.search).
    words: dict[str, float] = field(default_factory=dict)
    model_name: str | None = None
    model_version: str | None = None
    image: ImageFacts = field(default_factory=ImageFacts)
    error_code: str | None = None
    error_message: str | None = None
    created_at: str = field(default_factory=utc_now)
    processed_at: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    etag: str | None = None
    source: str = "bucket"
    # When the S3 event that produced this outcome happened; orders outcomes of one image.
    event_time: str | None = None
    # Hex SHA-256 of the object's bytes, as the processor read them.
    sha256: str | None = None
    # Set when the labels were copied from an earlier result of the same bytes and model.
    duplicate_of: str | None = None
    reused: bool = False
    # The user the image belongs to (their Cognito `sub`); None: nobody's, seen by admins only.
    owner: str | None = None
    # When the table's TTL removes the record, in epoch seconds; None: kept for good.
    expires_at: int | None = None
    # How the webhook delivery of its event went; written by the deliverer, None: none yet.
    webhook: WebhookDelivery | None = None

    def expired(self, now: float | None = None) -> bool:
        """Whether the table's TTL is due to remove the record (DynamoDB may take days to)."""
        return self.expires_at is not None and self.expires_at <= (
            time.time() if now is None else now)

    def done(self, labels: list[Label], model_name: str, model_version: str, **changes: Any
             ) -> ResultRecord:
        """This record, classified; `categories` and `words` may come with the changes (without
        words, it is found by its labels' own names)."""
        changes.setdefault("categories", ())
        if "words" not in changes:
            changes["words"] = {}
            for label in reversed(labels):  # the best score of a name wins
                changes["words"][label_key(label.label)] = label.score
        return replace(self, status="done", labels=tuple(labels), model_name=model_name,
                       model_version=model_version, error_code=None, error_message=None,
                       processed_at=utc_now(), **changes)

    def failed(self, code: str, message: str, **changes: Any) -> ResultRecord:
        """This record, failed for a reason the code names."""
        return replace(self, status="failed", labels=(), categories=(), words={},
                       error_code=code, error_message=message,
                       processed_at=utc_now(), **changes)

    def reusing(self, original: ResultRecord) -> ResultRecord:
        """This record, done with the labels of an earlier result of the same bytes and model."""
        if original.status != "done" or not original.model_name:
            raise ValueError(f"result {original.image_id} is not a done result to reuse")
        if original.image_id == self.image_id:
            # A redelivery of an image already done: it stays what it was, copy or original.
            return self.done(list(original.labels), original.model_name,
                             original.model_version or "", duplicate_of=original.duplicate_of,
                             reused=original.reused, categories=original.categories,
                             words=original.words)
        # Point at the result that ran the model, not at another copy of it.
        return self.done(list(original.labels), original.model_name,
                         original.model_version or "",
                         duplicate_of=original.duplicate_of or original.image_id, reused=True,
                         categories=original.categories, words=original.words)

    def to_json(self) -> ResultJson:
        """The record as the results API returns it."""
        return codec.to_json(self)

    def to_attributes(self) -> dict[str, Any]:
        """The record as plain attribute values (numbers as Decimal), without the key."""
        return {**codec.to_attributes(self), **index_attributes(self)}

    @classmethod
    def from_attributes(cls, image_id: str, attrs: dict[str, Any]) -> ResultRecord:
        """Rebuild a record from the attribute values the table holds."""
        return cls(image_id=image_id, **codec.from_attributes(attrs))
