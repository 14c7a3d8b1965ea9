"""Settings from the environment."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from imagepipe.core.settings import Settings, SettingsError


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
        "IMAGEPIPE_REUSE_RESULTS": "False",
    })
    assert settings.endpoint_url == "http://127.0.0.1:4566"
    assert settings.region == "eu-west-1"
    assert settings.bucket == "b"
    assert settings.port == 9001
    assert settings.max_upload_bytes == 1_000_000
    assert settings.sync_wait_seconds == 2.5
    assert settings.cache_dir == Path("/tmp/x")
    assert settings.reuse_results is False


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
    ("IMAGEPIPE_REUSE_RESULTS", "maybe"),
])
def test_bad_values_are_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().bucket = "x"  # type: ignore[misc]


def test_environ_round_trips() -> None:
    settings = Settings.from_env({"IMAGEPIPE_TABLE": "t", "IMAGEPIPE_TOP_K": "3",
                                  "IMAGEPIPE_REUSE_RESULTS": "no"})
    assert Settings.from_env(settings.environ()) == settings


def test_web_origins_default_to_the_front_address() -> None:
    assert Settings.from_env({"IMAGEPIPE_PORT": "9000"}).web_origin_list() == (
        "http://127.0.0.1:9000", "http://localhost:9000")
    assert Settings.from_env({"IMAGEPIPE_HOST": "0.0.0.0"}).web_origin_list() == (
        "http://127.0.0.1:8000", "http://localhost:8000")
    assert Settings.from_env({"IMAGEPIPE_HOST": "photos.lan"}).web_origin_list() == (
        "http://photos.lan:8000", "http://localhost:8000")


def test_web_origins_are_read_as_origins() -> None:
    settings = Settings.from_env(
        {"IMAGEPIPE_WEB_ORIGINS": "https://Photos.Example.com, http://localhost:3000/"})
    assert settings.web_origin_list() == ("https://photos.example.com", "http://localhost:3000")


def test_import_allow_list_entries() -> None:
    allowed = Settings.from_env(
        {"IMAGEPIPE_IMPORT_ALLOW_HOSTS": "127.0.0.1:8080, 10.0.0.0/8, [::1]:9000, fd00::1"}
    ).import_allow_list()
    ip = ipaddress.ip_address
    assert [entry.port for entry in allowed] == [8080, None, 9000, None]
    assert allowed[0].admits(ip("127.0.0.1"), 8080)
    assert not allowed[0].admits(ip("127.0.0.1"), 8081)
    assert allowed[1].admits(ip("10.9.8.7"), 1)
    assert allowed[2].admits(ip("::1"), 9000)
    assert not allowed[3].admits(ip("127.0.0.1"), 80)


@pytest.mark.parametrize("name,value", [
    ("IMAGEPIPE_WEB_ORIGINS", "ftp://x"),
    ("IMAGEPIPE_WEB_ORIGINS", "https://a.example/path"),
    ("IMAGEPIPE_WEB_ORIGINS", "localhost:8000"),
    ("IMAGEPIPE_IMPORT_ALLOW_HOSTS", "example.com"),
    ("IMAGEPIPE_IMPORT_ALLOW_HOSTS", "127.0.0.1:http"),
    ("IMAGEPIPE_IMPORT_ALLOW_HOSTS", "10.0.0.0/33"),
    ("IMAGEPIPE_IMPORT_TIMEOUT", "0"),
])
def test_bad_web_and_import_values_are_refused(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_the_lanes_interactive_first_or_one_when_off() -> None:
    assert list(Settings().lanes) == ["interactive", "bulk"]
    one = Settings.from_env({"IMAGEPIPE_INTERACTIVE_QUEUE": "off"})
    assert one.lanes == {"bulk": ("imagepipe-events", "imagepipe-events-dlq")}
    with pytest.raises(SettingsError, match="IMAGEPIPE_INTERACTIVE_QUEUE"):
        Settings.from_env({"IMAGEPIPE_INTERACTIVE_QUEUE": "imagepipe-events"})
