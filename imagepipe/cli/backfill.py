"""`imagepipe backfill`: queue the bucket's objects that lack a result, as S3 would announce them.

Objects listed under a prefix are looked up in the results table by BatchGetItem (their image
IDs follow from bucket and key); the selected ones are sent to the processing queue as S3
ObjectCreated events, in batches of ten, at a bounded rate.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from imagepipe.cli.progress import ProgressLine
from imagepipe.core.aws import Clients, queue_url
from imagepipe.core.ids import image_id_for_object
from imagepipe.core.records import ResultRecord, ResultStore
from imagepipe.core.s3events import S3Object, object_created_body
from imagepipe.core.settings import BULK, Settings
from imagepipe.core.timestamps import utc_now

logger = logging.getLogger(__name__)

MISSING = "missing"
MODEL_CHANGED = "model-changed"
# SQS takes at most ten messages per SendMessageBatch.
SEND_BATCH = 10
# S3 lists at most 1000 keys per call.
LIST_PAGE = 1000
_SEND_ATTEMPTS = 3
_PRINCIPAL = "imagepipe-backfill"


@dataclass
class BackfillReport:
    listed: int = 0
    selected: int = 0
    queued: int = 0
    not_sent: int = 0


def needs_processing(record: ResultRecord | None, mode: str, model: tuple[str, str]) -> bool:
    """Whether backfill should queue an object with this record (None: no record at all)."""
    if mode == MISSING:
        # A pending record is not a result; a second delivery of a processed image is cheap,
        # the processor reuses the result of the same bytes.
        return record is None or record.status == "pending"
    if mode == MODEL_CHANGED:
        return (record is not None and record.status == "done"
                and (record.model_name, record.model_version) != model)
    raise ValueError(f"unknown backfill mode {mode!r}")


def list_objects(s3: Any, bucket: str, prefix: str, page_size: int = LIST_PAGE
                 ) -> Iterator[list[S3Object]]:
    """The bucket's objects under a prefix, a listing page at a time (folder markers left out)."""
    paginator = s3.get_paginator("list_objects_v2")
    pages = paginator.paginate(Bucket=bucket, Prefix=prefix,
                               PaginationConfig={"PageSize": page_size})
    for page in pages:
        yield [S3Object(bucket, o["Key"], int(o.get("Size", 0)), str(o.get("ETag", "")))
               for o in page.get("Contents", []) if not o["Key"].endswith("/")]


class Pacer:
    """Spaces out sends so that on average at most `rate` messages go per second."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None

    def wait(self, count: int) -> None:
        """Block until `count` more messages may go."""
        if self.rate <= 0:
            return
        now = self._clock()
        if self._next is not None and self._next > now:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + count / self.rate


def send_events(sqs: Any, url: str, bodies: list[str]) -> int:
    """Send up to ten bodies in one batch, retrying entries SQS refused; how many went."""
    entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies)]
    sent = 0
    for attempt in range(_SEND_ATTEMPTS):
        try:
            response = sqs.send_message_batch(QueueUrl=url, Entries=entries)
        except (ClientError, BotoCoreError) as exc:
            logger.warning("sending %d events failed (attempt %d): %s", len(entries),
                           attempt + 1, exc)
            time.sleep(0.5 * 2 ** attempt)
            continue
        sent += len(response.get("Successful", []))
        failed = {f["Id"] for f in response.get("Failed", [])}
        entries = [e for e in entries if e["Id"] in failed]
        if not entries:
            break
        logger.warning("SQS refused %d events; retrying", len(entries))
        time.sleep(0.5 * 2 ** attempt)
    return sent


def backfill(
    settings: Settings,
    clients: Clients,
    store: ResultStore,
    prefix: str,
    mode: str,
    model: tuple[str, str],
    rate: float,
    dry_run: bool = False,
    progress: ProgressLine | None = None,
    out: TextIO | None = None,
    pacer: Pacer | None = None,
    page_size: int = LIST_PAGE,
    lane: str = BULK,
) -> BackfillReport:
    """List, look up, select and queue; prints each selected image ID and key on `out`."""
    out = out or sys.stdout
    progress = progress or ProgressLine()
    pacer = pacer or Pacer(rate)
    # The bulk lane by default: nobody is waiting for a backfill's results at a screen.
    url = queue_url(clients.sqs, settings.lanes[lane][0])
    report = BackfillReport()
    for page in list_objects(clients.s3, settings.bucket, prefix, page_size):
        report.listed += len(page)
        ids = [image_id_for_object(settings.bucket, o.key) for o in page]
        # One BatchGetItem per hundred objects, not a read per object.
        records = store.get_many(ids)
        chosen = [(i, o) for i, o in zip(ids, page, strict=True)
                  if needs_processing(records.get(i), mode, model)]
        report.selected += len(chosen)
        for start in range(0, len(chosen), SEND_BATCH):
            batch = chosen[start:start + SEND_BATCH]
            if not dry_run:
                pacer.wait(len(batch))
                now = utc_now()
                sent = send_events(clients.sqs, url, [
                    object_created_body(o, event_time=now, region=settings.region,
                                        principal=_PRINCIPAL)
                    for _, o in batch])
                report.queued += sent
                report.not_sent += len(batch) - sent
            for image_id, obj in batch:
                progress.echo(f"{image_id}  {obj.key}", out)
            progress.update(f"backfill: {report.listed} objects listed, {report.selected} "
                            f"selected, {report.queued} queued")
        progress.update(f"backfill: {report.listed} objects listed, {report.selected} "
                        f"selected, {report.queued} queued")
    progress.done(f"backfill: {report.listed} objects listed, {report.selected} selected "
                  f"({'dry run, nothing queued' if dry_run else f'{report.queued} queued'})")
    return report
