"""The event of a result: one per done or failed outcome, the same JSON on every channel.

An event is the result as GET /api/results/<image_id> answers it, plus `event_id`, `type` and
`occurred_at`. The event ID is derived from the outcome it tells of (image, S3 event, status,
model, reason), never drawn at random: when a redelivered S3 message writes the same outcome
again, its event carries the same ID, and receivers drop the repeat by it. A new upload to the
key or a re-process with another model is another outcome, so another event.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from imagepipe.core.aws import error_code
from imagepipe.core.records import ResultJson, ResultRecord

logger = logging.getLogger(__name__)

EVENT_TYPES = {"done": "result.done", "failed": "result.failed"}


class PublishError(Exception):
    """The topic did not take the event; the outcome must be published again."""


def event_id(record: ResultRecord) -> str:
    """The ID of the event of this outcome: the same for every write of the same outcome."""
    parts = (record.image_id, record.event_time or "", record.status, record.model_name or "",
             record.model_version or "", record.error_code or "")
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def result_event(record: ResultRecord) -> dict[str, Any]:
    """The event of a done or failed record, as every channel carries it."""
    if record.status not in EVENT_TYPES:
        raise ValueError(f"a {record.status} result has no event")
    body: ResultJson = record.to_json()
    return {"event_id": event_id(record), "type": EVENT_TYPES[record.status],
            "occurred_at": record.processed_at or record.created_at, **body}


def message_attributes(record: ResultRecord) -> dict[str, dict[str, str]]:
    """The SNS attributes subscribers filter on: status, top_label and owner.

    SNS refuses empty string values, so an attribute without a value is left out.
    """
    values = {"status": record.status,
              "top_label": record.labels[0].label if record.labels else "",
              "owner": record.owner or ""}
    return {name: {"DataType": "String", "StringValue": value}
            for name, value in values.items() if value}


class EventPublisher:
    """Publishes result events to the results topic."""

    def __init__(self, sns: Any, topic_arn: str) -> None:
        self._sns = sns
        self.topic_arn = topic_arn

    def publish(self, record: ResultRecord) -> str:
        """Publish the record's event; its event ID. PublishError if the topic refused it."""
        event = result_event(record)
        try:
            self._sns.publish(TopicArn=self.topic_arn, Message=json.dumps(event),
                              MessageAttributes=message_attributes(record))
        except (ClientError, BotoCoreError) as exc:
            raise PublishError(f"publishing {event['event_id']}: "
                               f"{error_code(exc) or exc}") from exc
        return str(event["event_id"])


def event_from_message(body: str) -> dict[str, Any]:
    """The event in an SQS message of a queue subscribed to the topic (raw or enveloped)."""
    outer = json.loads(body)
    if isinstance(outer, dict) and outer.get("Type") == "Notification" and "Message" in outer:
        return dict(json.loads(outer["Message"]))
    return dict(outer)
