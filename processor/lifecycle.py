"""The instance's part in its Auto Scaling group: in service once the model is warm, drained
before it goes.

On EC2 the group announces a scale-in through the instance's target lifecycle state, and a Spot
interruption through the `spot/instance-action` notice, both in the instance metadata (IMDSv2).
A watcher thread polls them and stops the worker (as a first SIGTERM does: the batch in hand is
finished, the batches received ahead are released with visibility 0); once the worker has
returned, the terminating lifecycle hook is completed so the group terminates the instance
without waiting out the hook's timeout. At start, the launching hook is completed only after the
model is loaded and warmed, and a readiness marker file is created for the bootstrap to wait on.

Everything here is off unless a group is configured (IMAGEPIPE_LIFECYCLE_GROUP), so the local
stack never looks for instance metadata.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image

from imagepipe.core.aws import client_config
from imagepipe.core.settings import Settings

logger = logging.getLogger(__name__)

IMDS_URL = "http://169.254.169.254"
SESSION_PATH = "/latest/api/token"
LIFECYCLE_STATE_PATH = "/latest/meta-data/autoscaling/target-lifecycle-state"
SPOT_ACTION_PATH = "/latest/meta-data/spot/instance-action"
INSTANCE_ID_PATH = "/latest/meta-data/instance-id"
SESSION_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
SESSION_HEADER = "X-aws-ec2-metadata-token"
SESSION_TTL_SECONDS = 21600

DEFAULT_READY_FILE = Path("/run/imagepipe/ready")
# AWS asks Spot users to poll the notice every 5 s: it comes two minutes before the interruption.
POLL_SECONDS = 5.0
# Well inside the terminating hook's heartbeat timeout (the stack sets 300 s).
HOOK_HEARTBEAT_SECONDS = 60.0
# The target lifecycle states in which this instance is leaving the group for good.
LEAVING_STATES = frozenset({"Terminated", "Warmed:Terminated"})


class ImdsError(Exception):
    """The instance metadata service did not answer, or answered something unexpected."""


class Imds:
    """A small IMDSv2 client: a session token first (PUT), then GETs that carry it."""

    def __init__(
        self,
        base_url: str = IMDS_URL,
        session: requests.Session | None = None,
        timeout: float = 1.0,
        token_ttl: int = SESSION_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._session = session or requests.Session()
        self._timeout = timeout
        self._token_ttl = token_ttl
        self._clock = clock
        self._token: str | None = None
        self._token_expires = 0.0

    def get(self, path: str) -> str | None:
        """The text at `path`, or None where the service answers 404 (nothing there)."""
        for attempt in range(2):
            # A 401 means the token expired early (the service restarted): fetch one and retry.
            headers = {SESSION_HEADER: self._session_token(renew=attempt > 0)}
            response = self._call("GET", path, headers)
            if response.status_code == 404:
                return None
            if response.status_code == 401 and attempt == 0:
                continue
            if response.status_code != 200:
                raise ImdsError(f"GET {path}: HTTP {response.status_code}")
            return response.text
        raise ImdsError(f"GET {path}: token refused twice")

    def instance_id(self) -> str:
        """This instance's ID."""
        value = self.get(INSTANCE_ID_PATH)
        if not value:
            raise ImdsError("no instance-id in the instance metadata")
        return value.strip()

    def target_lifecycle_state(self) -> str | None:
        """The state the group is moving this instance to (InService, Terminated, ...)."""
        value = self.get(LIFECYCLE_STATE_PATH)
        return value.strip() if value else None

    def spot_action(self) -> dict[str, Any] | None:
        """The Spot interruption notice ({"action": ..., "time": ...}), or None if none."""
        value = self.get(SPOT_ACTION_PATH)
        if not value:
            return None
        try:
            notice = json.loads(value)
        except ValueError:
            # Still a notice: the instance is going whatever the body says.
            return {"action": value.strip()}
        return notice if isinstance(notice, dict) else {"action": str(notice)}

    def _session_token(self, renew: bool) -> str:
        # Renewed a minute before it expires, so a poll never carries a stale one.
        if renew or self._token is None or self._clock() >= self._token_expires - 60:
            response = self._call("PUT", SESSION_PATH, {SESSION_TTL_HEADER: str(self._token_ttl)})
            if response.status_code != 200 or not response.text:
                raise ImdsError(f"PUT {SESSION_PATH}: HTTP {response.status_code}")
            self._token = response.text
            self._token_expires = self._clock() + self._token_ttl
        return self._token

    def _call(self, method: str, path: str, headers: dict[str, str]) -> requests.Response:
        try:
            return self._session.request(method, self._base + path, headers=headers,
                                         timeout=self._timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise ImdsError(f"{method} {path}: {exc}") from exc


@dataclass(frozen=True)
class Hooks:
    """The group this instance belongs to and its lifecycle hooks (None: no such hook)."""

    group: str
    launch: str | None = None
    terminate: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Hooks | None:
        """The configured hooks, or None off EC2 (no group configured)."""
        if not settings.lifecycle_group:
            return None
        return cls(settings.lifecycle_group, settings.launch_hook or None,
                   settings.terminate_hook or None)


def warm_up(classifier: Any) -> None:
    """Run one inference, so the first batch does not pay for graph building and allocation."""
    size = classifier.input_size
    classifier.classify([classifier.preprocess(Image.new("RGB", (size, size)))], top_k=1)


class InstanceProcesses:
    """The processor processes on this instance, one file each next to the readiness marker.

    Several processes share an instance; the last one out removes the marker and completes
    the terminating hook, so the instance is not terminated under a process still draining.
    """

    def __init__(self, directory: Path, pid: int | None = None) -> None:
        self._dir = directory
        self._pid = os.getpid() if pid is None else pid
        self._file = directory / f"processor-{self._pid}"

    def join(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._file.touch()

    def leave(self) -> bool:
        """Remove this process's file; True if no other live process remains."""
        self._file.unlink(missing_ok=True)
        # Removed before looking: two leaving at once both see none and both complete,
        # which is harmless, rather than each seeing the other and neither completing.
        for other in self._dir.glob("processor-*"):
            pid = other.name.removeprefix("processor-")
            if pid.isdigit() and _alive(int(pid)):
                return False
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lifecycle:
    """Completes the launching hook when ready; drains and completes the terminating hook."""

    def __init__(
        self,
        hooks: Hooks,
        autoscaling: Any,
        imds: Imds,
        ready_file: Path | None = None,
        poll_seconds: float = POLL_SECONDS,
        heartbeat_seconds: float = HOOK_HEARTBEAT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        self.hooks = hooks
        self._autoscaling = autoscaling
        self._imds = imds
        self._ready_file = ready_file
        self._processes = InstanceProcesses(ready_file.parent) if ready_file else None
        self._poll_seconds = poll_seconds
        self._heartbeat_seconds = heartbeat_seconds
        self._clock = clock
        self._finished = threading.Event()
        # By default a sleep that close() cuts short.
        self._sleep = sleep or self._finished.wait
        self._instance_id: str | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.leaving: str | None = None  # why the instance is leaving, once seen

    @property
    def instance_id(self) -> str:
        if self._instance_id is None:
            self._instance_id = self._imds.instance_id()
        return self._instance_id

    def ready(self) -> None:
        """The model is loaded and warmed: create the marker, then put the instance in service."""
        if self._processes is not None and self._ready_file is not None:
            self._processes.join()
            self._ready_file.touch()
            logger.info("ready: %s created", self._ready_file)
        if self.hooks.launch:
            self._complete(self.hooks.launch)

    def watch(self, stop: Callable[[], None]) -> None:
        """Call `stop` once the instance is leaving; checked now, then every few seconds."""
        if self._check():
            stop()
            return
        self._thread = threading.Thread(target=self._loop, args=(stop,), name="lifecycle",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """After the worker returned: complete the terminating hook if leaving; drop the marker."""
        self._finished.set()
        if self._thread is not None:
            self._thread.join()
        if self.leaving is None:
            # A SIGTERM may have come first; the state says whether the group is behind it.
            self._check()
        last = self._processes.leave() if self._processes is not None else True
        if not last:
            logger.info("other processors on this instance are still draining")
            return
        if self._ready_file is not None:
            self._ready_file.unlink(missing_ok=True)
        if self.leaving is not None and self.hooks.terminate:
            self._complete(self.hooks.terminate)

    def _loop(self, stop: Callable[[], None]) -> None:
        while True:
            self._sleep(self._poll_seconds)
            if self._finished.is_set():
                return
            if self._check():
                break
        logger.info("leaving (%s): finishing the batch in hand, releasing the rest", self.leaving)
        stop()
        last_beat = self._clock()
        # Keeps the terminating hook open while the batch in hand is finished and written.
        while not self._finished.is_set():
            self._sleep(self._poll_seconds)
            if self.hooks.terminate and self._clock() - last_beat >= self._heartbeat_seconds:
                last_beat = self._clock()
                self._heartbeat(self.hooks.terminate)

    def _check(self) -> bool:
        """Look at the metadata once; True (and `leaving` set) if the instance is going."""
        try:
            state = self._imds.target_lifecycle_state()
            notice = None if state in LEAVING_STATES else self._imds.spot_action()
        except ImdsError as exc:
            # The metadata service is local and rarely down; keep working and look again.
            logger.warning("instance metadata unavailable: %s", exc)
            return False
        with self._lock:
            if state in LEAVING_STATES:
                self.leaving = f"target lifecycle state {state}"
            elif notice is not None:
                self.leaving = f"Spot interruption notice {json.dumps(notice, sort_keys=True)}"
            return self.leaving is not None

    def _complete(self, hook: str) -> None:
        try:
            self._autoscaling.complete_lifecycle_action(
                LifecycleHookName=hook, AutoScalingGroupName=self.hooks.group,
                InstanceId=self.instance_id, LifecycleActionResult="CONTINUE",
            )
        except (ClientError, BotoCoreError, ImdsError) as exc:
            # No action pending (a Spot interruption without a hook, a restart after the
            # launch): the hook's timeout and default result decide, as without this call.
            logger.warning("lifecycle hook %s not completed: %s", hook, exc)
            return
        logger.info("lifecycle hook %s completed (CONTINUE) for %s", hook, self.instance_id)

    def _heartbeat(self, hook: str) -> None:
        try:
            self._autoscaling.record_lifecycle_action_heartbeat(
                LifecycleHookName=hook, AutoScalingGroupName=self.hooks.group,
                InstanceId=self.instance_id,
            )
        except (ClientError, BotoCoreError, ImdsError) as exc:
            logger.warning("lifecycle hook %s heartbeat not recorded: %s", hook, exc)


def make_lifecycle(settings: Settings, session: Any = None) -> Lifecycle | None:
    """The lifecycle of this instance in its group, or None off EC2 (no group configured)."""
    hooks = Hooks.from_settings(settings)
    if hooks is None:
        return None
    session = session or boto3.session.Session()
    autoscaling = session.client("autoscaling", endpoint_url=settings.endpoint_url,
                                 config=client_config(settings))
    return Lifecycle(hooks, autoscaling, Imds(),
                     ready_file=settings.ready_file or DEFAULT_READY_FILE)
