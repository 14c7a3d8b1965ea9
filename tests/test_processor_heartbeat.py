"""Processor heartbeats: throttled writes, listed by status, invisible to results."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from botocore.exceptions import ClientError

from imagepipe.core.heartbeats import KEY_PREFIX, recent_beats
from imagepipe.core.ids import is_image_id
from imagepipe.core.records import STATUSES, ResultStore
from processor.heartbeat import Heartbeat
from tests.fakes import CountingClassifier


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_beats_at_most_once_per_interval(clients, settings, store: ResultStore) -> None:
    clock = FakeClock()
    heartbeat = Heartbeat(clients.dynamodb, settings.table, "fake 1", interval=15, clock=clock)

    assert heartbeat.beat(1, 0)
    clock.now += 14
    assert not heartbeat.beat(2, 10)
    clock.now += 1
    assert heartbeat.beat(3, 25)

    (beat,) = recent_beats(clients.dynamodb, settings.table, 60)
    assert beat.pid == os.getpid()
    assert beat.processor_id.endswith(f":{os.getpid()}")
    assert (beat.batches, beat.images, beat.model) == (3, 25, "fake 1")
    assert beat.started_at <= beat.last_seen


def test_heartbeats_are_not_results(clients, settings, store: ResultStore) -> None:
    Heartbeat(clients.dynamodb, settings.table, "fake 1").beat(1, 0)

    item = clients.dynamodb.scan(TableName=settings.table)["Items"][0]
    assert item["image_id"]["S"].startswith(KEY_PREFIX)
    assert not is_image_id(item["image_id"]["S"])
    assert store.list_results().records == []
    assert all(store.count(s) == 0 for s in STATUSES)


def test_old_beats_are_not_recent(clients, settings, store: ResultStore) -> None:
    Heartbeat(clients.dynamodb, settings.table, "fake 1").beat(1, 0)
    item = clients.dynamodb.scan(TableName=settings.table)["Items"][0]
    item["created_at"] = {"S": "2020-01-01T00:00:00.000Z"}
    clients.dynamodb.put_item(TableName=settings.table, Item=item)

    assert recent_beats(clients.dynamodb, settings.table, 3600) == []


def test_a_failed_beat_does_not_stop_the_processor(settings) -> None:
    class Down:
        def put_item(self, **kwargs: Any) -> None:
            raise ClientError({"Error": {"Code": "InternalServerError", "Message": "down"}},
                              "PutItem")

    assert not Heartbeat(Down(), settings.table, "fake 1").beat(1, 0)


def test_the_worker_beats_while_it_polls(make_worker, settings, clients, resources, store) -> None:
    heartbeat = Heartbeat(clients.dynamodb, settings.table, "fake 1", interval=0)
    # One lane: with two, max_batches bounds each lane's receives, and empty ones may be dropped.
    one_lane = replace(settings, interactive_queue="off")
    worker = make_worker(one_lane, clients, CountingClassifier(), heartbeat=heartbeat)

    worker.run(max_batches=2)

    (beat,) = recent_beats(clients.dynamodb, settings.table, 60)
    assert beat.batches == 2
