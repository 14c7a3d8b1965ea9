"""Instances leave gracefully: lifecycle hooks, the IMDSv2 watcher, the drain, the ready marker.

A fake instance metadata service on a loopback port stands in for 169.254.169.254, which no test
contacts; moto holds the group and its hooks. moto has no CompleteLifecycleAction, so a stub
checks each call against botocore's model of the API and against the group's hooks in moto,
and records it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.validate import validate_parameters

from imagepipe.core.settings import Settings
from processor.lifecycle import (
    DEFAULT_READY_FILE,
    Hooks,
    Imds,
    ImdsError,
    InstanceProcesses,
    Lifecycle,
    make_lifecycle,
)
from tests.conftest import s3_event, wait_for
from tests.fakes import FakeClassifier, png, queue_counts

GROUP = "test-processors"
LAUNCH_HOOK = "test-processors-launching"
TERMINATE_HOOK = "test-processors-terminating"


class FakeImds:
    """IMDSv2 on a free loopback port: a token by PUT, then GETs that must carry it."""

    def __init__(self, instance_id: str = "i-0123456789abcdef0") -> None:
        self.instance_id = instance_id
        self.state: str | None = "InService"
        self.spot: dict[str, str] | None = None
        self.tokens: list[str] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_PUT(self) -> None:
                fake.requests.append(("PUT", self.path, dict(self.headers)))
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
                if self.path != "/latest/api/token" or not ttl.isdigit():
                    self._reply(400, "")
                    return
                fake.tokens.append(f"token-{len(fake.tokens)}")
                self._reply(200, fake.tokens[-1])

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path, dict(self.headers)))
                if self.headers.get("X-aws-ec2-metadata-token") not in fake.tokens:
                    self._reply(401, "")
                    return
                body = fake.answer(self.path)
                self._reply(404, "") if body is None else self._reply(200, body)

            def _reply(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def answer(self, path: str) -> str | None:
        if path == "/latest/meta-data/instance-id":
            return self.instance_id
        if path == "/latest/meta-data/autoscaling/target-lifecycle-state":
            return self.state
        if path == "/latest/meta-data/spot/instance-action":
            return None if self.spot is None else json.dumps(self.spot)
        return None

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class RecordingAutoscaling:
    """moto's autoscaling, plus the two hook calls moto lacks, checked and recorded."""

    def __init__(self, client: Any, events: list[str]) -> None:
        self._client = client
        self._model = client.meta.service_model
        self.events = events
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def complete_lifecycle_action(self, **params: Any) -> dict[str, Any]:
        return self._record("CompleteLifecycleAction", params)

    def record_lifecycle_action_heartbeat(self, **params: Any) -> dict[str, Any]:
        return self._record("RecordLifecycleActionHeartbeat", params)

    def _record(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        validate_parameters(params, self._model.operation_model(operation).input_shape)
        hooks = self._client.describe_lifecycle_hooks(
            AutoScalingGroupName=params["AutoScalingGroupName"])["LifecycleHooks"]
        if params["LifecycleHookName"] not in {h["LifecycleHookName"] for h in hooks}:
            raise ClientError({"Error": {"Code": "ValidationError",
                                         "Message": "No such hook"}}, operation)
        self.calls.append((operation, params))
        self.events.append(f"{operation} {params['LifecycleHookName']}")
        return {}


class FakeTime:
    """A clock that the watcher's sleeps move forward; no interval is waited out."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._yield = threading.Event()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        # A millisecond, only so that a polling thread does not hold the GIL.
        self._yield.wait(0.001)


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    fake = FakeImds()
    yield fake
    fake.close()


@pytest.fixture
def events() -> list[str]:
    return []


@pytest.fixture
def autoscaling(aws: None, imds: FakeImds, events: list[str]) -> RecordingAutoscaling:
    """A group in moto with both hooks; the fake metadata serves its instance's ID."""
    client = boto3.client("autoscaling", region_name="us-east-1")
    client.create_launch_configuration(LaunchConfigurationName="lc", ImageId="ami-12c6146b",
                                       InstanceType="t2.micro")
    client.create_auto_scaling_group(
        AutoScalingGroupName=GROUP, LaunchConfigurationName="lc", MinSize=1, MaxSize=1,
        DesiredCapacity=1, AvailabilityZones=["us-east-1a"])
    # As the stack's LifecycleHookSpecificationList makes them (moto keeps put hooks only).
    client.put_lifecycle_hook(
        AutoScalingGroupName=GROUP, LifecycleHookName=LAUNCH_HOOK, DefaultResult="ABANDON",
        LifecycleTransition="autoscaling:EC2_INSTANCE_LAUNCHING", HeartbeatTimeout=1800)
    client.put_lifecycle_hook(
        AutoScalingGroupName=GROUP, LifecycleHookName=TERMINATE_HOOK, DefaultResult="CONTINUE",
        LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING", HeartbeatTimeout=300)
    (group,) = client.describe_auto_scaling_groups(
        AutoScalingGroupNames=[GROUP])["AutoScalingGroups"]
    imds.instance_id = group["Instances"][0]["InstanceId"]
    return RecordingAutoscaling(client, events)


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def make_lifecycle_for(imds: FakeImds, autoscaling: RecordingAutoscaling, fake_time: FakeTime,
                       tmp_path: Path) -> Iterator[Any]:
    made: list[Lifecycle] = []

    def make(ready_file: Path | None = None, base_url: str | None = None) -> Lifecycle:
        made.append(Lifecycle(
            Hooks(GROUP, LAUNCH_HOOK, TERMINATE_HOOK), autoscaling,
            Imds(base_url or imds.url, clock=fake_time.clock),
            ready_file=ready_file or tmp_path / "run" / "ready",
            clock=fake_time.clock, sleep=fake_time.sleep,
        ))
        return made[-1]

    yield make
    for lifecycle in made:
        lifecycle._finished.set()


def _thirty_messages(settings: Settings, clients: Any, queue_url: str) -> None:
    for i in range(30):
        clients.s3.put_object(Bucket=settings.bucket, Key=f"s/{i}.png", Body=png((20 + i, 20)))
    # Drop the bucket's own test event, so the queue holds exactly the 30 objects.
    clients.sqs.purge_queue(QueueUrl=queue_url)
    for i in range(30):
        clients.sqs.send_message(QueueUrl=queue_url, MessageBody=s3_event(settings.bucket,
                                                                          f"s/{i}.png"))


def _receive_counts(clients: Any, queue_url: str) -> list[int]:
    """Receive everything visible once more (at visibility 0 there is no wait) and count."""
    counts = []
    while True:
        messages = clients.sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=300,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        ).get("Messages", [])
        if not messages:
            return counts
        counts += [int(m["Attributes"]["ApproximateReceiveCount"]) for m in messages]


def _drain_mid_batch(make_worker: Any, settings: Settings, clients: Any, resources: Any,
                     lifecycle: Lifecycle, notice: Any,
                     until: Any = None) -> Any:
    """Run the worker; while the first batch is classified, `notice()` announces the leave."""
    _thirty_messages(settings, clients, resources.queue_url)

    class SlowClassifier(FakeClassifier):
        def classify(self, images: list[Any], top_k: int = 5) -> list:
            if not self.batches:
                wait_for(lambda: queue_counts(clients, resources.queue_url) == (0, 30),
                         "the prefetcher to receive every message")
                notice()
                wait_for(lambda: worker.stopping, "the watcher to stop the worker")
                if until is not None:
                    wait_for(until, "draining to go on")
            return super().classify(images, top_k)

    worker = make_worker(settings, clients, SlowClassifier())
    lifecycle.watch(worker.stop)
    return worker.run()


def test_a_terminating_hook_mid_batch_finishes_the_batch_releases_the_rest_and_continues(
        make_worker, settings, clients, resources, store, imds, autoscaling,
        make_lifecycle_for) -> None:
    # Given a processor in service
    lifecycle = make_lifecycle_for()

    # When the group starts terminating its instance while a batch is being classified
    def scale_in() -> None:
        imds.state = "Terminated"
    report = _drain_mid_batch(make_worker, settings, clients, resources, lifecycle, scale_in)

    # Then the batch in hand was finished, written and acknowledged...
    assert report.done == report.deleted == 10
    results = [store.get(_image_id(settings, i)) for i in range(30)]
    assert sum(1 for r in results if r is not None and r.status == "done") == 10
    # ...and the batches received ahead are visible again at once, not after 300 s,
    # having spent only the one receive that brought them.
    assert queue_counts(clients, resources.queue_url) == (20, 0)
    assert _completions(autoscaling) == []  # the group was not told to go on before that
    lifecycle.close()
    assert _completions(autoscaling) == [("CompleteLifecycleAction", {
        "LifecycleHookName": TERMINATE_HOOK, "AutoScalingGroupName": GROUP,
        "InstanceId": imds.instance_id, "LifecycleActionResult": "CONTINUE",
    })]
    assert lifecycle.leaving == "target lifecycle state Terminated"
    assert _receive_counts(clients, resources.queue_url) == [2] * 20


def test_a_spot_interruption_notice_drains_the_same_way(
        make_worker, settings, clients, resources, imds, autoscaling, make_lifecycle_for) -> None:
    lifecycle = make_lifecycle_for()

    def interruption() -> None:
        imds.spot = {"action": "terminate", "time": "2026-12-01T07:00:00Z"}
    report = _drain_mid_batch(make_worker, settings, clients, resources, lifecycle,
                                 interruption)

    assert report.done == report.deleted == 10
    assert queue_counts(clients, resources.queue_url) == (20, 0)
    lifecycle.close()
    assert [(op, p["LifecycleHookName"], p["LifecycleActionResult"])
            for op, p in _completions(autoscaling)] == [
        ("CompleteLifecycleAction", TERMINATE_HOOK, "CONTINUE")]
    assert lifecycle.leaving is not None and "Spot interruption notice" in lifecycle.leaving
    assert _receive_counts(clients, resources.queue_url) == [2] * 20


def test_a_long_drain_keeps_the_hook_alive_with_heartbeats(
        make_worker, settings, clients, resources, imds, autoscaling, make_lifecycle_for,
        fake_time) -> None:
    lifecycle = make_lifecycle_for()
    started = fake_time.now

    def scale_in() -> None:
        imds.state = "Terminated"

    # The batch in hand takes (on the fake clock) more than two heartbeat intervals.
    report = _drain_mid_batch(
        make_worker, settings, clients, resources, lifecycle, scale_in,
        until=lambda: sum(op == "RecordLifecycleActionHeartbeat"
                          for op, _ in autoscaling.calls) >= 2)
    lifecycle.close()

    assert report.done == 10
    operations = [op for op, _ in autoscaling.calls]
    assert operations[-1] == "CompleteLifecycleAction"
    assert set(operations[:-1]) == {"RecordLifecycleActionHeartbeat"}
    assert fake_time.now - started >= 120
    heartbeat = autoscaling.calls[0][1]
    assert heartbeat == {"LifecycleHookName": TERMINATE_HOOK, "AutoScalingGroupName": GROUP,
                         "InstanceId": imds.instance_id}


def test_the_watcher_reads_nothing_but_the_metadata_through_a_token(
        imds, autoscaling, make_lifecycle_for) -> None:
    lifecycle = make_lifecycle_for()
    stops: list[bool] = []
    lifecycle.watch(lambda: stops.append(True))
    wait_for(lambda: sum(1 for r in imds.requests if r[0] == "GET") >= 10, "a few polls")
    lifecycle.close()

    assert stops == [] and lifecycle.leaving is None
    assert autoscaling.calls == []  # in service and staying: no hook to complete
    puts = [r for r in imds.requests if r[0] == "PUT"]
    assert len(puts) == 1  # one session token, reused
    assert puts[0][2]["X-aws-ec2-metadata-token-ttl-seconds"] == "21600"
    gets = [r for r in imds.requests if r[0] == "GET"]
    assert {path for _, path, _ in gets} == {
        "/latest/meta-data/autoscaling/target-lifecycle-state",
        "/latest/meta-data/spot/instance-action",
    }
    assert all(h["X-aws-ec2-metadata-token"] == "token-0" for _, _, h in gets)


@pytest.fixture
def run_main(monkeypatch, settings, clients, resources, imds, autoscaling, events, fake_time,
             tmp_path) -> Any:
    """The processor's entry point on an instance of the group, with a fake model."""
    import processor.__main__ as entry
    import processor.lifecycle
    import processor.model

    ready_file = tmp_path / "run" / "ready"
    marker_at_load: list[bool] = []

    class RecordingClassifier(FakeClassifier):
        def classify(self, images: list[Any], top_k: int = 5) -> list:
            events.append(f"classify {len(images)}")
            return super().classify(images, top_k)

    def load_classifier(*args: Any, **kwargs: Any) -> FakeClassifier:
        events.append("model loaded")
        marker_at_load.append(ready_file.exists())
        return RecordingClassifier()

    def lifecycle_for(the_settings: Settings) -> Lifecycle:
        hooks = Hooks.from_settings(the_settings)
        assert hooks == Hooks(GROUP, LAUNCH_HOOK, TERMINATE_HOOK)
        return Lifecycle(hooks, autoscaling, Imds(imds.url, clock=fake_time.clock),
                         ready_file=ready_file, clock=fake_time.clock, sleep=fake_time.sleep)

    receive = clients.sqs.receive_message

    def recorded_receive(**kwargs: Any) -> Any:
        # The images' lanes; the webhook deliverer's own queue polls on its thread.
        if kwargs["QueueUrl"] != resources.webhook_queue_url:
            events.append("receive")
        return receive(**kwargs)

    monkeypatch.setattr(clients.sqs, "receive_message", recorded_receive)
    monkeypatch.setattr(processor.model, "load_classifier", load_classifier)
    monkeypatch.setattr(processor.lifecycle, "make_lifecycle", lifecycle_for)
    monkeypatch.setattr(entry, "make_clients", lambda s: clients)
    monkeypatch.setattr(entry, "configure_logging", lambda *a: None)
    for name, value in {
        **settings.environ(), "IMAGEPIPE_LIFECYCLE_GROUP": GROUP,
        "IMAGEPIPE_LAUNCH_HOOK": LAUNCH_HOOK, "IMAGEPIPE_TERMINATE_HOOK": TERMINATE_HOOK,
    }.items():
        monkeypatch.setenv(name, value)

    def run(*argv: str) -> int:
        handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        try:
            return entry.main(list(argv))
        finally:
            signal.signal(signal.SIGTERM, handlers[0])
            signal.signal(signal.SIGINT, handlers[1])

    run.entry = entry  # type: ignore[attr-defined]
    run.ready_file = ready_file  # type: ignore[attr-defined]
    run.marker_at_load = marker_at_load  # type: ignore[attr-defined]
    return run


def test_the_launching_hook_is_completed_only_once_the_model_is_loaded_and_warm(
        run_main, autoscaling, events) -> None:
    # When the processor starts on an instance of the group and makes one receive
    assert run_main("--max-batches", "1") == run_main.entry.EXIT_OK

    # Then the hook went on after the model was loaded and warmed, before the first receive
    assert events[:4] == ["model loaded", "classify 1", f"CompleteLifecycleAction {LAUNCH_HOOK}",
                          "receive"]
    assert run_main.marker_at_load == [False]
    assert autoscaling.calls[0][1]["LifecycleActionResult"] == "CONTINUE"
    # ...and the marker is gone with the process; the group kept it, so no terminating hook.
    assert not run_main.ready_file.exists()
    assert [op for op, _ in autoscaling.calls] == ["CompleteLifecycleAction"]


def test_a_processor_started_on_a_leaving_instance_takes_nothing_and_says_drained(
        run_main, imds, autoscaling, events, clients, resources) -> None:
    # systemd restarted a processor (or one was slow to start) while the group terminates.
    imds.state = "Terminated"
    clients.sqs.send_message(QueueUrl=resources.queue_url, MessageBody="{}")

    assert run_main() == run_main.entry.EXIT_DRAINED

    assert "receive" not in events
    assert [p["LifecycleHookName"] for _, p in _completions(autoscaling)] == [
        LAUNCH_HOOK, TERMINATE_HOOK]
    assert queue_counts(clients, resources.queue_url)[0] >= 1


def test_the_ready_marker_waits_for_every_process_on_the_instance(tmp_path) -> None:
    directory = tmp_path / "run"
    mine = InstanceProcesses(directory, pid=os.getpid())
    other = InstanceProcesses(directory, pid=os.getppid())
    gone = InstanceProcesses(directory, pid=2**22 + 12345)  # no such process: a stale file
    for process in (mine, other, gone):
        process.join()

    assert mine.leave() is False  # the other process is still draining
    assert other.leave() is True  # the last one out; the stale file does not count


def test_another_process_still_draining_keeps_the_marker_and_the_hook(
        imds, autoscaling, make_lifecycle_for, tmp_path) -> None:
    ready_file = tmp_path / "run" / "ready"
    lifecycle = make_lifecycle_for(ready_file)
    lifecycle.ready()
    InstanceProcesses(ready_file.parent, pid=os.getppid()).join()
    imds.state = "Terminated"

    lifecycle.close()

    assert ready_file.exists()
    assert [p["LifecycleHookName"] for _, p in autoscaling.calls] == [LAUNCH_HOOK]


def test_off_ec2_nothing_happens(run_main, monkeypatch, events, autoscaling, settings) -> None:
    # No group configured (the local stack): no metadata read, no warm-up, no hook, no marker.
    import processor.lifecycle

    def no_metadata(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the instance metadata was looked for")

    monkeypatch.delenv("IMAGEPIPE_LIFECYCLE_GROUP")
    monkeypatch.setattr(processor.lifecycle, "make_lifecycle", make_lifecycle)
    monkeypatch.setattr(processor.lifecycle, "Imds", no_metadata)

    assert run_main("--max-batches", "1") == run_main.entry.EXIT_OK

    assert events == ["model loaded", "receive", "receive"]  # one receive of each lane
    assert autoscaling.calls == [] and not run_main.ready_file.parent.exists()
    assert Settings.from_env({}).lifecycle_group is None
    assert Hooks.from_settings(settings) is None and make_lifecycle(settings) is None


def test_without_a_metadata_service_the_processor_keeps_working(
        make_worker, settings, clients, resources, autoscaling, make_lifecycle_for) -> None:
    # A port nothing listens on: every poll fails, and that is never a reason to leave.
    lifecycle = make_lifecycle_for(base_url=_unused_port_url())
    for i in range(3):
        clients.s3.put_object(Bucket=settings.bucket, Key=f"k/{i}.png", Body=png((20 + i, 20)))
    worker = make_worker(settings, clients, FakeClassifier())

    lifecycle.watch(worker.stop)
    report = worker.run(max_batches=3)
    lifecycle.close()

    assert report.done == 3 and not worker.stopping
    assert lifecycle.leaving is None and autoscaling.calls == []


def test_imds_client_answers_none_for_404_and_renews_a_refused_token(imds) -> None:
    client = Imds(imds.url)
    assert client.spot_action() is None
    assert client.target_lifecycle_state() == "InService"

    imds.tokens.clear()  # the service restarted: the token held is no longer known
    assert client.instance_id() == imds.instance_id
    assert [method for method, _, _ in imds.requests].count("PUT") == 2

    imds.spot = {"action": "stop", "time": "2026-12-01T07:00:00Z"}
    assert client.spot_action() == {"action": "stop", "time": "2026-12-01T07:00:00Z"}


def test_imds_client_reports_an_unreachable_service() -> None:
    with pytest.raises(ImdsError):
        Imds(_unused_port_url(), timeout=0.5).target_lifecycle_state()


def test_in_a_group_the_marker_goes_to_run_imagepipe_unless_set(settings) -> None:
    in_group = Settings.from_env({"IMAGEPIPE_LIFECYCLE_GROUP": GROUP})
    assert make_lifecycle(in_group)._ready_file == DEFAULT_READY_FILE == Path(
        "/run/imagepipe/ready")
    elsewhere = Settings.from_env({"IMAGEPIPE_LIFECYCLE_GROUP": GROUP,
                                   "IMAGEPIPE_READY_FILE": "/tmp/x/ready"})
    assert make_lifecycle(elsewhere)._ready_file == Path("/tmp/x/ready")


def _unused_port_url() -> str:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{unused.getsockname()[1]}"


def _completions(autoscaling: RecordingAutoscaling) -> list[tuple[str, dict[str, Any]]]:
    return [call for call in autoscaling.calls if call[0] == "CompleteLifecycleAction"]


def _image_id(settings: Settings, i: int) -> str:
    from imagepipe.core.ids import image_id_for_object

    return image_id_for_object(settings.bucket, f"s/{i}.png")
