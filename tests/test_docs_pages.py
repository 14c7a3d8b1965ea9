"""The README and docs/ stay true: settings, endpoints, the result, stack parameters, links."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from imagepipe.core.records import ResultRecord
from imagepipe.core.settings import documented_variables
from tests.conftest import load_template

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
TABLE_ROW = re.compile(r"^\|(.+)\|\s*$", re.M)


def page(name: str) -> str:
    return (DOCS / name).read_text()


def section(text: str, heading: str) -> str:
    """The text under a `## heading`, up to the next heading of that level or higher."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def table_rows(text: str) -> list[list[str]]:
    """The cells of every table row in text, header and rule rows left out."""
    rows = [[cell.strip() for cell in row.split(" | ")] for row in TABLE_ROW.findall(text)]
    rule = [set(row[0]) <= {"-", "|"} for row in rows] + [False]
    return [row for i, row in enumerate(rows) if not rule[i] and not rule[i + 1]]


def first_cells(text: str) -> list[str]:
    return [row[0] for row in table_rows(text)]


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(text: str) -> list[str]:
    return LINK.findall(CODE_SPAN.sub("", FENCE.sub("", text)))


# Settings: docs/configuration.md holds the table of every setting.

def test_every_variable_is_in_the_configuration_page() -> None:
    configuration = page("configuration.md")
    for var in documented_variables():
        assert f"`{var.name}`" in configuration, var.name


def test_the_configuration_table_holds_exactly_the_settings_in_order() -> None:
    documented = [cell.strip("`") for cell in first_cells(page("configuration.md"))]
    assert documented == [var.name for var in documented_variables()]


def test_the_configuration_table_gives_each_default() -> None:
    rows = {row[0].strip("`"): row[1] for row in table_rows(page("configuration.md"))}
    for var in documented_variables():
        if var.default:
            assert rows[var.name].startswith(f"`{var.default}`"), (var.name, rows[var.name])


# The API page: every route, and the fields of the result.

def _documented_routes(text: str) -> set[tuple[str, str]]:
    routes = set()
    for cell in first_cells(text):
        method, path = cell.strip("`").split(" ", 1)
        routes.add((method, path.split("?", 1)[0]))
    return routes


@pytest.mark.parametrize("source,heading", [
    ("docs/api.md", "Endpoints"), ("README.md", "The API at a glance")])
def test_every_route_is_in_the_api_tables_and_no_other(app: Any, source: str, heading: str
                                                       ) -> None:
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/") or rule.rule in ("/healthz", "/readyz"):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", rule.rule)
            served |= {(method, path) for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert _documented_routes(section((ROOT / source).read_text(), heading)) == served


def test_the_api_page_shows_every_field_of_the_result() -> None:
    block = re.search(r"```json\n(.*?)```", section(page("api.md"), "The result"), re.S)
    assert block is not None
    example = json.loads(block.group(1))
    actual = ResultRecord(image_id="x", bucket="b", key="k").to_json()
    assert set(example) == set(actual)
    assert set(example["image"]) == set(actual["image"])
    assert set(example["labels"][0]) == {"label", "score", "class_id", "parents"}
    assert set(example["categories"][0]) == {"label", "score"}


# The deploy page: every parameter of the template.

def test_the_deploy_page_lists_exactly_the_stack_parameters() -> None:
    documented = set()
    for cell in first_cells(section(page("deploy.md"), "Parameters")):
        documented |= set(re.findall(r"`(\w+)`", cell))
    assert documented == set(load_template()["Parameters"])


# Links: every relative link points at a file that exists, and at a heading it has.

@pytest.mark.parametrize("source", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files_and_headings(source: Path) -> None:
    text = source.read_text()
    checked = 0
    for target in links(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (source.parent / path).resolve() if path else source
        assert resolved.exists(), f"{source.name}: {target}"
        if anchor:
            assert resolved.suffix == ".md", f"{source.name}: {target}"
            assert anchor in anchors(resolved.read_text()), f"{source.name}: {target}"
        checked += 1
    if source.parent == DOCS or source.name == "README.md":
        assert checked > 0, f"{source.name} links nowhere"


def test_the_link_checker_sees_a_broken_link(tmp_path: Path) -> None:
    text = "[a](missing.md) `[b](skipped.md)` [c](#nowhere) [d](https://example.com)"
    assert links(text) == ["missing.md", "#nowhere", "https://example.com"]
    assert "nowhere" not in anchors("# Somewhere\n")
    assert slug("Throughput and `make bench`") == "throughput-and-make-bench"
    assert slug("Bulk: folders, buckets, reprocessing") == "bulk-folders-buckets-reprocessing"
