"""`imagepipe results`: every format parses, every record once, filters as the API's."""

from __future__ import annotations

import csv
import io
import json
import random

import pytest

from imagepipe.cli.export import CSV_COLUMNS, iter_results, write_results
from imagepipe.cli.main import main
from imagepipe.core.ids import new_image_id
from imagepipe.core.records import Label, ResultRecord, ResultStore

LABELS = ["tabby", "espresso", "missile"]


@pytest.fixture
def filled(store: ResultStore) -> dict[str, ResultRecord]:
    rng = random.Random(4)
    records = {}
    for i in range(45):
        base = ResultRecord(image_id=new_image_id(), bucket="test-images",
                            key=f"dir/photo, \"{i}\".jpg", sha256=f"{i:064x}",
                            created_at=f"2026-11-25T10:00:{i:02d}.000Z")
        if i % 9 == 4:
            record = base.failed("corrupt_image", "half, a file")
        elif i % 9 == 8:
            store.create_pending(base)
            records[base.image_id] = base
            continue
        else:
            score = round(rng.uniform(0.05, 0.99), 4)
            record = base.done([Label(LABELS[i % 3], score, 281 + i % 3),
                                Label("other", round(score / 10, 4), 1)], "efficientnet_lite0", "1")
        store.save_result(record)
        records[record.image_id] = record
    return records


def _cli(capsys, *args: str) -> str:
    assert main(["results", *args]) == 0
    return capsys.readouterr().out


def test_json_holds_every_record_once(cli_env, filled, capsys) -> None:
    body = json.loads(_cli(capsys, "--format", "json"))

    assert sorted(r["image_id"] for r in body) == sorted(filled)
    assert body == [filled[r["image_id"]].to_json() for r in body]


def test_jsonl_one_record_per_line(cli_env, filled, capsys) -> None:
    lines = _cli(capsys, "--format", "jsonl", "--status", "failed").splitlines()

    records = [json.loads(line) for line in lines]
    assert {r["image_id"] for r in records} == {i for i, r in filled.items()
                                                if r.status == "failed"}
    assert all(r["error"]["code"] == "corrupt_image" for r in records)


def test_csv_parses_with_quoted_fields(cli_env, filled, capsys) -> None:
    rows = list(csv.DictReader(io.StringIO(_cli(capsys, "--format", "csv"))))

    assert len(rows) == len(filled)
    assert tuple(rows[0]) == CSV_COLUMNS
    by_id = {row["image_id"]: row for row in rows}
    for image_id, record in filled.items():
        row = by_id[image_id]
        assert row["key"] == record.key
        assert row["status"] == record.status
        if record.labels:
            assert float(row["top_score"]) == record.labels[0].score
            assert json.loads(row["labels"])[0] == [record.labels[0].label,
                                                    record.labels[0].score]
        if record.status == "failed":
            assert row["error_message"] == "half, a file"


def test_label_search_best_first_with_min_score_and_limit(cli_env, filled, capsys) -> None:
    body = json.loads(_cli(capsys, "--format", "json", "--label", "TABBY", "--min-score", "0.3"))

    expected = {i for i, r in filled.items() if r.labels and r.labels[0].label == "tabby"
                and r.labels[0].score >= 0.3}
    assert {r["image_id"] for r in body} == expected and len(body) == len(expected)
    scores = [r["labels"][0]["score"] for r in body]
    assert scores == sorted(scores, reverse=True)

    limited = json.loads(_cli(capsys, "--format", "json", "--label", "tabby", "--limit", "2"))
    assert [r["image_id"] for r in limited] == [r["image_id"] for r in
                                               json.loads(_cli(capsys, "--format", "json",
                                                               "--label", "tabby"))][:2]


def test_table_has_a_row_per_record(cli_env, filled, capsys) -> None:
    lines = _cli(capsys, "--limit", "10").splitlines()

    assert lines[0].split()[:2] == ["IMAGE", "ID"]
    assert len(lines) == 11
    newest = max(filled.values(), key=lambda r: r.created_at)
    assert lines[1].startswith(newest.image_id)


@pytest.mark.parametrize("page_size", [1, 4, 100])
def test_paging_returns_every_record_once(store, filled, page_size: int) -> None:
    seen = [r.image_id for r in iter_results(store, page_size=page_size)]

    assert sorted(seen) == sorted(filled)
    assert len(seen) == len(set(seen))


def test_empty_json_is_an_empty_list(store) -> None:
    out = io.StringIO()
    assert write_results(iter(()), "json", out) == 0
    assert json.loads(out.getvalue()) == []


def test_bad_arguments_are_refused(cli_env, capsys) -> None:
    for args in (["--min-score", "2"], ["--status", "finished"], ["--format", "xml"],
                 ["--limit", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["results", *args])
        assert exit_info.value.code == 2
