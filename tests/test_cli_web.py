"""`imagepipe web` serves the front exactly as `make run` does."""

from __future__ import annotations

import pytest

from imagepipe.app import gunicorn_command
from imagepipe.cli import main as cli
from imagepipe.local import stack


def test_imagepipe_web_execs_the_one_gunicorn_command(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(cli.os, "execv", lambda path, argv: seen.append(argv))
    monkeypatch.setenv("IMAGEPIPE_PORT", "8123")
    cli.main(["web", "--workers", "3"])
    assert seen == [gunicorn_command("127.0.0.1:8123", 3)]
    # In production the front must let requests in flight finish on SIGTERM, too.
    argv = seen[0]
    assert argv[argv.index("--graceful-timeout") + 1] == "10"
    # Kept-alive connections outlive the ALB's 60 s idle timeout, so none is closed under it.
    assert int(argv[argv.index("--keep-alive") + 1]) > 60


def test_the_local_front_uses_the_same_command(monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[list[str]] = []
    monkeypatch.setattr(stack, "_spawn", lambda argv, env, **kw: spawned.append(argv))
    monkeypatch.setattr(stack, "wait_for_port", lambda *args: None)
    stack.start_front({}, "127.0.0.1", 8124, workers=2)
    assert spawned == [gunicorn_command("127.0.0.1:8124", 2)]
