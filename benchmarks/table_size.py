"""make bench-table: the processor's rate and a gallery page, with 1,000 and 20,000 results stored.

Against the local endpoint (moto's server as `make run` starts it), with the real processor
daemon and model. For each table size, in one run:

- the table is filled to that many done results of one user (25 per BatchWriteItem);
- the processor drains a queue of new, distinct images of that user (every one costs a
  by_content query, a model run and the result's writes), timed from the first event sent to
  an empty queue;
- a gallery page is read as the front reads it: that user's newest 24 (by_owner, the
  partition that holds every one of their results), the page after it (from a cursor), and
  an admin's newest 24 of everyone's (the eight shards of the feed, merged).

Ratios against the 1,000 row are what to read: the machine may be shared. BENCH_ARGS="--key-maps
off" measures moto's own index walk instead, for comparison.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.bench import (
    RESULTS_FILE,
    process_cpu_seconds,
    start_processors,
    stop_processors,
)
from imagepipe.core.aws import make_clients, queue_url
from imagepipe.core.catalog import DEFAULT_CACHE_DIR
from imagepipe.core.provision import provision
from imagepipe.core.records import ImageFacts, Label, ResultRecord, ResultStore
from imagepipe.core.records.writes import item
from imagepipe.core.s3events import S3Object, object_created_body
from imagepipe.core.settings import Settings
from imagepipe.core.timestamps import format_utc
from imagepipe.local.key_maps import OFF_VARIABLE
from imagepipe.local.stack import free_port, local_environ, start_moto, stop_processes

PAGE = 24
STORED_SINCE = 1_760_000_000.0


def stored_record(n: int, bucket: str, owner: str) -> ResultRecord:
    """A done result the size of a real one, of one owner, with its own content hash."""
    record = ResultRecord(
        image_id=f"stored{n:07d}", bucket=bucket, key=f"users/{owner}/old/{n}.jpg",
        sha256=f"{n:064x}", owner=owner, source="bucket",
        # Before the new images, shuffled: stored out of order, as a real table fills.
        created_at=format_utc(STORED_SINCE + (n * 7919) % 1_000_003 * 0.9),
        image=ImageFacts(format="JPEG", width=4000, height=3000, bytes=3_000_000))
    timings = {"download_ms": 1.0, "decode_ms": 2.0, "inference_ms": 3.0, "total_ms": 4.0}
    return record.done([Label(f"label {k}", 0.1 * k, k) for k in range(5)],
                       "efficientnet_lite0", "1", timings=timings)


def fill(clients: Any, table: str, bucket: str, owner: str, start: int, stop: int) -> None:
    """Stored results start..stop-1, written straight into the table, 25 a call."""
    def write(first: int) -> None:
        requests = [{"PutRequest": {"Item": item(stored_record(n, bucket, owner))}}
                    for n in range(first, min(first + 25, stop))]
        while requests:
            left = clients.dynamodb.batch_write_item(RequestItems={table: requests})
            requests = left.get("UnprocessedItems", {}).get(table, [])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(start, stop, 25)))


def distinct_jpegs(count: int, seed: int) -> list[bytes]:
    """Small photos, each with different bytes (so none is a copy of another)."""
    import numpy as np
    from PIL import Image
    from skimage import data

    base = Image.fromarray(data.chelsea()).resize((320, 213))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        pixels = np.asarray(base).copy()
        pixels[:4, :64] = rng.integers(0, 255, size=(4, 64, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


class Bench:
    """moto's server, the resources, a processor daemon, and clients to feed them."""

    def __init__(self, cache_dir: Path, key_maps: str) -> None:
        os.environ[OFF_VARIABLE] = key_maps
        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        self.environ = local_environ(self.endpoint)
        self.moto = start_moto("127.0.0.1", port, self.environ)
        self.settings = Settings.from_env(
            self.environ, endpoint_url=self.endpoint, bucket="table-images",
            queue="table-events", dead_letter_queue="table-events-dlq", table="table-results",
            poll_seconds=1, cache_dir=cache_dir, log_level="WARNING")
        os.environ.update({k: v for k, v in self.environ.items() if k.startswith("AWS_")})
        self.clients = make_clients(self.settings)
        provision(self.settings, self.clients)
        self.queue_url = queue_url(self.clients.sqs, self.settings.queue)
        self.store = ResultStore(self.clients.dynamodb, self.settings.table)
        self.owner = str(uuid.uuid4())
        self.stored = 0
        self.sent = 0
        env = dict(self.environ)
        env.update(self.settings.environ())
        self.processors = start_processors(1, env)

    def fill_to(self, size: int) -> float:
        started = time.perf_counter()
        fill(self.clients, self.settings.table, self.settings.bucket, self.owner, self.stored,
             size)
        self.stored = size
        return time.perf_counter() - started

    def drain(self, images: int) -> dict[str, float]:
        """Upload `images` new photos, queue their events, time the processor through them."""
        keys = []
        photos = distinct_jpegs(images, seed=self.sent)
        for data in photos:
            key = f"users/{self.owner}/new/{self.sent}.jpg"
            self.sent += 1
            self.clients.s3.put_object(Bucket=self.settings.bucket, Key=key, Body=data)
            keys.append((key, len(data)))
        processor = self.processors[0].process.pid
        moto_cpu, started = process_cpu_seconds(self.moto.pid), time.perf_counter()
        processor_cpu = process_cpu_seconds(processor)
        for first in range(0, len(keys), 10):
            self.clients.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(i), "MessageBody": object_created_body(
                    S3Object(self.settings.bucket, key, size))}
                for i, (key, size) in enumerate(keys[first:first + 10])])
        while True:
            attrs = self.clients.sqs.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=[
                    "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
            if not any(int(v) for v in attrs["Attributes"].values()):
                break
            time.sleep(0.1)
        elapsed = time.perf_counter() - started
        self.stored += images
        endpoint = (process_cpu_seconds(self.moto.pid) - moto_cpu) / images * 1000
        own = (process_cpu_seconds(processor) - processor_cpu) / images * 1000
        # What the two cores allow, from CPU per image: moves less than the wall-clock rate
        # when the machine is shared.
        return {"ips": images / elapsed, "endpoint_cpu_ms_per_image": endpoint,
                "processor_cpu_ms_per_image": own, "cpu_bound_ips": 2000 / (endpoint + own)}

    def page_times(self, repeats: int) -> dict[str, float]:
        """Median milliseconds of the gallery's reads, and the endpoint's CPU-ms for each."""
        reads: dict[str, Callable[[], Any]] = {
            "owner_page_ms": lambda: self.store.list_results(owner=self.owner, limit=PAGE),
            "all_page_ms": lambda: self.store.list_results(limit=PAGE),
        }
        cursor = self.store.list_results(owner=self.owner, limit=PAGE).next_cursor
        reads["owner_next_page_ms"] = lambda: self.store.list_results(
            owner=self.owner, limit=PAGE, cursor=cursor)
        out: dict[str, float] = {}
        for name, read in reads.items():
            read()  # warm
            times = []
            moto_cpu, own_cpu = process_cpu_seconds(self.moto.pid), time.process_time()
            for _ in range(repeats):
                started = time.perf_counter()
                read()
                times.append((time.perf_counter() - started) * 1000)
            out[name] = statistics.median(times)
            # The endpoint's CPU and the reader's (the front's part): the page's cost.
            out[name.replace("_ms", "_cpu_ms")] = (
                (process_cpu_seconds(self.moto.pid) - moto_cpu + time.process_time() - own_cpu)
                / repeats * 1000)
        return out

    def close(self) -> None:
        stop_processors(self.processors)
        stop_processes(self.moto)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench-table", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--images", type=int, default=150,
                        help="new images the processor drains at each size (default 150)")
    parser.add_argument("--pages", type=int, default=30, help="reads of each page (median)")
    parser.add_argument("--key-maps", choices=("on", "off"), default="on",
                        help="off: moto's own index walk, for comparison")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR.expanduser())
    parser.add_argument("--output", type=Path, default=RESULTS_FILE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    print(f"imagepipe bench-table: key maps {args.key_maps}; figures from this run only, "
          "compare the ratios", flush=True)
    bench = Bench(args.cache_dir, args.key_maps)
    rows = []
    try:
        bench.fill_to(min(args.sizes))
        bench.drain(20)  # warm: the model's first images, the endpoint's first queries
        for size in args.sizes:
            fill_s = bench.fill_to(size)
            row = {"stored": size, "fill_s": fill_s, **bench.drain(args.images),
                   **bench.page_times(args.pages)}
            rows.append(row)
            print(f"  {size:>6} stored: processor {row['ips']:5.1f} img/s, "
                  f"{row['processor_cpu_ms_per_image']:5.1f} + "
                  f"{row['endpoint_cpu_ms_per_image']:5.1f} (endpoint) CPU-ms/img, "
                  f"{row['cpu_bound_ips']:5.1f} img/s on two cores; gallery page "
                  f"{row['owner_page_ms']:6.1f} ms ({row['owner_page_cpu_ms']:6.1f} CPU-ms), "
                  f"next {row['owner_next_page_ms']:6.1f} ms "
                  f"({row['owner_next_page_cpu_ms']:6.1f}), everyone's "
                  f"{row['all_page_ms']:6.1f} ms ({row['all_page_cpu_ms']:6.1f})", flush=True)
    finally:
        bench.close()
    first = rows[0]
    for row in rows[1:]:
        ratio = {key: row[key] / first[key] for key in row if key not in ("stored", "fill_s")}
        print(f"  {row['stored']} vs {first['stored']}: processor rate x{ratio['ips']:.2f} "
              f"(from CPU per image x{ratio['cpu_bound_ips']:.2f}); gallery page "
              f"x{ratio['owner_page_ms']:.2f} (CPU x{ratio['owner_page_cpu_ms']:.2f}), next "
              f"x{ratio['owner_next_page_ms']:.2f} (CPU x{ratio['owner_next_page_cpu_ms']:.2f}),"
              f" everyone's x{ratio['all_page_ms']:.2f} (CPU x{ratio['all_page_cpu_ms']:.2f})",
              flush=True)
    with args.output.open("a") as out:
        out.write(json.dumps({"bench": "table_size", "key_maps": args.key_maps,
                              "time": time.time(), "rows": rows}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
