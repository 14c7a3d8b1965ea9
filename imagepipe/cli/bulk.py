"""`imagepipe upload`: put local images straight into the bucket, then wait for their results.

Files go to the bucket with put_object, as `aws s3 sync` would put them, and are processed
through the bucket's events like any object dropped there; their image IDs are derived from
bucket and key, so results are found by key whoever uploaded the object.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from imagepipe.cli.progress import ProgressLine, human_bytes
from imagepipe.core.aws import Clients, error_code
from imagepipe.core.formats import SNIFF_BYTES, sniff_content_type
from imagepipe.core.ids import image_id_for_object
from imagepipe.core.polling import poll
from imagepipe.core.records import ResultRecord, ResultStore, StoreError
from imagepipe.core.settings import Settings

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1

_CHUNK = 1024 * 1024
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
# What the wait reads of each record while polling; the full records are read once at the end.
_POLLED = ("status", "sha256")
# Uploaded, unchanged, not_image or error: what happened to one local file.
UPLOADED, UNCHANGED, NOT_IMAGE, ERROR = "uploaded", "unchanged", "not_image", "error"


@dataclass(frozen=True)
class LocalFile:
    path: Path
    key: str
    size: int


@dataclass(frozen=True)
class UploadOutcome:
    """What became of one local file."""

    file: LocalFile
    action: str
    image_id: str | None = None
    sha256: str | None = None
    detail: str = ""


def key_prefix(prefix: str) -> str:
    """The prefix as keys start with it: no leading slash, one trailing slash unless empty."""
    prefix = prefix.strip().lstrip("/")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def find_files(paths: Iterable[Path], prefix: str = "") -> list[LocalFile]:
    """The files to upload and their keys: a folder's files keyed by their path inside it."""
    prefix = key_prefix(prefix)
    found: list[LocalFile] = []
    for path in paths:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                found.append(LocalFile(file, prefix + file.relative_to(path).as_posix(),
                                       file.stat().st_size))
        elif path.is_file():
            found.append(LocalFile(path, prefix + path.name, path.stat().st_size))
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    seen: dict[str, Path] = {}
    for file in found:
        if file.key in seen:
            raise ValueError(f"{seen[file.key]} and {file.path} would both be {file.key!r}")
        seen[file.key] = file.path
    return found


def file_digests(path: Path) -> tuple[str, str]:
    """Hex SHA-256 and MD5 of a file, in one read (MD5 matches a single-part S3 ETag)."""
    sha256 = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            sha256.update(chunk)
            md5.update(chunk)
    return sha256.hexdigest(), md5.hexdigest()


def same_content(head: dict[str, Any], sha256_hex: str, md5_hex: str) -> bool:
    """Whether an object (its head_object answer) holds these bytes.

    Our uploads carry the SHA-256 as metadata and as S3's own checksum; an object put by
    another tool (`aws s3 sync`) is recognised by its checksum or by a single-part ETag,
    which is the MD5 of the bytes.
    """
    if head.get("Metadata", {}).get("sha256") == sha256_hex:
        return True
    checksum = head.get("ChecksumSHA256")
    # A multipart object's checksum is of its parts' checksums ("...-N"): not comparable.
    if checksum and "-" not in checksum:
        return checksum == base64.b64encode(bytes.fromhex(sha256_hex)).decode()
    etag = str(head.get("ETag", "")).strip('"')
    return "-" not in etag and etag == md5_hex


def listed_etags(s3: Any, bucket: str, keys: list[str], budget: int | None = None
                 ) -> dict[str, str] | None:
    """The ETags of those of `keys` that exist, from listing their folder as `aws s3 sync` does.

    None when that folder holds far more objects than we upload: then each key gets a HEAD.
    """
    # Keys are text, not paths: the common leading characters, cut back to the last slash.
    folder = os.path.commonprefix(keys).rpartition("/")[0]  # noqa: RUF071
    prefix = f"{folder}/" if folder else ""
    budget = budget if budget is not None else 10 * len(keys) + 1000
    wanted = set(keys)
    found: dict[str, str] = {}
    listed = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"] in wanted:
                found[obj["Key"]] = str(obj.get("ETag", ""))
        listed += len(page.get("Contents", []))
        if listed > budget:
            return None
    return found


def upload_file(s3: Any, bucket: str, file: LocalFile, etag: str | None = None,
                listed: bool = False) -> UploadOutcome:
    """Upload one file unless it is not an image or the bucket already holds its bytes.

    With `listed`, `etag` is the object's listed ETag (None: no such object), which spares a
    HEAD request when it settles the question.
    """
    try:
        with file.path.open("rb") as handle:
            content_type = sniff_content_type(handle.read(SNIFF_BYTES))
        if content_type is None:
            return UploadOutcome(file, NOT_IMAGE)
        image_id = image_id_for_object(bucket, file.key)
        sha256_hex, md5_hex = file_digests(file.path)
        if listed and etag is not None and same_content({"ETag": etag}, sha256_hex, md5_hex):
            return UploadOutcome(file, UNCHANGED, image_id, sha256_hex)
        if not listed or etag is not None:
            try:
                head = s3.head_object(Bucket=bucket, Key=file.key, ChecksumMode="ENABLED")
            except ClientError as exc:
                if error_code(exc) not in _MISSING:
                    raise
                head = None
            if head is not None and same_content(head, sha256_hex, md5_hex):
                return UploadOutcome(file, UNCHANGED, image_id, sha256_hex)
        with file.path.open("rb") as handle:
            s3.put_object(
                Bucket=bucket, Key=file.key, Body=handle, ContentType=content_type,
                Metadata={"sha256": sha256_hex},
                # S3 checks the bytes against this and keeps it for the next comparison.
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256_hex)).decode(),
            )
    except (OSError, ClientError, BotoCoreError) as exc:
        return UploadOutcome(file, ERROR, detail=str(exc))
    return UploadOutcome(file, UPLOADED, image_id, sha256_hex)


def upload_files(s3: Any, bucket: str, files: list[LocalFile], concurrency: int,
                 progress: ProgressLine) -> list[UploadOutcome]:
    """Upload files on `concurrency` threads sharing one client; print each image ID."""
    try:
        etags = listed_etags(s3, bucket, [f.key for f in files]) if files else {}
    except (ClientError, BotoCoreError) as exc:
        # Listing may be forbidden where HEAD is not; check object by object then.
        logger.warning("cannot list the bucket, checking each object instead: %s", exc)
        etags = None
    total_bytes = sum(f.size for f in files)
    done_bytes = 0
    actions: Counter[str] = Counter()
    outcomes: list[UploadOutcome] = []
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="upload") as pool:
        futures = [pool.submit(upload_file, s3, bucket, f,
                               etags.get(f.key) if etags is not None else None,
                               etags is not None)
                   for f in files]
        for future in as_completed(futures):
            outcome = future.result()
            outcomes.append(outcome)
            actions[outcome.action] += 1
            done_bytes += outcome.file.size
            if outcome.action in (UPLOADED, UNCHANGED):
                progress.echo(f"{outcome.image_id}  {outcome.action:<9}  {outcome.file.key}")
            elif outcome.action == NOT_IMAGE:
                progress.echo(f"skipped, not an image: {outcome.file.path}", sys.stderr)
            else:
                progress.echo(f"upload failed: {outcome.file.path}: {outcome.detail}",
                              sys.stderr)
            rate = done_bytes / max(time.monotonic() - started, 1e-6)
            progress.update(
                f"upload: {len(outcomes)}/{len(files)} files, {human_bytes(done_bytes)}/"
                f"{human_bytes(total_bytes)} ({human_bytes(rate)}/s); {actions[UPLOADED]} "
                f"uploaded, {actions[UNCHANGED]} unchanged, {actions[NOT_IMAGE]} not images, "
                f"{actions[ERROR]} errors")
    progress.done()
    # Back in the order the files were found, whatever order the threads finished in.
    order = {id(f): i for i, f in enumerate(files)}
    return sorted(outcomes, key=lambda o: order[id(o.file)])


def is_finished(record: ResultRecord | None, sha256: str | None) -> bool:
    """Whether a record is the final result of the bytes we know the object holds."""
    if record is None or record.status == "pending":
        return False
    # A result of the object's earlier bytes does not count for a re-upload.
    return sha256 is None or record.sha256 == sha256


def wait_for_results(
    store: ResultStore,
    expected: dict[str, str | None],
    progress: ProgressLine,
    idle_timeout: float,
    poll_seconds: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, ResultRecord | None]:
    """Poll (BatchGetItem) until every image has its result, or nothing changed for a while.

    `expected` maps image IDs to the SHA-256 their result must be of (None: any result).
    Unless `poll_seconds` is given, polls every second, slower when hundreds are pending
    (each poll reads every pending record, though only its status and hash).
    """
    latest: dict[str, ResultRecord | None] = dict.fromkeys(expected)
    waiting = set(expected)

    def read() -> set[str]:
        """One poll of what is still pending; the IDs that finished in it."""
        try:
            found = store.get_many(sorted(waiting), attributes=_POLLED)
        except StoreError as exc:
            progress.echo(f"reading results failed, retrying: {exc}", sys.stderr)
            found = {}
        finished = {i for i, record in found.items() if is_finished(record, expected[i])}
        latest.update(found)
        waiting.difference_update(finished)
        counts = Counter(
            latest[i].status if latest[i] is not None and i not in waiting else "pending"
            for i in expected)
        progress.update(f"results: {counts['done']} done, {counts['failed']} failed, "
                        f"{counts['pending']} pending", force=not waiting)
        return finished

    poll(read, lambda _: not waiting, idle_timeout, progressed=bool,
         delay_for=lambda _: (poll_seconds if poll_seconds is not None
                              else min(10.0, max(1.0, len(waiting) / 250))),
         clock=clock, sleep=sleep)
    progress.done()
    finished_ids = [i for i in expected if i not in waiting]
    try:
        full = store.get_many(finished_ids)
    except StoreError as exc:
        progress.echo(f"reading the results failed: {exc}", sys.stderr)
        full = {}
    return {i: (full.get(i, latest[i]) if i not in waiting else None) for i in expected}


def print_summary(outcomes: list[UploadOutcome], results: dict[str, ResultRecord | None] | None,
                  elapsed: float, out: TextIO) -> int:
    """The summary table; the exit code: non-zero if an upload or an image failed."""
    actions = Counter(o.action for o in outcomes)
    rows = [("uploaded", actions[UPLOADED], ""),
            ("unchanged", actions[UNCHANGED], "already in the bucket with the same bytes"),
            ("not images", actions[NOT_IMAGE], "skipped"),
            ("upload errors", actions[ERROR], "")]
    code = EXIT_FAILED if actions[ERROR] else EXIT_OK
    failed: list[tuple[UploadOutcome, ResultRecord]] = []
    if results is not None:
        by_id = {o.image_id: o for o in outcomes if o.image_id}
        statuses = Counter(r.status if r is not None else "pending" for r in results.values())
        reused = sum(1 for r in results.values() if r is not None and r.reused)
        rows += [("done", statuses["done"],
                  f"{reused} reused the result of the same bytes" if reused else ""),
                 ("failed", statuses["failed"], ""),
                 ("pending", statuses["pending"], "no result yet" if statuses["pending"] else "")]
        failed = [(by_id[i], r) for i, r in results.items() if r is not None
                  and r.status == "failed"]
        if statuses["failed"] or statuses["pending"]:
            code = EXIT_FAILED
    print(f"{'':<14}{'images':>8}", file=out)
    for name, count, note in rows:
        print(f"{name:<14}{count:>8}" + (f"   {note}" if note else ""), file=out)
    images = len(results) if results is not None else actions[UPLOADED]
    print(f"{'total':<14}{len(outcomes):>8}   files; {images} images in "
          f"{elapsed:.1f} s, {images / max(elapsed, 1e-9):.1f} images/s", file=out)
    if failed:
        print("\nfailed images:", file=out)
        for outcome, record in failed:
            print(f"  {record.image_id}  {record.error_code}  {outcome.file.path}", file=out)
    if results is not None:
        missing = [by_id[i] for i, r in results.items() if r is None]
        if missing:
            print("\nno result yet (still queued, or never announced: try `imagepipe "
                  "backfill`):", file=out)
            for outcome in missing:
                print(f"  {outcome.image_id}  {outcome.file.key}", file=out)
    return code


def run_upload(settings: Settings, clients: Clients, paths: list[Path], prefix: str,
               concurrency: int, wait: bool, idle_timeout: float,
               out: TextIO | None = None) -> int:
    """`imagepipe upload`: upload, print IDs, optionally wait; the process exit code."""
    out = out or sys.stdout
    started = time.monotonic()
    files = find_files(paths, prefix)
    store = ResultStore(clients.dynamodb, settings.table)
    progress = ProgressLine()
    outcomes = upload_files(clients.s3, settings.bucket, files, max(1, concurrency), progress)
    results = None
    if wait:
        # A new upload needs the result of its own bytes; an unchanged object any result.
        expected = {o.image_id: o.sha256 if o.action == UPLOADED else None for o in outcomes
                    if o.image_id and o.action in (UPLOADED, UNCHANGED)}
        results = wait_for_results(store, expected, progress, idle_timeout) if expected else {}
    return print_summary(outcomes, results, time.monotonic() - started, out)


def default_concurrency() -> int:
    """Uploads are network-bound: a few threads per core, within the client's pool."""
    return min(16, 4 * (os.cpu_count() or 1))
