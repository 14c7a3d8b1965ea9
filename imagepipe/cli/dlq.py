"""`imagepipe dlq redrive`: move dead-letter messages back to the processing queue."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from imagepipe.cli.progress import ProgressLine

logger = logging.getLogger(__name__)

# Long enough to send and delete a batch; a message not moved comes back after this.
_VISIBILITY_SECONDS = 60


@dataclass
class RedriveReport:
    moved: int = 0
    not_moved: int = 0


def redrive(sqs: Any, dead_letter_url: str, main_url: str, limit: int | None = None,
            progress: ProgressLine | None = None) -> RedriveReport:
    """Receive from the dead-letter queue, send to the main queue, then delete what was sent.

    A message is deleted from the dead-letter queue only after the main queue accepted it,
    so a failure leaves it where it was; at worst (a failed delete) it is delivered twice,
    which the processor's idempotent writes make harmless.
    """
    report = RedriveReport()
    while limit is None or report.moved + report.not_moved < limit:
        wanted = 10 if limit is None else min(10, limit - report.moved - report.not_moved)
        # A long poll of one second asks every SQS server, so empty really means empty.
        messages = sqs.receive_message(
            QueueUrl=dead_letter_url, MaxNumberOfMessages=wanted, WaitTimeSeconds=1,
            VisibilityTimeout=_VISIBILITY_SECONDS, MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            break
        entries = []
        for i, message in enumerate(messages):
            entry: dict[str, Any] = {"Id": str(i), "MessageBody": message["Body"]}
            if message.get("MessageAttributes"):
                entry["MessageAttributes"] = message["MessageAttributes"]
            entries.append(entry)
        response = sqs.send_message_batch(QueueUrl=main_url, Entries=entries)
        sent = [messages[int(s["Id"])] for s in response.get("Successful", [])]
        for failure in response.get("Failed", []):
            logger.warning("message %s not moved: %s", messages[int(failure["Id"])]["MessageId"],
                           failure.get("Message"))
        report.not_moved += len(messages) - len(sent)
        if sent:
            deleted = sqs.delete_message_batch(QueueUrl=dead_letter_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(sent)
            ])
            for failure in deleted.get("Failed", []):
                logger.warning("message %s moved but not deleted from the dead-letter queue: %s",
                               sent[int(failure["Id"])]["MessageId"], failure.get("Message"))
        report.moved += len(sent)
        if progress is not None:
            progress.update(f"redrive: {report.moved} moved, {report.not_moved} not moved")
        if len(sent) < len(messages):
            # The main queue is refusing messages; stop rather than spin on it.
            break
    if progress is not None:
        progress.done(f"redrive: {report.moved} moved, {report.not_moved} not moved")
    return report
