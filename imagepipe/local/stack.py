"""`make run`: the whole pipeline on this machine, with moto's server as the AWS endpoint.

Every piece is a real process: moto's server, the processor daemon, the events server
(GET /api/events) and the web front under gunicorn. The tests start the same processes
through these functions.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from imagepipe.app import gunicorn_command
from imagepipe.core.aws import make_clients
from imagepipe.core.provision import provision
from imagepipe.core.settings import Settings
from imagepipe.core.users import add_user
from imagepipe.local.snapshot import wipe
from imagepipe.local.state import (
    LOCAL_CREDENTIALS,
    LOCAL_REGION,
    forget_stack,
    local_session,
    record_stack,
)

logger = logging.getLogger(__name__)

LOCAL_ENDPOINT_PORT = 4566
# How long the endpoint may take to save its data when stopped, before it is killed.
SAVE_SECONDS = 120
# The person `make run` signs you in as; `imagepipe users add` makes more.
LOCAL_USER = "demo"
# Where `make run` serves the front's and the processor's metrics, unless set otherwise.
LOCAL_METRICS_PORTS = (9100, 9101)


class StackError(RuntimeError):
    """A process of the stack did not start."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_for_port(process: subprocess.Popen, host: str, port: int, timeout: float,
                  name: str) -> None:
    """Wait until `process` listens on the port; fail early if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"{name} exited with {process.returncode} before listening")
        if port_open(host, port):
            return
        time.sleep(0.1)
    raise StackError(f"{name} did not listen on {host}:{port} within {timeout:.0f} s")


def local_environ(endpoint_url: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a process that talks to the local endpoint."""
    env = dict(os.environ if base is None else base)
    env.update(LOCAL_CREDENTIALS)
    env["AWS_ENDPOINT_URL"] = endpoint_url
    env.setdefault("AWS_DEFAULT_REGION", LOCAL_REGION)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _spawn(argv: list[str], env: Mapping[str, str], quiet: bool = False,
           log: IO[bytes] | None = None) -> subprocess.Popen:
    """Start a child in its own session.

    A terminal's Ctrl-C then reaches only `make run`, which stops each child once and in
    order, instead of every process getting the signal at the same moment.
    """
    output: int | IO[bytes] | None = subprocess.DEVNULL if quiet else log
    return subprocess.Popen(argv, env=dict(env), stdout=output, stderr=output,
                            start_new_session=True)


def start_moto(host: str, port: int, env: Mapping[str, str], data: Path | None = None,
               log: IO[bytes] | None = None) -> subprocess.Popen:
    """moto's server on host:port (CORS from the bucket's rules, as S3), waited for.

    With `data`, it restores what that folder holds and saves its data there when stopped.
    Without `log` its output is thrown away, so it writes no log line per request.
    """
    argv = [sys.executable, "-m", "imagepipe.local.endpoint", "-H", host, "-p", str(port)]
    if data is not None:
        argv += ["--data", str(data)]
    if log is None:
        argv.append("--quiet")
    process = _spawn(argv, env, quiet=log is None, log=log)
    # Restoring a large snapshot takes a moment before the server listens.
    wait_for_port(process, host, port, 120 if data is not None else 30, "moto server")
    return process


def start_processor(env: Mapping[str, str], log: IO[bytes] | None = None) -> subprocess.Popen:
    """The processor daemon; it logs to `log`, or to our stderr."""
    return _spawn([sys.executable, "-m", "processor"], env, log=log)


def start_front(env: Mapping[str, str], host: str, port: int, workers: int = 1
                ) -> subprocess.Popen:
    """The web front under gunicorn, waited for."""
    process = _spawn(gunicorn_command(f"{host}:{port}", workers), env)
    wait_for_port(process, host, port, 60, "web front")
    return process


def start_events(env: Mapping[str, str], host: str, port: int) -> subprocess.Popen:
    """The events server (GET /api/events) beside the front, waited for."""
    process = _spawn([sys.executable, "-m", "imagepipe", "events"], env)
    wait_for_port(process, host, port, 60, "events server")
    return process


def stop_processes(*processes: subprocess.Popen | None, timeout: float = 25) -> None:
    """SIGTERM to each at once, then SIGKILL to any still running after `timeout`."""
    running = [p for p in processes if p is not None and p.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class LocalStack:
    """The processes `make run` started, to watch and to stop."""

    settings: Settings
    endpoint_url: str
    env: dict[str, str]
    moto: subprocess.Popen | None = None
    processor: subprocess.Popen | None = None
    front: subprocess.Popen | None = None
    events: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)
    # The local user `make run` creates, and the password it printed.
    user: str = LOCAL_USER
    password: str | None = None
    # Where the endpoint keeps its data across runs; None: in memory only.
    data: Path | None = None

    def stop(self) -> None:
        # The endpoint goes last: the processor finishes its batch against it, and then the
        # endpoint saves what it holds (a large snapshot takes a while).
        stop_processes(self.front, self.events, self.processor)
        stop_processes(self.moto, timeout=SAVE_SECONDS if self.data is not None else 25)


def start_local_stack(settings: Settings, endpoint_port: int = LOCAL_ENDPOINT_PORT,
                      data: Path | None = None) -> LocalStack:
    """Start moto's server, create the resources, start the processor and the front.

    With `data`, the endpoint keeps its data in that folder across runs; provisioning then
    finds the bucket, queues, table and user pool there and keeps them.
    """
    host = "127.0.0.1"
    endpoint_url = settings.endpoint_url or f"http://{host}:{endpoint_port}"
    env = local_environ(endpoint_url)
    env.update(settings.environ())
    env["AWS_ENDPOINT_URL"] = endpoint_url
    stack = LocalStack(settings=settings, endpoint_url=endpoint_url, env=env,
                       data=None if settings.endpoint_url else data)
    try:
        if settings.endpoint_url:
            logger.info("using the AWS endpoint at %s", endpoint_url)
        else:
            if port_open(host, endpoint_port):
                raise StackError(f"port {endpoint_port} is taken: stop what listens there, "
                                 "or set AWS_ENDPOINT_URL to use it as the endpoint")
            stack.moto = start_moto(host, endpoint_port, env, stack.data)
            logger.info("moto server listening on %s", endpoint_url)
        local = Settings.from_env(env)
        clients = make_clients(local, local_session())
        resources = provision(local, clients)
        # The front checks tokens of this pool; the CLI learns it from GET /api/config.
        env["IMAGEPIPE_USER_POOL_ID"] = resources.user_pool_id
        env["IMAGEPIPE_USER_POOL_CLIENT_ID"] = resources.user_pool_client_id
        if local.auth:
            # A new password at every start: it is printed once and kept nowhere.
            _, stack.password = add_user(clients.cognito, resources.user_pool_id, LOCAL_USER)
        if port_open(settings.host, settings.events_port):
            # Another stack (a test's) has the default: the page learns whichever it gets.
            env["IMAGEPIPE_EVENTS_PORT"] = str(free_port(settings.host))
        events_port = int(env["IMAGEPIPE_EVENTS_PORT"])
        # The page reaches the events server at its own port; on AWS the ALB routes the path.
        env["IMAGEPIPE_EVENTS_URL"] = (f"http://{_browser_host(settings.host)}:"
                                       f"{events_port}/api/events")
        stack.processor = start_processor(env)
        stack.events = start_events(env, settings.host, events_port)
        stack.front = start_front(env, settings.host, settings.port)
    except BaseException:
        stack.stop()
        raise
    return stack


def supervise(stack: LocalStack) -> int:
    """Wait until Ctrl-C or a dead front; restart the processor when it dies, as systemd would."""
    while True:
        time.sleep(0.5)
        if stack.moto is not None and stack.moto.poll() is not None:
            logger.error("the moto server exited with %s; stopping", stack.moto.returncode)
            return 1
        if stack.events is not None and stack.events.poll() is not None:
            logger.error("the events server exited with %s; stopping", stack.events.returncode)
            return 1
        if stack.front is not None and stack.front.poll() is not None:
            logger.error("the web front exited with %s; stopping", stack.front.returncode)
            return 1
        if stack.processor is not None and stack.processor.poll() is not None:
            now = time.monotonic()
            stack.restarts = [t for t in stack.restarts if now - t < 60] + [now]
            # Back off when it keeps dying, so a broken setting does not spin.
            delay = 1.0 if len(stack.restarts) < 5 else 10.0
            logger.warning("the processor exited with %s; restarting in %.0f s",
                           stack.processor.returncode, delay)
            time.sleep(delay)
            stack.processor = start_processor(stack.env)
            logger.info("processor restarted, pid %d", stack.processor.pid)


def _browser_host(host: str) -> str:
    """The host a browser on this machine reaches a server listening on `host` at."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _sign_in_lines(stack: LocalStack) -> str:
    if stack.password is None:
        return ("  sign-in       OFF (IMAGEPIPE_AUTH=off): anyone who reaches the front may "
                "do anything\n"
                "  try it        .venv/bin/imagepipe classify photo.jpg\n")
    return (f"  sign in as    {stack.user}  password {stack.password}  (new at every start)\n"
            f"  try it        .venv/bin/imagepipe login {stack.user}, then "
            f".venv/bin/imagepipe classify photo.jpg\n")


def _data_line(stack: LocalStack) -> str:
    if stack.data is None:
        return "  local data    in memory only: gone when this stops\n"
    return (f"  local data    {stack.data}  (kept across runs; make run-fresh starts empty)\n")


def run_local(settings: Settings, endpoint_port: int = LOCAL_ENDPOINT_PORT,
              fresh: bool = False) -> int:
    """`make run`: start everything, print where to go, stop everything on Ctrl-C.

    The data stays across runs in the settings' local data folder; `fresh` wipes it first.
    """
    settings = replace(
        settings, metrics_front_port=settings.metrics_front_port or LOCAL_METRICS_PORTS[0],
        metrics_processor_port=settings.metrics_processor_port or LOCAL_METRICS_PORTS[1])
    data = settings.local_data_dir
    if fresh and data is not None:
        wipe(data)
        print(f"wiped the local data in {data}", flush=True)
    stack = start_local_stack(settings, endpoint_port, data)
    url = f"http://{settings.host}:{settings.port}"
    metrics = f"http://{settings.metrics_host}"
    print(
        f"\nimagepipe is running\n"
        f"  web page      {url}/\n"
        f"  upload API    POST {url}/api/uploads\n"
        f"  results API   GET  {url}/api/results/<image_id>  (contract: {url}/api/openapi.json)\n"
        f"  live events   GET  {stack.env['IMAGEPIPE_EVENTS_URL']}\n"
        f"  metrics       {metrics}:{settings.metrics_front_port}/metrics (front), "
        f"{metrics}:{settings.metrics_processor_port}/metrics and /readyz (processor)\n"
        f"  AWS endpoint  {stack.endpoint_url}  (bucket {settings.bucket}, "
        f"queues {' and '.join(q for q, _ in settings.lanes.values())}, "
        f"table {settings.table})\n"
        f"{_data_line(stack)}"
        f"{_sign_in_lines(stack)}"
        f"Ctrl-C stops everything.\n",
        flush=True,
    )
    # The CLI in another terminal finds the stack through this file.
    record_stack(stack.endpoint_url, stack.env)
    # SIGTERM (from a supervisor or `kill`) stops the stack as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    # A shell starts background jobs with SIGINT ignored; Ctrl-C must still stop the stack.
    signal.signal(signal.SIGINT, _interrupt)
    try:
        return supervise(stack)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    finally:
        forget_stack()
        stack.stop()
