"""`imagepipe status` and `imagepipe dlq redrive` against moto in-process."""

from __future__ import annotations

import io
import json
from typing import Any

from imagepipe.cli.dlq import redrive
from imagepipe.cli.main import main
from imagepipe.cli.queue_status import collect_status, print_status
from imagepipe.core.aws import queue_url
from imagepipe.core.ids import new_image_id
from imagepipe.core.records import Label, ResultRecord, writes
from processor.heartbeat import Heartbeat
from tests.conftest import s3_event


def _empty(clients: Any, url: str) -> None:
    clients.sqs.purge_queue(QueueUrl=url)


def _send(clients: Any, url: str, count: int, prefix: str = "k") -> list[str]:
    bodies = [s3_event("test-images", f"{prefix}/{i}.jpg") for i in range(count)]
    for start in range(0, count, 10):
        clients.sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "MessageBody": body,
             "MessageAttributes": {"origin": {"DataType": "String", "StringValue": "test"}}}
            for i, body in enumerate(bodies[start:start + 10])])
    return bodies


def test_status_counts_queues_results_and_processors(cli_env, settings, clients, resources, store,
                                                     capsys) -> None:
    # Given 7 waiting messages, 2 in flight, 3 dead letters, results and a live processor
    _empty(clients, resources.queue_url)
    _send(clients, resources.queue_url, 9)
    clients.sqs.receive_message(QueueUrl=resources.queue_url, MaxNumberOfMessages=2,
                                VisibilityTimeout=300)
    _send(clients, resources.dead_letter_queue_url, 3)
    for i in range(4):
        store.save_result(ResultRecord(image_id=new_image_id(), bucket="b", key=f"d{i}").done(
            [Label("tabby", 0.5, 281)], "m", "1"))
    store.save_result(ResultRecord(image_id=new_image_id(), bucket="b", key="f").failed(
        "corrupt_image", "no"))
    store.create_pending(ResultRecord(image_id=new_image_id(), bucket="b", key="p",
                                      created_at="2026-01-01T00:00:00.000Z"))
    Heartbeat(clients.dynamodb, settings.table, "efficientnet_lite0 1-x").beat(3, 42)

    assert main(["status", "--json"]) == 0

    status = json.loads(capsys.readouterr().out)
    interactive, bulk = status["lanes"]
    assert (interactive["name"], bulk["name"]) == ("interactive", "bulk")
    assert (bulk["queue"]["visible"], bulk["queue"]["in_flight"]) == (7, 2)
    assert bulk["dead_letter"]["visible"] == 3
    assert status["results"] == {"pending": 1, "done": 4, "failed": 1}
    assert status["oldest_pending_age_s"] > 3600
    # moto has no CloudWatch SQS metrics: the age is unknown, and the status says why.
    assert bulk["oldest_message_age_s"] is None
    assert "CloudWatch" in bulk["oldest_message_age_note"]
    (processor,) = status["processors"]
    assert processor["images"] == 42 and processor["model"] == "efficientnet_lite0 1-x"

    assert main(["status"]) == 0
    text = capsys.readouterr().out
    assert "in flight        2" in text and "processors seen in the last 120 s: 1" in text


def test_status_reads_the_age_from_cloudwatch_when_it_has_it(settings, clients, resources,
                                                             store) -> None:
    from datetime import datetime, timezone

    class CloudWatch:
        def get_metric_statistics(self, **kwargs: Any) -> dict:
            assert kwargs["MetricName"] == "ApproximateAgeOfOldestMessage"
            queue = kwargs["Dimensions"][0]["Value"]
            assert queue in (settings.queue, settings.interactive_queue)
            if queue == settings.interactive_queue:
                return {"Datapoints": []}
            stamp = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
            return {"Datapoints": [{"Timestamp": stamp, "Maximum": 93.0}]}

    status = collect_status(settings, clients, store, CloudWatch())

    assert [lane.oldest_message_age_s for lane in status.lanes] == [None, 93.0]
    out = io.StringIO()
    print_status(status, out)
    assert "oldest message   93 s" in out.getvalue()


def test_redrive_moves_every_dead_letter_back(cli_env, settings, clients, resources,
                                             capsys) -> None:
    _empty(clients, resources.queue_url)
    bodies = _send(clients, resources.dead_letter_queue_url, 23)

    assert main(["dlq", "redrive"]) == 0

    moved = []
    while got := clients.sqs.receive_message(QueueUrl=resources.queue_url,
                                             MaxNumberOfMessages=10,
                                             MessageAttributeNames=["All"]).get("Messages"):
        moved.extend(got)
    assert sorted(m["Body"] for m in moved) == sorted(bodies)
    assert all(m["MessageAttributes"]["origin"]["StringValue"] == "test" for m in moved)
    attrs = clients.sqs.get_queue_attributes(
        QueueUrl=resources.dead_letter_queue_url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "0"
    assert attrs["ApproximateNumberOfMessagesNotVisible"] == "0"
    assert "moved 23 messages" in capsys.readouterr().out


def test_redrive_stops_at_max(settings, clients, resources) -> None:
    _send(clients, resources.dead_letter_queue_url, 15)

    report = redrive(clients.sqs, resources.dead_letter_queue_url, resources.queue_url, limit=12)

    assert report.moved == 12


class _RefusingSqs:
    """SQS whose main queue refuses every other message of a batch."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def send_message_batch(self, QueueUrl: str, Entries: list[dict]) -> dict:
        accepted = Entries[::2]
        response = self.real.send_message_batch(QueueUrl=QueueUrl, Entries=accepted)
        response["Failed"] = [{"Id": e["Id"], "SenderFault": False, "Code": "InternalError",
                               "Message": "try again"} for e in Entries[1::2]]
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_refused_messages_stay_in_the_dead_letter_queue(settings, clients, resources) -> None:
    _empty(clients, resources.queue_url)
    _send(clients, resources.dead_letter_queue_url, 4)

    report = redrive(_RefusingSqs(clients.sqs), resources.dead_letter_queue_url,
                     resources.queue_url)

    assert (report.moved, report.not_moved) == (2, 2)
    attrs = clients.sqs.get_queue_attributes(
        QueueUrl=resources.dead_letter_queue_url, AttributeNames=["All"])["Attributes"]
    # Not deleted: they come back when their visibility timeout ends.
    assert int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"]) == 2


def test_missing_resources_are_one_line_not_a_traceback(cli_env, aws, capsys) -> None:
    # Nothing provisioned: the queue does not exist.
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("imagepipe status: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_reindex_moves_older_results_and_says_how_many(cli_env, settings, clients, store,
                                                       capsys) -> None:
    # Given a pending result as the version before the sharded feed wrote it
    record = ResultRecord(image_id=new_image_id(), bucket="test-images", key="k/0.jpg")
    attrs = {**record.to_attributes(), "feed": "all"}
    attrs.pop("open_status")
    clients.dynamodb.put_item(TableName=settings.table, Item=writes.item(record, attrs))
    assert store.count("pending") == 0

    assert main(["reindex"]) == 0

    assert capsys.readouterr().out == "reindexed 1 results (0 rewritten meanwhile)\n"
    assert store.count("pending") == 1
    assert [r.image_id for r in store.list_results().records] == [record.image_id]


def _bodies(clients: Any, url: str) -> list[str]:
    got = []
    while messages := clients.sqs.receive_message(QueueUrl=url,
                                                  MaxNumberOfMessages=10).get("Messages"):
        got.extend(m["Body"] for m in messages)
    return sorted(got)


def test_redrive_sends_both_lanes_dead_letters_to_the_bulk_lane_unless_told(
        cli_env, settings, clients, resources, capsys) -> None:
    _empty(clients, resources.queue_url)
    interactive_dlq = queue_url(clients.sqs, settings.interactive_dead_letter_queue)
    uploads = _send(clients, interactive_dlq, 3, prefix="uploads")
    bulk = _send(clients, resources.dead_letter_queue_url, 2, prefix="bulk")

    # Nobody waits at a screen for a message that failed five times: the bulk lane
    assert main(["dlq", "redrive"]) == 0
    assert _bodies(clients, resources.queue_url) == sorted(uploads + bulk)

    # ...unless told otherwise, for one lane's dead letters
    again = _send(clients, interactive_dlq, 2, prefix="again")
    assert main(["dlq", "redrive", "--lane", "interactive", "--to", "interactive"]) == 0
    assert _bodies(clients, resources.interactive_queue_url) == sorted(again)
