"""`make run`, add images, Ctrl-C, `make run`: the results, images and users are still there.

Also the snapshot itself, in process: what it keeps, what it drops, and a wipe.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from imagepipe.core.aws import make_clients
from imagepipe.core.provision import provision
from imagepipe.core.settings import Settings
from imagepipe.local import snapshot
from imagepipe.local.key_maps import speed_up_indexes
from imagepipe.local.stack import free_port, stop_processes
from tests.test_e2e_local_stack import CAT_CLASSES, _person, _wait_for_line


def _endpoint_client(service: str, endpoint: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _start(env: dict[str, str], log: Path, endpoint_port: int, *extra: str) -> subprocess.Popen:
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "imagepipe", "run", "--endpoint-port", str(endpoint_port),
             *extra], env=env, stdout=sink, stderr=subprocess.STDOUT)


def _ctrl_c(run: subprocess.Popen) -> None:
    run.send_signal(signal.SIGINT)
    try:
        assert run.wait(180) == 0
    finally:
        stop_processes(run)


@pytest.mark.slow
def test_make_run_keeps_results_images_and_users_across_a_restart(model_cache: Path, photos,
                                                                  tmp_path: Path) -> None:
    data = tmp_path / "data"
    port, endpoint_port = free_port(), free_port()
    settings = Settings(bucket="kept-images", queue="kept-events",
                        dead_letter_queue="kept-events-dlq", table="kept-results", port=port,
                        poll_seconds=1, cache_dir=model_cache, local_data=str(data),
                        metrics_front_port=free_port(), metrics_processor_port=free_port(),
                        events_port=free_port())
    env = {**_person(tmp_path), **settings.environ()}
    endpoint = f"http://127.0.0.1:{endpoint_port}"
    log = tmp_path / "run.log"

    # Given `make run` and an image dropped into its bucket, labelled
    run = _start(env, log, endpoint_port)
    try:
        _wait_for_line(log, "Ctrl-C stops everything", 120)
        assert f"local data    {data}" in log.read_text()
        s3 = _endpoint_client("s3", endpoint)
        s3.put_object(Bucket=settings.bucket, Key="drops/cat.jpg", Body=photos.cat_jpeg)
        admin_env = {**env, "AWS_ENDPOINT_URL": endpoint, **{
            k: "testing" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}
        added = subprocess.run([sys.executable, "-m", "imagepipe", "users", "add", "kept"],
                               env=admin_env, capture_output=True, text=True, timeout=120)
        assert added.returncode == 0, added.stderr
        pools = _endpoint_client("cognito-idp", endpoint).list_user_pools(MaxResults=10)
        # The front needs a token: read the result from the table instead.
        dynamodb = _endpoint_client("dynamodb", endpoint)
        deadline = time.monotonic() + 300
        while True:
            items = dynamodb.scan(TableName=settings.table)["Items"]
            done = [i for i in items if i.get("status", {}).get("S") == "done"]
            if done:
                break
            assert time.monotonic() < deadline, items
            time.sleep(0.5)
    finally:
        # When it is stopped with Ctrl-C
        _ctrl_c(run)
    assert len(done) == 1

    # Then the next `make run` has the result, the image, the user pool and its users
    run = _start(env, log, endpoint_port)
    try:
        _wait_for_line(log, r"(?s)Ctrl-C stops everything.*Ctrl-C stops everything", 120)
        dynamodb = _endpoint_client("dynamodb", endpoint)
        assert dynamodb.get_item(TableName=settings.table, Key={
            "image_id": done[0]["image_id"]})["Item"] == done[0]
        s3 = _endpoint_client("s3", endpoint)
        body = s3.get_object(Bucket=settings.bucket, Key="drops/cat.jpg")["Body"].read()
        assert body == photos.cat_jpeg
        cognito = _endpoint_client("cognito-idp", endpoint)
        assert cognito.list_user_pools(MaxResults=10)["UserPools"] == pools["UserPools"]
        pool = pools["UserPools"][0]["Id"]
        assert {"demo", "kept"} <= {u["Username"] for u in cognito.list_users(
            UserPoolId=pool)["Users"]}
        # And the processor goes on: a new image is labelled and the old one is not redone
        s3.put_object(Bucket=settings.bucket, Key="drops/again.jpg", Body=photos.cat_png)
        deadline = time.monotonic() + 300
        while True:
            items = dynamodb.scan(TableName=settings.table)["Items"]
            if sum(i.get("status", {}).get("S") == "done" for i in items) == 2:
                break
            assert time.monotonic() < deadline, items
            time.sleep(0.5)
        # The results' own top labels (search items of their words share the table).
        labels = {i["labels"]["L"][0]["M"]["label"]["S"] for i in items
                  if i.get("status", {}).get("S") == "done"}
        assert labels and all(any(c.lower() == label for c in CAT_CLASSES) for label in labels)
    finally:
        _ctrl_c(run)
    assert (data / "snapshot.pickle").exists()
    assert len(list((data / "objects").iterdir())) >= 2


# ---------------------------------------------------------------- the snapshot, in process

@pytest.fixture
def moto_with_bodies_in(tmp_path: Path) -> Any:
    """moto in process, keeping S3 bodies as files in tmp_path; moto's own tempfile after."""
    from moto.s3 import models

    original = models.tempfile
    snapshot.keep_bodies_in(tmp_path)
    try:
        with mock_aws():
            yield tmp_path
    finally:
        models.tempfile = original


def test_a_snapshot_round_trip_keeps_what_is_there_and_drops_the_rest(
        moto_with_bodies_in: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = moto_with_bodies_in
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    settings = Settings(bucket="snap-images", queue="snap-events",
                        dead_letter_queue="snap-events-dlq", table="snap-results")
    clients = make_clients(settings)
    provision(settings, clients)
    bodies = {f"k{n}": os.urandom(200_000 + n) for n in range(5)}
    for key, body in bodies.items():
        clients.s3.put_object(Bucket=settings.bucket, Key=key, Body=body)
    clients.s3.put_object(Bucket=settings.bucket, Key="k1", Body=b"overwritten")
    clients.s3.delete_object(Bucket=settings.bucket, Key="k0")
    # An index query, answered from the index maps
    assert speed_up_indexes()
    clients.dynamodb.put_item(TableName=settings.table, Item={
        "image_id": {"S": "one"}, "feed": {"S": "all#0"}, "created_at": {"S": "2026"}})
    feed = {"TableName": settings.table, "IndexName": "by_created",
            "KeyConditionExpression": "feed = :f",
            "ExpressionAttributeValues": {":f": {"S": "all#0"}}}
    assert clients.dynamodb.query(**feed)["Count"] == 1
    # Bodies are files, one per object version the bucket holds
    snapshot.save(data)
    assert len(list((data / "objects").iterdir())) == 4
    assert (data / "snapshot.pickle").stat().st_size < sum(map(len, bodies.values()))
    # The maps are not kept: a stack started with them off would not update them.
    with open(data / "snapshot.pickle", "rb") as saved:
        tables = pickle.load(saved)["backends"]["dynamodb"]["123456789012"]["us-east-1"].tables
    assert "_imagepipe_key_maps" not in vars(tables[settings.table])

    # A later start, with moto empty, gets everything back
    from moto.s3.models import s3_backends

    s3_backends.reset()
    assert snapshot.restore(data)
    got = {o["Key"] for o in clients.s3.list_objects_v2(Bucket=settings.bucket)["Contents"]}
    assert got == {"k1", "k2", "k3", "k4"}
    assert clients.s3.get_object(Bucket=settings.bucket, Key="k1")["Body"].read() == (
        b"overwritten")
    assert clients.s3.get_object(Bucket=settings.bucket, Key="k4")["Body"].read() == bodies["k4"]
    assert clients.dynamodb.query(**feed)["Count"] == 1

    # A wipe leaves nothing to restore
    snapshot.wipe(data)
    assert not snapshot.restore(data)
    assert not list((data / "objects").iterdir())


def test_a_snapshot_of_another_moto_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / snapshot.SNAPSHOT).write_bytes(pickle.dumps({"format": 1, "moto": "0.0"}))
    assert not snapshot.restore(tmp_path)
    assert (tmp_path / (snapshot.SNAPSHOT + ".old")).exists()
    (tmp_path / snapshot.SNAPSHOT).write_bytes(b"truncated")
    assert not snapshot.restore(tmp_path)
