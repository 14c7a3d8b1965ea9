"""`imagepipe status`: both lanes' queues, the results by status and the processors seen lately."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from imagepipe.core.aws import Clients, queue_url
from imagepipe.core.heartbeats import ProcessorBeat, recent_beats
from imagepipe.core.records import STATUSES, ResultStore
from imagepipe.core.settings import Settings
from imagepipe.core.timestamps import parse_utc

logger = logging.getLogger(__name__)

RECENT_SECONDS = 120


@dataclass
class QueueDepth:
    url: str
    visible: int
    in_flight: int
    delayed: int


@dataclass
class LaneStatus:
    """One lane: its queue, its dead-letter queue and the age of its oldest message."""

    name: str
    queue: QueueDepth
    dead_letter: QueueDepth
    # CloudWatch's ApproximateAgeOfOldestMessage; None where it has no datapoint.
    oldest_message_age_s: float | None
    oldest_message_age_note: str


@dataclass
class PipelineStatus:
    # Interactive first, as the processor serves them.
    lanes: list[LaneStatus]
    # Age of the oldest pending record: how long the longest-waiting known image has waited.
    oldest_pending_age_s: float | None
    results: dict[str, int]
    processors: list[ProcessorBeat] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def queue_depth(sqs: Any, url: str) -> QueueDepth:
    """The approximate message counts SQS keeps for a queue."""
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ])["Attributes"]
    return QueueDepth(url, int(attrs.get("ApproximateNumberOfMessages", 0)),
                      int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
                      int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)))


def oldest_message_age(cloudwatch: Any, url: str) -> tuple[float | None, str]:
    """The queue's ApproximateAgeOfOldestMessage from CloudWatch, and where it came from.

    SQS has no queue attribute for it, and peeking at messages would count as receives
    (pushing them toward the dead-letter queue) and show a sample, not the oldest.
    """
    name = url.rstrip("/").rsplit("/", 1)[-1]
    now = datetime.now(timezone.utc)
    try:
        response = cloudwatch.get_metric_statistics(
            Namespace="AWS/SQS", MetricName="ApproximateAgeOfOldestMessage",
            Dimensions=[{"Name": "QueueName", "Value": name}],
            StartTime=now - timedelta(minutes=15), EndTime=now, Period=60,
            Statistics=["Maximum"],
        )
    except (ClientError, BotoCoreError) as exc:
        return None, f"CloudWatch unavailable: {exc}"
    points = sorted(response.get("Datapoints", []), key=lambda p: p["Timestamp"])
    if not points:
        return None, "no CloudWatch datapoint (a local endpoint, or no metrics yet)"
    latest = points[-1]
    return float(latest["Maximum"]), f"CloudWatch, minute of {latest['Timestamp']:%H:%M} UTC"


def collect_status(settings: Settings, clients: Clients, store: ResultStore, cloudwatch: Any,
                   recent_seconds: float = RECENT_SECONDS) -> PipelineStatus:
    """Read everything `imagepipe status` shows; no scans (counts come from the index)."""
    lanes = []
    for name, (queue, dead_letter_queue) in settings.lanes.items():
        url = queue_url(clients.sqs, queue)
        age, note = oldest_message_age(cloudwatch, url)
        lanes.append(LaneStatus(name, queue_depth(clients.sqs, url),
                                queue_depth(clients.sqs, queue_url(clients.sqs, dead_letter_queue)),
                                age, note))
    oldest = store.oldest("pending")
    pending_age = None
    if oldest is not None:
        created = parse_utc(oldest.created_at)
        pending_age = max(0.0, (datetime.now(timezone.utc) - created).total_seconds())
    return PipelineStatus(
        lanes=lanes,
        oldest_pending_age_s=pending_age,
        results={status: store.count(status) for status in STATUSES},
        processors=recent_beats(clients.dynamodb, settings.table, recent_seconds),
    )


def print_status(status: PipelineStatus, out: TextIO, recent_seconds: float = RECENT_SECONDS
                 ) -> None:
    """The status for people."""
    pending_age = (f"{status.oldest_pending_age_s:.0f} s"
                   if status.oldest_pending_age_s is not None else "-")
    lines = []
    for lane in status.lanes:
        q, d = lane.queue, lane.dead_letter
        age = (f"{lane.oldest_message_age_s:.0f} s" if lane.oldest_message_age_s is not None
               else "unknown")
        lines += [
            f"{lane.name + ' queue':<19}{q.url}",
            f"  waiting          {q.visible}",
            f"  in flight        {q.in_flight}",
            f"  delayed          {q.delayed}",
            f"  oldest message   {age}  ({lane.oldest_message_age_note})",
            f"  dead-letter      {d.url}: {d.visible + d.in_flight + d.delayed} messages",
        ]
    lines += [
        "results",
        *(f"  {name:<16} {count}" for name, count in status.results.items()),
        f"  oldest pending   {pending_age}",
        f"processors seen in the last {recent_seconds:.0f} s: {len(status.processors)}",
    ]
    now = datetime.now(timezone.utc)
    for beat in status.processors:
        seen = parse_utc(beat.last_seen)
        lines.append(f"  {beat.processor_id:<28} {beat.model:<30} "
                     f"{(now - seen).total_seconds():>4.0f} s ago  {beat.images} images, "
                     f"since {beat.started_at}")
    out.write("\n".join(lines) + "\n")
