"""Classify each distinct content once: reuse results of bytes the model has already labelled.

The worker hands over the decoded items of a batch. Items whose bytes (SHA-256) already have a
done result from the same model name and version (the by_content index) get that result's
labels without running the model; of the rest, one item per distinct hash is classified and
its duplicates in the batch copy its labels. A reused record says so: ``reused`` is true and
``duplicate_of`` names the result that ran the model.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from imagepipe.core.records import ResultRecord, ResultStore, StoreError

logger = logging.getLogger(__name__)


class Work(Protocol):
    """What this module reads and sets on the worker's batch items."""

    image_id: str
    event: Any
    record: ResultRecord | None
    decoded: Any
    transient: bool


class ModelIdentity(Protocol):
    name: str
    version: str


def content_sha256(data: bytes) -> str:
    """The hex SHA-256 of an object's bytes, as records and the by_content index hold it."""
    return hashlib.sha256(data).hexdigest()


def classify_once(
    store: ResultStore,
    model: ModelIdentity,
    items: Sequence[Work],
    classify: Callable[[list[Any]], None],
    map_fn: Callable[[Callable[[str], ResultRecord | None], Iterable[str]], Iterator[Any]] = map,
) -> None:
    """Run `classify` on one item per content not labelled before by this model; reuse the rest.

    The lookups (one index query per distinct hash) go through `map_fn`, so a thread pool's
    map can run them side by side.
    """
    groups: dict[str, list[Work]] = {}
    for position, item in enumerate(items):
        sha = item.record.sha256 if item.record is not None else None
        # Without a hash an item is its own group.
        groups.setdefault(sha or f"#{position}", []).append(item)

    hashes = [sha for sha in groups if not sha.startswith("#")]
    found = dict(zip(hashes, map_fn(lambda sha: _known_result(store, model, sha), hashes),
                     strict=True))
    unknown: list[list[Work]] = []
    for sha, group in groups.items():
        known = found.get(sha)
        if known is None:
            unknown.append(group)
            continue
        for item in group:
            _reuse(item, known)

    classify([group[0] for group in unknown])

    for leader, *copies in unknown:
        for item in copies:
            if leader.transient or leader.record is None or leader.record.status != "done":
                # The model did not label this content just now; retry the copies with it.
                item.transient = True
                continue
            _reuse(item, leader.record)


def _known_result(store: ResultStore, model: ModelIdentity, sha256: str) -> ResultRecord | None:
    try:
        return store.find_by_content(sha256, model.name, model.version)
    except StoreError as exc:
        # Only an optimisation: without the lookup the image is classified as usual.
        logger.warning("content lookup of %s failed, classifying: %s", sha256[:12], exc)
        return None


def _reuse(item: Work, original: ResultRecord) -> None:
    assert item.record is not None
    item.record = item.record.reusing(original)
    item.decoded = None  # the pixels are not needed
    logger.info("image %s (key %r): same bytes as %s, reusing its labels",
                item.image_id, item.event.key, item.record.duplicate_of or original.image_id)
