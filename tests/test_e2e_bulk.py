"""Bulk end to end: 500+ varied images through `imagepipe upload --wait` on the local stack.

moto's server, the processor (real model) and the front run as processes, as `make run`
starts them; the CLI runs as its own process, as a person would run it.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from PIL import Image

from imagepipe.core.aws import make_clients
from imagepipe.core.ids import image_id_for_object
from imagepipe.core.records import STATUSES, ResultRecord, ResultStore, label_key
from imagepipe.core.settings import Settings
from imagepipe.core.users import get_user
from imagepipe.local.stack import LocalStack, free_port
from tests.conftest import running_stack

# 500 images take a few minutes on two cores shared with other work; moto is most of it.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
UNIQUE = 490
COPIES = 24
BROKEN = 14
FAILURE_CODES = {"corrupt_image", "not_an_image", "decode_error", "unsupported_format",
                 "too_many_pixels"}


@dataclass(frozen=True)
class Made:
    """The test images on disk and what each should come to."""

    root: Path
    good: dict[str, bytes]  # relative path -> bytes
    broken: set[str]
    not_images: set[str]


def _sources() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(),
            data.hubble_deep_field(), data.immunohistochemistry(), data.colorwheel(),
            data.logo(), data.stereo_motorcycle()[0], data.camera(), data.moon(), data.coins(),
            data.clock(), data.retina(), data.brick(), data.text()]


def _variant(rng: random.Random, source: np.ndarray) -> tuple[bytes, str]:
    """A crop of a sample photo, resized, maybe rotated, in one of five formats."""
    image = Image.fromarray(source)
    width, height = image.size
    crop_w = rng.randint(max(64, width // 4), width)
    crop_h = rng.randint(max(64, height // 4), height)
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    image = image.crop((left, top, left + crop_w, top + crop_h))
    longest = rng.randint(64, 320)
    scale = longest / max(image.size)
    size = (max(16, round(image.width * scale)), max(16, round(image.height * scale)))
    image = image.resize(size)
    turn = rng.choice([0, 0, 90, 180, 270, rng.uniform(-30, 30)])
    if turn:
        image = image.rotate(turn, expand=True)
    fmt = rng.choice(FORMATS)
    if fmt in ("JPEG", "BMP") and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    options: dict[str, Any] = {"quality": rng.randint(60, 95)} if fmt in ("JPEG", "WEBP") else {}
    image.save(buffer, fmt, **options)
    return buffer.getvalue(), EXTENSIONS[fmt]


def _broken(rng: random.Random, good: bytes, i: int) -> tuple[bytes, str]:
    kind = i % 4
    if kind == 0:
        return good[: len(good) // 3], "jpg"  # cut off mid-upload
    if kind == 1:
        return b"\x89PNG\r\n\x1a\n" + rng.randbytes(400), "png"
    if kind == 2:
        return b"GIF89a" + rng.randbytes(200), "gif"
    return b"\xff\xd8\xff\xe0" + b"this is a text file pretending to be a JPEG" * 5, "jpg"


def make_images(root: Path, seed: int = 20261125) -> Made:
    """Unique variants, exact copies of some of them under other names, and broken files."""
    rng = random.Random(seed)
    sources = _sources()
    good: dict[str, bytes] = {}
    hashes: set[str] = set()
    while len(good) < UNIQUE:
        data, ext = _variant(rng, rng.choice(sources))
        digest = hashlib.sha256(data).hexdigest()
        if digest in hashes:
            continue
        hashes.add(digest)
        good[f"set{len(good) % 7}/img{len(good):04d}.{ext}"] = data
    originals = list(good.items())
    for i in range(COPIES):
        path, data = rng.choice(originals)
        good[f"copies/copy{i:02d}.{path.rsplit('.', 1)[1]}"] = data
    broken: set[str] = set()
    jpeg = next(d for p, d in originals if p.endswith(".jpg"))
    for i in range(BROKEN):
        data, ext = _broken(rng, jpeg, i)
        path = f"broken/bad{i:02d}.{ext}"
        broken.add(path)
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    not_images = {"notes.txt", "set1/.DS_Store"}
    for path, data in good.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    for path in not_images:
        (root / path).write_bytes(b"not an image\n")
    return Made(root, good, broken, not_images)


@pytest.fixture(scope="module")
def stack(model_cache: Path) -> Iterator[LocalStack]:
    settings = Settings(
        bucket="bulk-images",
        queue="bulk-events",
        dead_letter_queue="bulk-events-dlq",
        table="bulk-results",
        port=free_port(),
        poll_seconds=1,
        cache_dir=model_cache,
        log_level="WARNING",
    )
    with running_stack(settings) as stack:
        yield stack


@pytest.fixture(scope="module")
def store(stack: LocalStack) -> ResultStore:
    local = Settings.from_env(stack.env)
    session = boto3.session.Session(aws_access_key_id="testing",
                                    aws_secret_access_key="testing")
    return ResultStore(make_clients(local, session).dynamodb, local.table)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    return make_images(tmp_path_factory.mktemp("bulk") / "photos")


def cli(stack: LocalStack, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagepipe", *args], env=stack.env,
                          capture_output=True, text=True, timeout=timeout)


def _printed_ids(stdout: str) -> dict[str, tuple[str, str]]:
    """key -> (image ID, action) from the lines `upload` prints per file."""
    found = {}
    for line in stdout.splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_-]{22})  (uploaded|unchanged)\s+(.+)", line)
        if match:
            found[match.group(3)] = (match.group(1), match.group(2))
    return found


def _table(stdout: str) -> dict[str, int]:
    rows = {}
    for line in stdout.splitlines():
        match = re.match(r"(\w[\w ]*?)\s{2,}(\d+)\b", line)
        if match:
            rows[match.group(1).strip()] = int(match.group(2))
    return rows


def _all_records(store: ResultStore) -> list[ResultRecord]:
    records: list[ResultRecord] = []
    cursor = None
    while True:
        page = store.list_results(limit=100, cursor=cursor)
        records.extend(page.records)
        cursor = page.next_cursor
        if cursor is None:
            return records


def test_bulk_upload_and_wait(stack: LocalStack, store: ResultStore, made: Made) -> None:
    bucket = stack.settings.bucket
    images = len(made.good) + len(made.broken)
    assert images >= 500

    # When the whole folder is uploaded and waited for
    started = time.monotonic()
    run = cli(stack, "upload", str(made.root), "--prefix", "bulk", "--wait",
              "--concurrency", "8", "--timeout", "240")
    elapsed = time.monotonic() - started
    print(f"\n{images} images: upload --wait took {elapsed:.1f} s, "
          f"{images / elapsed:.1f} images/s")

    # Then it fails (broken files are among them) and says why
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    table = _table(run.stdout)
    assert table["uploaded"] == images
    assert table["not images"] == len(made.not_images)
    assert (table["done"], table["failed"], table["pending"]) == (len(made.good),
                                                                  len(made.broken), 0)
    for path in made.not_images:
        assert f"not an image: {made.root / path}" in run.stderr

    # Each file's image ID was printed, and is the one derived from bucket and key
    printed = _printed_ids(run.stdout)
    keys = {f"bulk/{p}" for p in [*made.good, *made.broken]}
    assert set(printed) == keys
    assert all(image_id == image_id_for_object(bucket, key)
               for key, (image_id, _) in printed.items())

    # Every image has exactly one record, done or failed as it should be
    records = _all_records(store)
    assert len(records) == images
    assert len({r.image_id for r in records}) == images
    by_key = {r.key: r for r in records}
    assert set(by_key) == keys
    for path, data in made.good.items():
        record = by_key[f"bulk/{path}"]
        assert record.status == "done", (path, record.error_code, record.error_message)
        assert record.sha256 == hashlib.sha256(data).hexdigest()
        assert len(record.labels) == 5
    for path in made.broken:
        record = by_key[f"bulk/{path}"]
        assert record.status == "failed", path
        assert record.error_code in FAILURE_CODES, (path, record.error_code)
    assert {s: store.count(s) for s in STATUSES} == {
        "pending": 0, "done": len(made.good), "failed": len(made.broken)}

    # Same bytes: the model ran once per content, the others say whose result they reuse
    groups: defaultdict[str, list[ResultRecord]] = defaultdict(list)
    for record in records:
        if record.status == "done":
            groups[record.sha256 or ""].append(record)
    assert len(groups) == UNIQUE
    for group in groups.values():
        ran = [r for r in group if not r.reused]
        assert len(ran) == 1, [(r.key, r.reused, r.duplicate_of) for r in group]
        assert all(r.duplicate_of == ran[0].image_id and r.labels == ran[0].labels
                   for r in group if r.reused)
    assert sum(1 for r in records if r.reused) == COPIES


def test_second_upload_skips_unchanged_and_clean_wait_exits_zero(
        stack: LocalStack, store: ResultStore, made: Made) -> None:
    # Given the bulk run above: the same folder again finds every object unchanged
    again = cli(stack, "upload", str(made.root), "--prefix", "bulk")
    assert again.returncode == 0, again.stderr[-2000:]
    assert _table(again.stdout)["unchanged"] == len(made.good) + len(made.broken)
    assert _table(again.stdout)["uploaded"] == 0

    # A clean subset, some of it new, waited for: exit 0
    clean = made.root.parent / "clean"
    clean.mkdir()
    for i, (path, data) in enumerate(list(made.good.items())[:12]):
        (clean / f"old{i}.{path.rsplit('.', 1)[1]}").write_bytes(data)
    rng = random.Random(7)
    from skimage import data as samples

    for i in range(8):
        payload, ext = _variant(rng, samples.chelsea())
        (clean / f"new{i}.{ext}").write_bytes(payload)

    run = cli(stack, "upload", str(clean), "--prefix", "clean", "--wait", "--timeout", "120")

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = _table(run.stdout)
    assert (table["uploaded"], table["done"], table["failed"]) == (20, 20, 0)
    reused = [store.get(image_id_for_object(stack.settings.bucket, f"clean/old{i}."
                                            f"{p.rsplit('.', 1)[1]}"))
              for i, p in enumerate(list(made.good)[:12])]
    assert all(r.reused and r.duplicate_of for r in reused)


def test_objects_synced_by_another_tool_are_waited_for_by_key(
        stack: LocalStack, store: ResultStore, made: Made, tmp_path: Path) -> None:
    # Given objects someone else put (no metadata, as `aws s3 sync` would)
    s3 = boto3.client("s3", endpoint_url=stack.endpoint_url, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    folder = tmp_path / "synced"
    folder.mkdir()
    for path, data in list(made.good.items())[100:106]:
        name = path.replace("/", "-")
        (folder / name).write_bytes(data)
        s3.put_object(Bucket=stack.settings.bucket, Key=f"synced/{name}", Body=data)

    run = cli(stack, "upload", str(folder), "--prefix", "synced", "--wait", "--timeout", "120")

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = _table(run.stdout)
    assert (table["unchanged"], table["uploaded"], table["done"]) == (6, 0, 6)


def test_upload_for_a_user_makes_the_images_theirs(stack: LocalStack, store: ResultStore,
                                                   made: Made, tmp_path: Path) -> None:
    # Given the user the stack made, and some of the photos again
    session = boto3.session.Session(aws_access_key_id="testing",
                                    aws_secret_access_key="testing")
    cognito = make_clients(Settings.from_env(stack.env), session).cognito
    demo = get_user(cognito, stack.env["IMAGEPIPE_USER_POOL_ID"], stack.user)
    folder = tmp_path / "demo's"
    folder.mkdir()
    for path, data in list(made.good.items())[200:204]:
        (folder / path.replace("/", "-")).write_bytes(data)

    # When they are uploaded for demo
    run = cli(stack, "upload", str(folder), "--owner", stack.user, "--prefix", "mine",
              "--wait", "--timeout", "120")

    # Then they go under users/<demo's sub>/ and their results are demo's
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    printed = _printed_ids(run.stdout)
    assert set(printed) == {f"users/{demo.sub}/mine/{p.name}" for p in folder.iterdir()}
    records = store.get_many([image_id for image_id, _ in printed.values()])
    assert len(records) == 4
    assert {r.owner for r in records.values()} == {demo.sub}
    assert all(r.status == "done" for r in records.values())


def test_tools_on_the_processed_bucket(stack: LocalStack, store: ResultStore,
                                       made: Made) -> None:
    # backfill: every object under the prefix has a result already
    run = cli(stack, "backfill", "--prefix", "bulk/", "--dry-run")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout == ""
    assert f"{len(made.good) + len(made.broken)} objects listed, 0 selected" in run.stderr

    # results: the failures exported as JSONL, the rest as CSV
    failed = cli(stack, "results", "--status", "failed", "--format", "jsonl")
    keys = {json.loads(line)["image"]["key"] for line in failed.stdout.splitlines()}
    assert keys == {f"bulk/{p}" for p in made.broken}
    # --label finds every result that answers to the word (a label or category), best first.
    records = {r.image_id: r for r in _all_records(store)}
    label = Counter(r.labels[0].label for r in records.values() if r.labels).most_common(1)
    word = label_key(label[0][0])
    best = cli(stack, "results", "--label", word, "--format", "json")
    found = [r["image_id"] for r in json.loads(best.stdout)]
    assert set(found) == {i for i, r in records.items() if word in r.words}
    assert len(found) >= label[0][1]
    scores = [records[i].words[word] for i in found]
    assert scores == sorted(scores, reverse=True)

    # status: an empty queue, the counts, and the processor's heartbeat
    status = json.loads(cli(stack, "status", "--json").stdout)
    assert all(lane["queue"]["visible"] == 0 for lane in status["lanes"])
    assert status["results"]["pending"] == 0
    assert status["results"]["failed"] == len(made.broken)
    assert len(status["processors"]) == 1
    assert status["processors"][0]["images"] > 0
