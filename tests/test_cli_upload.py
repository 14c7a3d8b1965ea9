"""`imagepipe upload` against moto in-process: what is uploaded, skipped, printed and awaited."""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import pytest

from imagepipe.cli.bulk import (
    NOT_IMAGE,
    UNCHANGED,
    UPLOADED,
    LocalFile,
    UploadOutcome,
    find_files,
    key_prefix,
    listed_etags,
    print_summary,
    run_upload,
    upload_file,
    wait_for_results,
)
from imagepipe.cli.progress import ProgressLine
from imagepipe.core.ids import image_id_for_object
from imagepipe.core.records import Label, ResultRecord, ResultStore


@pytest.fixture
def folder(tmp_path: Path, photos) -> Path:
    root = tmp_path / "holiday"
    (root / "day 1").mkdir(parents=True)
    (root / "day 1" / "cat.jpg").write_bytes(photos.cat_jpeg)
    (root / "day 1" / "cat.png").write_bytes(photos.cat_png)
    (root / "coffee + cake.jpg").write_bytes(photos.coffee_jpeg)
    (root / "notes.txt").write_text("not an image")
    (root / "empty.jpg").write_bytes(b"")
    return root


def _quiet() -> ProgressLine:
    return ProgressLine(io.StringIO())


def test_keys_follow_the_folder_layout(folder: Path, photos, tmp_path: Path) -> None:
    single = tmp_path / "rocket.jpg"
    single.write_bytes(photos.rocket_jpeg)

    files = find_files([folder, single], prefix="/trip/2026")

    assert [f.key for f in files] == [
        "trip/2026/coffee + cake.jpg", "trip/2026/day 1/cat.jpg", "trip/2026/day 1/cat.png",
        "trip/2026/empty.jpg", "trip/2026/notes.txt", "trip/2026/rocket.jpg"]
    assert key_prefix("") == "" and key_prefix("a/") == "a/"
    with pytest.raises(FileNotFoundError):
        find_files([tmp_path / "nowhere"])
    with pytest.raises(ValueError, match="would both be"):
        find_files([single, single])


def test_upload_puts_images_with_their_checksum_and_prints_ids(
        settings, clients, resources, store: ResultStore, folder: Path, photos, capsys) -> None:
    # When a folder is uploaded
    code = run_upload(settings, clients, [folder], "in", concurrency=4, wait=False,
                      idle_timeout=1)

    # Then the images are in the bucket, the rest is skipped, each image ID is printed
    assert code == 0
    out, err = capsys.readouterr()
    keys = sorted(o["Key"] for o in clients.s3.list_objects_v2(
        Bucket=settings.bucket, Prefix="in/")["Contents"])
    assert keys == ["in/coffee + cake.jpg", "in/day 1/cat.jpg", "in/day 1/cat.png"]
    for key in keys:
        image_id = image_id_for_object(settings.bucket, key)
        assert f"{image_id}  uploaded   {key}" in out
    assert "not an image" in err and "notes.txt" in err and "empty.jpg" in err
    head = clients.s3.head_object(Bucket=settings.bucket, Key="in/day 1/cat.jpg",
                                  ChecksumMode="ENABLED")
    digest = hashlib.sha256(photos.cat_jpeg).digest()
    assert head["Metadata"]["sha256"] == digest.hex()
    assert head["ChecksumSHA256"] == base64.b64encode(digest).decode()
    assert head["ContentType"] == "image/jpeg"
    assert "uploaded" in out and "3" in out  # the summary table


def _count_calls(clients, operation: str) -> list[str]:
    calls: list[str] = []
    clients.s3.meta.events.register(f"provide-client-params.s3.{operation}",
                                    lambda params, **kwargs: calls.append(params["Key"]))
    return calls


def test_unchanged_files_are_not_uploaded_again(settings, clients, resources, store,
                                                folder: Path, photos, capsys) -> None:
    run_upload(settings, clients, [folder], "", 2, False, 1, out=io.StringIO())
    (folder / "day 1" / "cat.png").write_bytes(photos.coffee_jpeg)  # changed content
    heads, puts = _count_calls(clients, "HeadObject"), _count_calls(clients, "PutObject")
    capsys.readouterr()

    assert run_upload(settings, clients, [folder], "", 2, False, 1) == 0

    out = capsys.readouterr().out
    assert "unchanged  day 1/cat.jpg" in out and "unchanged  coffee + cake.jpg" in out
    assert "uploaded   day 1/cat.png" in out
    assert puts == ["day 1/cat.png"]
    # The listing's ETags settle the unchanged files; only the changed one is looked at.
    assert heads == ["day 1/cat.png"]
    body = clients.s3.get_object(Bucket=settings.bucket, Key="day 1/cat.png")["Body"].read()
    assert body == photos.coffee_jpeg


def test_without_a_listing_each_object_is_checked_by_head(settings, clients, resources,
                                                         folder: Path) -> None:
    run_upload(settings, clients, [folder], "", 2, False, 1, out=io.StringIO())
    files = find_files([folder])
    # A folder holding far more objects than we upload is not listed to the end.
    assert listed_etags(clients.s3, settings.bucket, [f.key for f in files], budget=2) is None
    heads = _count_calls(clients, "HeadObject")

    outcomes = {o.file.key: o.action for o in [
        upload_file(clients.s3, settings.bucket, f) for f in files]}

    assert outcomes == {"coffee + cake.jpg": UNCHANGED, "day 1/cat.jpg": UNCHANGED,
                        "day 1/cat.png": UNCHANGED, "empty.jpg": NOT_IMAGE,
                        "notes.txt": NOT_IMAGE}
    assert len(heads) == 3


def test_objects_put_by_another_tool_are_recognised(settings, clients, resources, store,
                                                    tmp_path: Path, photos) -> None:
    # Given an object that `aws s3 sync` put: no metadata, an MD5 ETag
    clients.s3.put_object(Bucket=settings.bucket, Key="synced/cat.jpg", Body=photos.cat_jpeg)
    local = tmp_path / "cat.jpg"
    local.write_bytes(photos.cat_jpeg)

    file = LocalFile(local, "synced/cat.jpg", local.stat().st_size)
    etags = listed_etags(clients.s3, settings.bucket, [file.key])
    assert etags is not None and set(etags) == {file.key}

    outcome = upload_file(clients.s3, settings.bucket, file, etags[file.key], listed=True)

    assert outcome.action == UNCHANGED
    assert upload_file(clients.s3, settings.bucket, file).action == UNCHANGED  # by HEAD
    assert outcome.image_id == image_id_for_object(settings.bucket, "synced/cat.jpg")


def _done(key: str, sha256: str | None, status: str = "done") -> ResultRecord:
    base = ResultRecord(image_id=image_id_for_object("test-images", key), bucket="test-images",
                        key=key, sha256=sha256)
    if status == "failed":
        return base.failed("corrupt_image", "half a file")
    return base.done([Label("tabby", 0.5, 281)], "m", "1")


class Ticker:
    """A fake clock that moves on by a second each time the waiter sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1


def test_wait_needs_the_result_of_the_uploaded_bytes(store: ResultStore) -> None:
    # Given a re-uploaded object whose old result is still in the table
    store.save_result(_done("re.jpg", "old"))
    store.save_result(_done("ok.jpg", "new-ok"))
    store.save_result(_done("bad.jpg", "new-bad", "failed"))
    expected = {image_id_for_object("test-images", k): sha for k, sha in
                [("re.jpg", "new-re"), ("ok.jpg", "new-ok"), ("bad.jpg", "new-bad")]}
    ticker = Ticker()

    results = wait_for_results(store, expected, _quiet(), idle_timeout=5,
                               clock=ticker.clock, sleep=ticker.sleep)

    # Then the old result does not count, and the wait ends after 5 s without news
    re_id = image_id_for_object("test-images", "re.jpg")
    assert results[re_id] is None
    assert results[image_id_for_object("test-images", "ok.jpg")].status == "done"
    assert results[image_id_for_object("test-images", "bad.jpg")].status == "failed"
    assert ticker.now >= 5


def test_wait_ends_as_soon_as_everything_is_in(store: ResultStore) -> None:
    store.save_result(_done("a.jpg", "sha-a"))
    ticker = Ticker()

    results = wait_for_results(store, {image_id_for_object("test-images", "a.jpg"): "sha-a"},
                               _quiet(), idle_timeout=100, clock=ticker.clock,
                               sleep=ticker.sleep)

    assert ticker.sleeps == 0
    assert next(iter(results.values())).status == "done"


def _outcome(key: str, action: str = UPLOADED) -> UploadOutcome:
    return UploadOutcome(LocalFile(Path(key), key, 10), action,
                         image_id_for_object("test-images", key), "sha")


def test_summary_exit_codes() -> None:
    ok, bad = _outcome("ok.jpg"), _outcome("bad.jpg")
    done, failed = _done("ok.jpg", "sha"), _done("bad.jpg", "sha", "failed")
    out = io.StringIO()

    assert print_summary([ok], {ok.image_id: done}, 2.0, out) == 0
    assert print_summary([ok, bad], {ok.image_id: done, bad.image_id: failed}, 2.0, out) == 1
    assert print_summary([ok], {ok.image_id: None}, 2.0, out) == 1
    assert print_summary([ok, _outcome("x.txt", NOT_IMAGE)], {ok.image_id: done}, 2.0,
                         out) == 0
    assert print_summary([ok, _outcome("y.jpg", "error")], None, 2.0, out) == 1
    text = out.getvalue()
    assert "corrupt_image" in text and "bad.jpg" in text
    assert "images/s" in text
