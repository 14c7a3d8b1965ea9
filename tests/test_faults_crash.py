"""Processes that stop or die: SIGTERM finishes the batch in hand, kill -9 loses nothing."""

from __future__ import annotations

import io
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imagepipe.core.aws import make_clients
from imagepipe.core.ids import image_id_for_object
from imagepipe.core.provision import Resources, provision, subscribe_queue
from imagepipe.core.records import ResultStore
from imagepipe.core.result_events import event_from_message
from imagepipe.core.settings import Settings
from imagepipe.local.stack import (
    free_port,
    local_environ,
    start_moto,
    start_processor,
    stop_processes,
)
from tests.conftest import count_results

pytestmark = pytest.mark.slow

EXIT_FORCED = 3
# The processor logs this line when it takes a batch into hand.
IN_HAND = r"batch of (\d+) messages in hand"
# The images' batches: the interactive lane may first hand over S3's test event.
BULK_IN_HAND = r"bulk batch of (\d+) messages in hand"


@dataclass
class Endpoint:
    settings: Settings
    env: dict[str, str]
    resources: Resources
    clients: Any
    store: ResultStore


@pytest.fixture
def endpoint(model_cache: Path) -> Iterator[Endpoint]:
    """A moto server with the resources, and the environment a processor needs for it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = Settings(endpoint_url=url, bucket="crash-images", queue="crash-events",
                        dead_letter_queue="crash-dlq", table="crash-results", poll_seconds=1,
                        visibility_timeout=4, max_receives=50, cache_dir=model_cache)
    env = local_environ(url)
    env.update(settings.environ())
    moto = start_moto("127.0.0.1", port, env)
    try:
        clients = make_clients(settings)
        resources = provision(settings, clients)
        # S3's test event from the notification set-up would count as a message taken.
        clients.sqs.purge_queue(QueueUrl=resources.queue_url)
        yield Endpoint(settings, env, resources, clients,
                       ResultStore(clients.dynamodb, settings.table))
    finally:
        stop_processes(moto)


def _images(count: int, size: tuple[int, int], fmt: str, seed: int) -> list[bytes]:
    """Distinct images made from a real photo: crops, flips and a unique corner mark each."""
    from skimage import data

    base = Image.fromarray(data.chelsea())
    rng = random.Random(seed)
    out = []
    for i in range(count):
        left, top = rng.randint(0, 120), rng.randint(0, 80)
        image = base.crop((left, top, left + 300, top + 200)).resize(size)
        if i % 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = np.array(image)
        pixels[0, :16] = [i % 256, i // 256, 7]
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, fmt)
        out.append(buffer.getvalue())
    return out


def _put_all(endpoint: Endpoint, prefix: str, images: list[bytes]) -> list[str]:
    keys = [f"{prefix}/{i:04d}.png" for i in range(len(images))]
    def put(key: str, body: bytes) -> None:
        endpoint.clients.s3.put_object(Bucket=endpoint.settings.bucket, Key=key, Body=body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, keys, images))
    return keys


def _wait_for_line(log: Path, pattern: str, timeout: float, after: int = 0) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.compile(pattern).search(log.read_text(errors="replace"), after)
        if match:
            return match
        time.sleep(0.02)
    tail = log.read_text(errors="replace")[-3000:]
    raise AssertionError(f"no {pattern!r} in the log within {timeout} s:\n{tail}")


def _outcomes(endpoint: Endpoint, keys: list[str]) -> dict[str, str | None]:
    out = {}
    for key in keys:
        record = endpoint.store.get(image_id_for_object(endpoint.settings.bucket, key))
        out[key] = record.status if record else None
    return out


def _visible(endpoint: Endpoint) -> tuple[int, int]:
    attrs = endpoint.clients.sqs.get_queue_attributes(
        QueueUrl=endpoint.resources.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]))


def _wait_all_done(endpoint: Endpoint, keys: list[str], timeout: float) -> dict[str, str | None]:
    deadline = time.monotonic() + timeout
    while True:
        outcomes = _outcomes(endpoint, keys)
        if all(v == "done" for v in outcomes.values()) or time.monotonic() > deadline:
            return outcomes
        time.sleep(1)


def test_first_sigterm_finishes_the_batch_in_hand_and_takes_nothing_more(
        endpoint: Endpoint, tmp_path: Path) -> None:
    # Given 25 images that take a while to decode, and a processor at work on them
    keys = _put_all(endpoint, "term", _images(25, (1500, 1000), "PNG", seed=1))
    log = tmp_path / "processor.log"
    with log.open("wb") as sink:
        processor = start_processor(endpoint.env, log=sink)
        try:
            _wait_for_line(log, BULK_IN_HAND, timeout=180)

            # When it gets one SIGTERM with a batch in hand
            processor.send_signal(signal.SIGTERM)
            code = processor.wait(120)
        finally:
            stop_processes(processor)

    # Then it finished what it had received, exited 0, and left the rest on the queue
    text = log.read_text()
    taken = sum(int(n) for n in re.findall(BULK_IN_HAND, text))
    outcomes = _outcomes(endpoint, keys)
    assert code == 0, text[-3000:]
    assert 1 <= taken < len(keys)
    assert sum(v == "done" for v in outcomes.values()) == taken, (outcomes, text[-4000:])
    assert sum(v is None for v in outcomes.values()) == len(keys) - taken
    assert _visible(endpoint) == (len(keys) - taken, 0)


def test_second_sigterm_exits_at_once_and_the_batch_comes_back(endpoint: Endpoint,
                                                               tmp_path: Path) -> None:
    keys = _put_all(endpoint, "twice", _images(20, (1500, 1000), "PNG", seed=2))
    log = tmp_path / "processor.log"
    with log.open("wb") as sink:
        processor = start_processor(endpoint.env, log=sink)
        try:
            _wait_for_line(log, IN_HAND, timeout=180)
            processor.send_signal(signal.SIGTERM)
            # The second signal only means "at once" after the first was taken.
            _wait_for_line(log, "SIGTERM: finishing the batch in hand", timeout=30)
            processor.send_signal(signal.SIGTERM)
            code = processor.wait(60)
        finally:
            stop_processes(processor)
        assert code == EXIT_FORCED, log.read_text()[-3000:]

        # The unacknowledged messages come back by themselves, to a new processor
        processor = start_processor(endpoint.env, log=sink)
        try:
            outcomes = _wait_all_done(endpoint, keys, timeout=240)
        finally:
            stop_processes(processor)
    assert all(v == "done" for v in outcomes.values()), outcomes
    assert count_results(endpoint.clients.dynamodb, endpoint.settings.table) == len(keys)


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid:
            found.append((int(entry), cmdline))
    return found


@dataclass
class MakeRun:
    """`imagepipe run` in a subprocess, and what the test reads once it has stopped."""

    process: subprocess.Popen
    log: Path
    endpoint: Endpoint
    children: list[int] = field(default_factory=list)
    code: int | None = None


@contextmanager
def _make_run(settings: Settings, endpoint_port: int, tmp_path: Path) -> Iterator[MakeRun]:
    """Start `imagepipe run` against its own endpoint; stop it with SIGTERM on the way out."""
    # A home of its own: the stack it records there is nobody else's to find.
    env = {**os.environ, **settings.environ(), "HOME": str(tmp_path / "home")}
    log = tmp_path / "run.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "imagepipe", "run", "--endpoint-port", str(endpoint_port)],
            env=env, stdout=sink, stderr=subprocess.STDOUT)
        run: MakeRun | None = None
        try:
            _wait_for_line(log, "Ctrl-C stops everything", timeout=120)
            local = Settings.from_env(local_environ(f"http://127.0.0.1:{endpoint_port}", env))
            clients = make_clients(local)
            run = MakeRun(process, log, Endpoint(local, env, provision(local, clients), clients,
                                                 ResultStore(clients.dynamodb, local.table)))
            yield run
        finally:
            children = [pid for pid, _ in _children(process.pid)]
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(60)
            finally:
                stop_processes(process)
            if run is not None:
                run.children, run.code = children, code


def _kill_processor(run: MakeRun, offset: int, pause: float) -> int:
    """SIGKILL the processor once it is at work; the log offset after its restart."""
    match = _wait_for_line(run.log, IN_HAND, timeout=180, after=offset)
    time.sleep(pause)
    processors = [p for p, cmd in _children(run.process.pid) if "-m processor" in cmd]
    assert len(processors) == 1, (_children(run.process.pid), run.log.read_text()[-3000:])
    os.kill(processors[0], signal.SIGKILL)
    return _wait_for_line(run.log, r"processor restarted, pid \d+", timeout=30,
                          after=match.end()).end()


def _receive_events(clients: Any, url: str) -> list[dict[str, Any]]:
    """Every event waiting on a queue, deleted as read."""
    events = []
    while True:
        messages = clients.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                               WaitTimeSeconds=1).get("Messages", [])
        if not messages:
            return events
        events.extend(event_from_message(m["Body"]) for m in messages)
        clients.sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(model_cache: Path,
                                                               tmp_path: Path) -> None:
    # Given `imagepipe run` (which restarts a dead processor, as systemd would), and a queue
    # subscribed to its results topic for done results only
    settings = Settings(bucket="chaos-images", queue="chaos-events", dead_letter_queue="chaos-dlq",
                        table="chaos-results", results_topic="chaos-topic",
                        webhook_queue="chaos-webhooks", port=free_port(), poll_seconds=1,
                        visibility_timeout=4, max_receives=50, cache_dir=model_cache,
                        metrics_front_port=free_port(), metrics_processor_port=free_port(),
                        events_port=free_port())
    rng = random.Random(99)
    with _make_run(settings, free_port(), tmp_path) as run:
        endpoint, clients, local = run.endpoint, run.endpoint.clients, run.endpoint.settings
        listener = clients.sqs.create_queue(QueueName="done-listener")["QueueUrl"]
        subscribe_queue(clients, endpoint.resources.topic_arn, listener, {"status": ["done"]})
        keys = _put_all(endpoint, "chaos", _images(200, (96, 64), "PNG", seed=3))

        # When its processor is killed with SIGKILL four times at random moments
        offset = 0
        for _ in range(4):
            offset = _kill_processor(run, offset, rng.uniform(0.0, 2.0))

        # Then every image ends with exactly one done record, none lost or duplicated
        outcomes = _wait_all_done(endpoint, keys, timeout=400)
        assert all(v == "done" for v in outcomes.values()), {
            k: v for k, v in outcomes.items() if v != "done"}
        items = count_results(clients.dynamodb, local.table)
        assert items == len(keys)
        events = _receive_events(clients, listener)
    # Stopping `imagepipe run` stops everything it started.
    assert run.code == 0
    assert len(run.children) == 4  # moto, the processor, the events server, the front
    assert not [pid for pid in run.children if Path(f"/proc/{pid}").exists()]

    # And every written record's done event arrived; repeats of an image share one event ID
    ids_by_image: dict[str, set[str]] = {}
    for event in events:
        assert event["type"] == "result.done" and event["status"] == "done"
        ids_by_image.setdefault(event["image_id"], set()).add(event["event_id"])
    assert set(ids_by_image) == {image_id_for_object(local.bucket, k) for k in keys}
    assert all(len(ids) == 1 for ids in ids_by_image.values()), {
        k: v for k, v in ids_by_image.items() if len(v) > 1}
    print(f"kill -9 x4: {len(keys)} images, {items} records, {len(events)} done events "
          f"({len(events) - len(keys)} repeats, same event_id), 0 lost, 0 duplicated")
