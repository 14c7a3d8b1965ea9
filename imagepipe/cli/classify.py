"""`imagepipe classify`: upload files exactly as the browser does and print their labels."""

from __future__ import annotations

import mimetypes
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from imagepipe.cli.http import new_session
from imagepipe.core.formats import sniff_content_type
from imagepipe.core.polling import poll

EXIT_FAILED = 1


@dataclass
class Outcome:
    path: Path
    image_id: str = "-"
    status: str = "error"
    label: str = "-"
    score: float | None = None
    detail: str = ""


def upload_file(session: requests.Session, front: str, path: Path) -> dict[str, Any]:
    """Ask the front for a presigned POST, then POST the bytes straight to S3."""
    data = path.read_bytes()
    # As a browser does: the type comes from the file name; the processor checks the bytes.
    content_type = (mimetypes.guess_type(path.name)[0] or sniff_content_type(data)
                    or "application/octet-stream")
    response = session.post(f"{front}/api/uploads", json={
        "filename": path.name, "content_type": content_type, "size": len(data),
    }, timeout=30)
    body = response.json()
    if response.status_code != 201:
        error = body.get("error", {})
        raise UploadRefused(f"{error.get('code', response.status_code)}: {error.get('message')}")
    upload = body["upload"]
    # The file field must come last in an S3 POST form; requests sends files after data.
    # The form's policy is the authorization: the front's token must not go to S3 (S3 would
    # refuse a Bearer header, and the token is none of its business).
    s3 = session.post(upload["url"], data=upload["fields"],
                      files={"file": (path.name, data, content_type)},
                      headers={"Authorization": None}, timeout=120)
    if s3.status_code not in (200, 201, 204):
        raise UploadRefused(f"S3 answered {s3.status_code}: {s3.text[:200]}")
    return body


class UploadRefused(Exception):
    """The front or S3 refused the upload."""


def wait_result(session: requests.Session, result_url: str, timeout: float) -> dict[str, Any]:
    """Poll the result URL with backoff until the image is no longer pending."""
    return poll(lambda: session.get(result_url, timeout=30).json(),
                lambda body: body.get("status") != "pending", timeout,
                first_delay=0.2, max_delay=2.0)


def classify_files(paths: list[Path], front: str, timeout: float = 120,
                   session: requests.Session | None = None) -> int:
    """Upload every file, then wait for and print each result; 1 if any did not succeed.

    `session` carries the caller's access token where the front wants one.
    """
    front = front.rstrip("/")
    session = session or new_session()
    outcomes: list[Outcome] = []
    pending: list[tuple[Outcome, str]] = []
    for path in paths:
        outcome = Outcome(path)
        outcomes.append(outcome)
        try:
            body = upload_file(session, front, path)
        except (OSError, UploadRefused, requests.RequestException, ValueError) as exc:
            outcome.detail = str(exc)
            continue
        outcome.image_id = body["image_id"]
        outcome.status = "pending"
        pending.append((outcome, body["result_url"]))
    for outcome, url in pending:
        try:
            result = wait_result(session, url, timeout)
        except (requests.RequestException, ValueError) as exc:
            outcome.detail = str(exc)
            continue
        outcome.status = result.get("status", "?")
        if result.get("labels"):
            outcome.label = result["labels"][0]["label"]
            outcome.score = result["labels"][0]["score"]
        if result.get("error"):
            outcome.detail = f"{result['error']['code']}: {result['error']['message']}"
    print_table(outcomes)
    return 0 if all(o.status == "done" for o in outcomes) else EXIT_FAILED


def print_table(outcomes: list[Outcome], out: Any = None) -> None:
    out = out or sys.stdout
    rows = [("FILE", "IMAGE ID", "TOP LABEL", "SCORE", "STATUS")]
    for o in outcomes:
        score = f"{o.score:.3f}" if o.score is not None else "-"
        status = o.status + (f" ({o.detail})" if o.detail else "")
        rows.append((o.path.name, o.image_id, o.label, score, status))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        print("  ".join([*cells, row[4]]), file=out)
