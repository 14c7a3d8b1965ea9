"""CPU time moto's server spends per call the processor makes, with 400 messages queued.

Run: .venv/bin/python benchmarks/endpoint.py   (starts its own server through
imagepipe.local.endpoint; prints the server's CPU-ms per call, read from /proc)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from benchmarks.bench import process_cpu_seconds
from imagepipe.core.aws import make_clients, queue_url
from imagepipe.core.provision import provision
from imagepipe.core.records import ImageFacts, Label, ResultRecord, ResultStore
from imagepipe.core.s3events import S3Object, object_created_body
from imagepipe.core.settings import Settings
from imagepipe.local.stack import free_port, local_environ, start_moto, stop_processes

CALLS = 200
QUEUED = 400


def _record(i: int, bucket: str) -> ResultRecord:
    """A done result the size of a real one: five labels, image facts, five timings."""
    record = ResultRecord(image_id=f"img{i:06d}", bucket=bucket, key=f"k/{i}.jpg",
                          sha256=f"{i:064x}", event_time="2026-11-26T00:00:00.000Z",
                          etag="abc", source="bucket",
                          image=ImageFacts(format="JPEG", width=4000, height=3000,
                                           bytes=3_000_000))
    timings = {"download_ms": 1.0, "decode_ms": 2.0, "inference_ms": 3.0, "total_ms": 4.0,
               "queue_ms": 5.0}
    return record.done([Label(f"label {k}", 0.1 * k, k) for k in range(5)],
                       "efficientnet_lite0", "1", timings=timings)


def main() -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    environ = local_environ(endpoint)
    os.environ.update({k: v for k, v in environ.items() if k.startswith("AWS_")})
    moto = start_moto("127.0.0.1", port, environ)
    try:
        settings = Settings.from_env(environ, endpoint_url=endpoint)
        clients = make_clients(settings)
        provision(settings, clients)
        url = queue_url(clients.sqs, settings.queue)
        store = ResultStore(clients.dynamodb, settings.table)

        def measure(name: str, calls: int, call: Callable[[int], Any]) -> None:
            cpu, wall = process_cpu_seconds(moto.pid), time.perf_counter()
            for i in range(calls):
                call(i)
            print(f"{name:<40} {(process_cpu_seconds(moto.pid) - cpu) / calls * 1000:7.2f} CPU-ms "
                  f"{(time.perf_counter() - wall) / calls * 1000:7.2f} ms per call", flush=True)

        bucket = settings.bucket
        measure("UpdateItem (save_result, new)", CALLS,
                lambda i: store.save_result(_record(i, bucket)))
        measure("UpdateItem (save_result, again)", CALLS,
                lambda i: store.save_result(_record(i, bucket)))
        measure("conditional PutItem (save_result, new)", CALLS,
                lambda i: store.save_result(_record(CALLS + i, bucket),
                                            existing_created_at=None))
        measure("BatchGetItem of 10 creation times", CALLS // 10,
                lambda i: store.creation_times(f"img{j:06d}" for j in range(i * 10, i * 10 + 10)))
        body = object_created_body(S3Object(bucket, "k/1.jpg", 10))
        measure(f"SendMessageBatch of 10 (to {QUEUED})", QUEUED // 10,
                lambda i: clients.sqs.send_message_batch(QueueUrl=url, Entries=[
                    {"Id": str(j), "MessageBody": body} for j in range(10)]))
        measure(f"GetQueueAttributes ({QUEUED} queued)", 40,
                lambda i: clients.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
                    "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]))
        received: list[list[dict[str, Any]]] = []
        measure("ReceiveMessage of 10", 40, lambda i: received.append(
            clients.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]))
        measure("ChangeMessageVisibilityBatch of 10", 40,
                lambda i: clients.sqs.change_message_visibility_batch(QueueUrl=url, Entries=[
                    {"Id": str(j), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 60}
                    for j, m in enumerate(received[i])]))
        measure("DeleteMessageBatch of 10", 40,
                lambda i: clients.sqs.delete_message_batch(QueueUrl=url, Entries=[
                    {"Id": str(j), "ReceiptHandle": m["ReceiptHandle"]}
                    for j, m in enumerate(received[i])]))
        clients.s3.put_object(Bucket=bucket, Key="k/1.jpg", Body=os.urandom(2_000_000))
        measure("GetObject of 2 MB", 100, lambda i: clients.s3.get_object(
            Bucket=bucket, Key="k/1.jpg")["Body"].read())
    finally:
        stop_processes(moto)


if __name__ == "__main__":
    main()
