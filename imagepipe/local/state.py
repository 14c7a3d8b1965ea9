"""The file `make run` leaves while its stack runs, so that the CLI in another terminal finds it.

It lives in the user's state folder (`$XDG_STATE_HOME/imagepipe`, by default
`~/.local/state/imagepipe`), not in the project, so that the CLI finds the stack from any
folder. It holds the endpoint and the settings the stack runs with (bucket, queue, table).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import boto3

# moto accepts any credentials; these keep boto3 from looking for real ones.
LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}
LOCAL_REGION = "us-east-1"


def local_session() -> boto3.session.Session:
    """A boto3 session for the local endpoint, which takes any credentials."""
    return boto3.session.Session(
        aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=LOCAL_CREDENTIALS["AWS_SESSION_TOKEN"],
        region_name=LOCAL_REGION,
    )


@dataclass(frozen=True)
class RunningStack:
    """What the CLI needs of a running local stack."""

    endpoint_url: str
    environ: dict[str, str]
    pid: int


def state_file(environ: Mapping[str, str] | None = None) -> Path:
    """Where `make run` records its stack."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_STATE_HOME") or ""
    root = Path(base) if base else _home(environ) / ".local" / "state"
    return root / "imagepipe" / "local-stack.json"


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME")
    return Path(home) if home else Path.home()


def record_stack(endpoint_url: str, settings_environ: Mapping[str, str],
                 environ: Mapping[str, str] | None = None) -> Path:
    """Write the state file for this process's stack (mode 0600: it names local resources)."""
    path = state_file(environ)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"endpoint_url": endpoint_url, "pid": os.getpid(),
            "environ": {k: v for k, v in settings_environ.items()
                        if k.startswith("IMAGEPIPE_") or k == "AWS_DEFAULT_REGION"}}
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(body, out)
    temporary.replace(path)
    return path


def forget_stack(environ: Mapping[str, str] | None = None) -> None:
    """Remove the state file if this process wrote it (a newer stack may have replaced it)."""
    path = state_file(environ)
    found = _read(path)
    if found is not None and found.pid == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def running_stack(environ: Mapping[str, str] | None = None) -> RunningStack | None:
    """The stack `make run` recorded, if its endpoint still answers."""
    found = _read(state_file(environ))
    if found is None or not _answers(found.endpoint_url):
        return None
    return found


def _read(path: Path) -> RunningStack | None:
    try:
        body = json.loads(path.read_text())
        return RunningStack(str(body["endpoint_url"]), dict(body.get("environ") or {}),
                            int(body["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _answers(endpoint_url: str) -> bool:
    parts = urlsplit(endpoint_url)
    if not parts.hostname:
        return False
    try:
        with socket.create_connection((parts.hostname, parts.port or 80), timeout=0.5):
            return True
    except OSError:
        return False
