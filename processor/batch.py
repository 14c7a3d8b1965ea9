"""One received batch as values: its images, what became of each one, and the tally.

Each image ends in exactly one outcome. The handling stages (processor.handling,
processor.dedupe) return outcomes and never write; the writer (processor.writer) is the one
place that turns outcomes into records, give-ups and acknowledgements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from imagepipe.core.ids import UPLOAD_PREFIX, owner_of_key
from imagepipe.core.records import ResultRecord
from imagepipe.core.records.record import expiry
from imagepipe.core.timestamps import format_utc
from processor.events import ObjectCreated


@dataclass(frozen=True)
class Image:
    """One object of a batch, and the messages that announced it."""

    event: ObjectCreated
    image_id: str
    message_ids: tuple[str, ...]
    received_at: float
    receives: int = 1

    @property
    def key(self) -> str:
        return self.event.key

    def base_record(self, expire_after_days: int = 0) -> ResultRecord:
        """The record as far as the event tells it, before the object is read; it expires
        `expire_after_days` after it is received (0: kept)."""
        event = self.event
        return ResultRecord(
            image_id=self.image_id,
            bucket=event.bucket,
            key=event.key,
            etag=event.etag,
            source="upload" if event.key.startswith(UPLOAD_PREFIX) else "bucket",
            event_time=event.event_time or format_utc(self.received_at),
            # The key says whose the image is; the front chose it, or the user's prefix does.
            owner=owner_of_key(event.key),
            expires_at=expiry(expire_after_days, self.received_at),
        )


@dataclass(frozen=True)
class Fetched:
    """An image read and decoded, waiting for the model.

    `record` holds the image's facts, content hash and stage timings so far; `pixels` is the
    classifier's preprocess() of the decoded image.
    """

    image: Image
    record: ResultRecord
    pixels: Any

    @property
    def image_id(self) -> str:
        return self.image.image_id

    @property
    def key(self) -> str:
        return self.image.key


@dataclass(frozen=True)
class Done:
    """The model labelled the image; `record` is its done result."""

    record: ResultRecord


@dataclass(frozen=True)
class Reused:
    """The image's bytes were labelled before by this model; `record` carries those labels."""

    record: ResultRecord


@dataclass(frozen=True)
class Failed:
    """A permanent failure; `record` is failed with the reason code, and is acknowledged."""

    record: ResultRecord


@dataclass(frozen=True)
class Retry:
    """Leave the image's messages for redelivery, for `reason`.

    `record` is what was known of the image when it stopped, for the failed record written if
    this was its last receive.
    """

    reason: str
    record: ResultRecord
    # The record is written and only its event is missing: never give the image up as failed.
    written: bool = False


Outcome = Done | Reused | Failed | Retry


@dataclass(frozen=True)
class Handled:
    """One image and what became of it."""

    image: Image
    outcome: Outcome


@dataclass(frozen=True)
class Received:
    """One receive, parsed: its images, and the messages to acknowledge once they are written.

    A message is in `ack` when it parsed; it is deleted unless one of its images is retried.
    """

    messages: Sequence[dict[str, Any]]
    images: tuple[Image, ...]
    ack: dict[str, dict[str, Any]]
    malformed: int = 0
    ignored: int = 0


@dataclass(frozen=True)
class Prepared:
    """A receive whose objects were read and decoded: some wait for the model, some are settled."""

    received: Received
    fetched: tuple[Fetched, ...]
    settled: tuple[Handled, ...]

    @property
    def messages(self) -> Sequence[dict[str, Any]]:
        return self.received.messages


@dataclass
class BatchReport:
    """What one batch came to; the tests and the logs read it."""

    received: int = 0
    deleted: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0
    ignored: int = 0
    malformed: int = 0

    def add(self, other: BatchReport) -> None:
        """Count another batch's report into this one."""
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))
