"""Which AWS the command line talks to: real AWS, a given endpoint, or `make run`'s stack."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imagepipe.cli.target import NoTarget, aws_target
from imagepipe.core.settings import Settings
from imagepipe.local import stack as local_stack
from imagepipe.local.stack import LocalStack, free_port
from imagepipe.local.state import record_stack, running_stack, state_file

LOCAL_NOTE = "using the local stack at"


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """No AWS variables, an empty HOME, and no instance metadata to ask."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "IMAGEPIPE_")):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    # The last resort asks the instance metadata address; nothing here may leave the machine.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return {"HOME": str(home)}


def test_credentials_in_the_environment_mean_aws(no_credentials: dict[str, str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAREAL")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "real-secret")
    record_stack(f"http://127.0.0.1:{free_port()}", {})  # a stack recorded but not chosen
    err = io.StringIO()
    settings, session = aws_target(Settings(), err=err)
    assert settings.endpoint_url is None
    assert session.get_credentials().access_key == "AKIAREAL"
    assert err.getvalue() == ""


def test_an_endpoint_without_credentials_gets_the_local_ones(
        no_credentials: dict[str, str]) -> None:
    settings, session = aws_target(Settings(endpoint_url="http://127.0.0.1:4566"))
    assert settings.endpoint_url == "http://127.0.0.1:4566"
    assert session.get_credentials().access_key == "testing"


def test_neither_credentials_nor_a_stack_is_one_line_that_says_what_to_do(
        no_credentials: dict[str, str]) -> None:
    with pytest.raises(NoTarget) as caught:
        aws_target(Settings())
    message = str(caught.value)
    assert "\n" not in message
    assert "make run" in message and "AWS credentials" in message


def test_a_stack_that_no_longer_answers_is_not_used(no_credentials: dict[str, str]) -> None:
    record_stack(f"http://127.0.0.1:{free_port()}", {"IMAGEPIPE_BUCKET": "gone"})
    assert running_stack() is None
    with pytest.raises(NoTarget):
        aws_target(Settings())


def test_make_run_records_its_stack_and_forgets_it_on_the_way_out(
        no_credentials: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(bucket="mine", port=free_port())
    fake = LocalStack(settings=settings, endpoint_url="http://127.0.0.1:4999",
                      env=local_stack.local_environ("http://127.0.0.1:4999",
                                                    settings.environ()))
    seen: dict[str, Any] = {}

    def supervise(stack: LocalStack) -> int:
        seen.update(json.loads(state_file().read_text()))
        seen["mode"] = state_file().stat().st_mode & 0o777
        return 0

    monkeypatch.setattr(local_stack, "start_local_stack", lambda s, port, data=None: fake)
    monkeypatch.setattr(local_stack, "supervise", supervise)
    monkeypatch.setattr(local_stack.signal, "signal", lambda *args: None)
    assert local_stack.run_local(settings) == 0
    assert seen["endpoint_url"] == "http://127.0.0.1:4999"
    assert seen["environ"]["IMAGEPIPE_BUCKET"] == "mine"
    assert seen["mode"] == 0o600
    assert not state_file().exists()


# ------------------------------------------------- the real CLI against the real local stack
def _cli(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagepipe", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_every_aws_command_works_against_the_local_stack_from_an_empty_environment(
        stack: LocalStack, tmp_path: Path, photos: Any) -> None:
    # Given: the stack `make run` started has recorded itself, and a shell with nothing set
    home = tmp_path / "home"
    record_stack(stack.endpoint_url, stack.env, environ={"HOME": str(home)})
    empty = {"HOME": str(home)}
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(photos.cat_jpeg)
    (folder / "coffee.jpg").write_bytes(photos.coffee_jpeg)

    # When / Then: each command works, and says once that it uses the local stack
    commands = [
        ("upload", str(folder), "--wait", "--timeout", "240"),
        ("results", "--format", "json"),
        ("status",),
        ("backfill", "--dry-run"),
        ("dlq", "redrive", "--max", "1"),
    ]
    outputs = {}
    for command in commands:
        run = _cli(empty, *command)
        assert run.returncode == 0, (command, run.stderr)
        assert run.stderr.count(LOCAL_NOTE) == 1, (command, run.stderr)
        assert stack.endpoint_url in run.stderr
        outputs[command[0]] = run.stdout
    assert re.search(r"^done\s+2\b", outputs["upload"], re.M), outputs["upload"]
    uploaded = dict(re.findall(r"^([A-Za-z0-9_-]{22})  uploaded\s+(\S+)$", outputs["upload"],
                               re.M))
    labels = {uploaded[r["image_id"]]: r["labels"][0]["label"]
              for r in json.loads(outputs["results"]) if r["image_id"] in uploaded}
    assert labels["cat.jpg"] in {"tiger cat", "tabby", "Egyptian cat"}
    assert labels["coffee.jpg"] == "espresso"
    assert stack.settings.queue in outputs["status"]


@pytest.mark.slow
def test_with_no_stack_and_no_credentials_one_line_says_what_to_do(tmp_path: Path) -> None:
    home = tmp_path / "empty-home"
    home.mkdir()
    # Metadata off: the last resort would ask the instance metadata address otherwise.
    run = _cli({"HOME": str(home), "AWS_EC2_METADATA_DISABLED": "true"}, "status")
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "make run" in lines[0] and "AWS credentials" in lines[0]
