"""Settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagepipe.core.settings import Settings, SettingsError, documented_variables


def test_defaults_without_environment() -> None:
    settings = Settings.from_env({})
    assert settings.endpoint_url is None
    assert settings.bucket == "imagepipe-images"
    assert settings.max_upload_bytes == 20 * 1024 * 1024
    assert settings.port == 8000
    assert settings.model == "efficientnet_lite0"


def test_reads_and_converts_environment() -> None:
    settings = Settings.from_env({
        "AWS_ENDPOINT_URL": "http://127.0.0.1:4566",
        "AWS_REGION": "eu-west-1",
        "IMAGEPIPE_BUCKET": "b",
        "IMAGEPIPE_PORT": "9001",
        "IMAGEPIPE_MAX_UPLOAD_BYTES": "1_000_000",
        "IMAGEPIPE_SYNC_WAIT_SECONDS": "2.5",
        "IMAGEPIPE_CACHE_DIR": "/tmp/x",
    })
    assert settings.endpoint_url == "http://127.0.0.1:4566"
    assert settings.region == "eu-west-1"
    assert settings.bucket == "b"
    assert settings.port == 9001
    assert settings.max_upload_bytes == 1_000_000
    assert settings.sync_wait_seconds == 2.5
    assert settings.cache_dir == Path("/tmp/x")


def test_explicit_arguments_beat_the_environment() -> None:
    settings = Settings.from_env({"IMAGEPIPE_BUCKET": "from-env"}, bucket="explicit")
    assert settings.bucket == "explicit"


def test_empty_values_mean_default() -> None:
    assert Settings.from_env({"AWS_ENDPOINT_URL": ""}).endpoint_url is None


@pytest.mark.parametrize("name,value", [
    ("IMAGEPIPE_PORT", "eighty"),
    ("IMAGEPIPE_PORT", "70000"),
    ("IMAGEPIPE_RECEIVE_BATCH", "11"),
    ("IMAGEPIPE_POLL_SECONDS", "21"),
    ("IMAGEPIPE_MAX_UPLOAD_BYTES", "0"),
    ("IMAGEPIPE_PRESIGN_EXPIRES", "86400"),
])
def test_bad_values_are_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().bucket = "x"  # type: ignore[misc]


def test_environ_round_trips() -> None:
    settings = Settings.from_env({"IMAGEPIPE_TABLE": "t", "IMAGEPIPE_TOP_K": "3"})
    assert Settings.from_env(settings.environ()) == settings


def test_every_variable_is_in_the_readme() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for var in documented_variables():
        assert f"`{var.name}`" in readme, var.name
