"""`imagepipe results`: list and export results page by page, as a table, JSON, JSONL or CSV."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import Any, TextIO

from imagepipe.core.records import ResultRecord, ResultStore, Status

FORMATS = ("table", "json", "jsonl", "csv")
PAGE_SIZE = 100

CSV_COLUMNS = (
    "image_id", "status", "top_label", "top_score", "labels", "categories", "model_name",
    "model_version",
    "bucket", "key", "format", "width", "height", "bytes", "error_code", "error_message",
    "sha256", "duplicate_of", "reused", "source", "created_at", "processed_at",
)


def iter_results(
    store: ResultStore,
    *,
    label: str | None = None,
    status: Status | None = None,
    min_score: float | None = None,
    limit: int | None = None,
    page_size: int = PAGE_SIZE,
) -> Iterator[ResultRecord]:
    """Every matching result, one index page at a time (the results API's own query)."""
    count = 0
    cursor: str | None = None
    while limit is None or count < limit:
        size = page_size if limit is None else min(page_size, limit - count)
        page = store.list_results(label=label, status=status, min_score=min_score,
                                  limit=size, cursor=cursor)
        yield from page.records
        count += len(page.records)
        cursor = page.next_cursor
        if cursor is None:
            return


def csv_row(record: ResultRecord) -> dict[str, Any]:
    """A flat row of a record; labels and categories as JSON lists of [label, score]."""
    top = record.labels[0] if record.labels else None
    return {
        "image_id": record.image_id,
        "status": record.status,
        "top_label": top.label if top else "",
        "top_score": top.score if top else "",
        "labels": json.dumps([[x.label, x.score] for x in record.labels]),
        "categories": json.dumps([[x.label, x.score] for x in record.categories]),
        "model_name": record.model_name or "",
        "model_version": record.model_version or "",
        "bucket": record.bucket,
        "key": record.key,
        "format": record.image.format or "",
        "width": record.image.width if record.image.width is not None else "",
        "height": record.image.height if record.image.height is not None else "",
        "bytes": record.image.bytes if record.image.bytes is not None else "",
        "error_code": record.error_code or "",
        "error_message": record.error_message or "",
        "sha256": record.sha256 or "",
        "duplicate_of": record.duplicate_of or "",
        "reused": "true" if record.reused else "false",
        "source": record.source,
        "created_at": record.created_at,
        "processed_at": record.processed_at or "",
    }


def write_results(records: Iterator[ResultRecord], fmt: str, out: TextIO) -> int:
    """Write records as they come, flushing as it goes; how many were written."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    count = 0
    writer: Any = None
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
    elif fmt == "json":
        out.write("[")
    elif fmt == "table":
        out.write(_table_line("IMAGE ID", "STATUS", "TOP LABEL", "SCORE", "KEY"))
    for record in records:
        if fmt == "csv":
            writer.writerow(csv_row(record))
        elif fmt == "jsonl":
            out.write(json.dumps(record.to_json()) + "\n")
        elif fmt == "json":
            out.write(("," if count else "") + "\n" + json.dumps(record.to_json()))
        else:
            top = record.labels[0] if record.labels else None
            out.write(_table_line(
                record.image_id,
                record.status,
                top.label if top else (record.error_code or "-"),
                f"{top.score:.3f}" if top else "-",
                record.key,
            ))
        count += 1
        if count % PAGE_SIZE == 0:
            out.flush()
    if fmt == "json":
        out.write("\n]\n" if count else "]\n")
    out.flush()
    return count


def _table_line(image_id: str, status: str, label: str, score: str, key: str) -> str:
    return f"{image_id:<22}  {status:<7}  {label[:28]:<28}  {score:>5}  {key}\n"
