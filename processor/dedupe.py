"""Classify each distinct content once: reuse results of bytes the model has already labelled.

The worker hands over the decoded items of a batch and gets back one outcome per item. Items
whose bytes (SHA-256) already have a done result from the same model name and version (the
by_content index) reuse that result's labels without running the model; of the rest, one item
per distinct hash is classified and its duplicates in the batch copy its labels. A reused
record says so: ``reused`` is true and ``duplicate_of`` names the result that ran the model.

The worker writes results in the background while the next batch is classified, and the index
is eventually consistent, so a result labelled a moment ago may not be found in the table yet.
`RecentResults` remembers what this process labelled lately and is asked first: copies of the
same bytes in consecutive batches then run the model once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from imagepipe.core.records import ResultRecord, ResultStore, StoreError
from processor.batch import Done, Fetched, Outcome, Retry, Reused

logger = logging.getLogger(__name__)


class ModelIdentity(Protocol):
    name: str
    version: str


def content_sha256(data: bytes) -> str:
    """The hex SHA-256 of an object's bytes, as records and the by_content index hold it."""
    return hashlib.sha256(data).hexdigest()


class RecentResults:
    """The done results this process labelled lately, by content hash (bounded, thread-safe)."""

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._results: OrderedDict[tuple[str, str, str, str | None], ResultRecord] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha256: str, model: ModelIdentity, owner: str | None = None
            ) -> ResultRecord | None:
        with self._lock:
            key = (sha256, model.name, model.version, owner)
            found = self._results.get(key)
            if found is not None:
                self._results.move_to_end(key)
            return found

    def remember(self, record: ResultRecord) -> None:
        """Keep a done result that ran the model (copies point at it, not at each other)."""
        if record.status != "done" or not record.sha256 or not record.model_name:
            return
        with self._lock:
            key = (record.sha256, record.model_name, record.model_version or "", record.owner)
            self._results[key] = record
            self._results.move_to_end(key)
            while len(self._results) > self._capacity:
                self._results.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._results)


def classify_once(
    store: ResultStore,
    model: ModelIdentity,
    items: Sequence[Fetched],
    classify: Callable[[list[Fetched]], list[Outcome]],
    map_fn: Callable[[Callable[[Any], ResultRecord | None], Iterable[Any]], Iterator[Any]] = map,
    recent: RecentResults | None = None,
) -> list[Outcome]:
    """The outcome of each item, in order: `classify` runs on one item per content not labelled
    before by this model, and the rest reuse a result.

    `classify` returns one outcome per item it is given. `recent` is asked first; the other
    lookups (one index query per distinct hash) go through `map_fn`, so a thread pool's map
    can run them side by side.
    """
    # Content is the same only among one owner's images (see model_key): a group is one owner's
    # copies of one hash. Without a hash an item is its own group.
    groups: dict[tuple[str | None, str], list[int]] = {}
    for position, item in enumerate(items):
        content = (item.record.owner, item.record.sha256 or f"#{position}")
        groups.setdefault(content, []).append(position)

    contents = [content for content in groups if not content[1].startswith("#")]
    found: dict[tuple[str | None, str], ResultRecord | None] = {}
    if recent is not None:
        found = {(owner, sha): recent.get(sha, model, owner) for owner, sha in contents}
        contents = [content for content in contents if found[content] is None]
    found.update(zip(contents, map_fn(lambda content: _known_result(store, model, *content),
                                      contents), strict=True))
    outcomes: dict[int, Outcome] = {}
    unknown: list[list[int]] = []
    for content, group in groups.items():
        known = found.get(content)
        if known is None:
            unknown.append(group)
            continue
        for position in group:
            outcomes[position] = _reuse(items[position], known)

    labelled = classify([items[group[0]] for group in unknown])

    for (leader, *copies), outcome in zip(unknown, labelled, strict=True):
        outcomes[leader] = outcome
        if isinstance(outcome, Done):
            if recent is not None:
                recent.remember(outcome.record)
            for position in copies:
                outcomes[position] = _reuse(items[position], outcome.record)
            continue
        # The model did not label this content just now; the copies wait with it, for its reason.
        reason = (outcome.reason if isinstance(outcome, Retry)
                  else f"the same bytes in {items[leader].image_id} were not labelled")
        for position in copies:
            outcomes[position] = Retry(reason, items[position].record)
    return [outcomes[position] for position in range(len(items))]


def _known_result(store: ResultStore, model: ModelIdentity, owner: str | None, sha256: str
                  ) -> ResultRecord | None:
    try:
        return store.find_by_content(sha256, model.name, model.version, owner)
    except StoreError as exc:
        # Only an optimisation: without the lookup the image is classified as usual.
        logger.warning("content lookup of %s failed, classifying: %s", sha256[:12], exc)
        return None


def _reuse(item: Fetched, original: ResultRecord) -> Reused:
    record = item.record.reusing(original)
    logger.info("image %s (key %r): same bytes as %s, reusing its labels",
                item.image_id, item.key, record.duplicate_of or original.image_id)
    return Reused(record)
