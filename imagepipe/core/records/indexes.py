"""The table's global secondary indexes and the attributes a record keys them on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imagepipe.core.records.codec import decimal

if TYPE_CHECKING:
    from imagepipe.core.records.record import ResultRecord

# The newest-first feed of every result, in shards: one GSI partition takes about 1,000
# writes/s, and every result is written two or three times (pending, then done or failed), so
# one partition would throttle at a few hundred images a second. A result's shard is fixed by
# a hash of its ID, so every write of one result lands in the same shard; readers query all
# shards and merge. Eight shards take about 8,000 writes/s; more shards cost one more query
# per page listed, not per write.
FEED_ALL = "all"
FEED_SHARDS = 8
FEED_PARTITIONS = tuple(f"{FEED_ALL}#{shard}" for shard in range(FEED_SHARDS))

# Statuses that by_open_status holds. Done results, nearly all of them, are left out: three
# partitions, one of them taking nearly every write, would throttle as one feed does. Pending
# and failed results are few at any moment, and are what an operator counts and looks at.
OPEN_STATUSES = ("pending", "failed")


@dataclass(frozen=True)
class Index:
    """A global secondary index: its name and its partition and sort attributes."""

    name: str
    partition: str
    sort: str
    sort_type: str


BY_CREATED = Index("by_created", "feed", "created_at", "S")
# Sparse: pending and failed results only (see OPEN_STATUSES). A new name, not by_status's,
# because an index's key attributes cannot change in place.
BY_STATUS = Index("by_open_status", "open_status", "created_at", "S")
# Sparse: the search items of done results, one per word the result answers to (see
# records.search); results written before those items carry their top label themselves.
BY_LABEL = Index("by_label", "top_label", "top_score", "N")
# Sparse: done results by the SHA-256 of their bytes and the model that labelled them.
BY_CONTENT = Index("by_content", "sha256", "content_model", "S")

# One user's results: newest first, by status, by top label. Sparse: only owned results.
# The partitions hold the owner, so a user's listing is a query, never a filter afterwards.
BY_OWNER = Index("by_owner", "owner", "created_at", "S")
BY_OWNER_STATUS = Index("by_owner_status", "owner_status", "created_at", "S")
BY_OWNER_LABEL = Index("by_owner_label", "owner_label", "top_score", "N")
# The search items' own attributes: the result they stand for (see records.search).
RESULT_ID = "result_id"

INDEXES = (BY_CREATED, BY_STATUS, BY_LABEL, BY_CONTENT, BY_OWNER, BY_OWNER_STATUS,
           BY_OWNER_LABEL)


def feed_partition(image_id: str) -> str:
    """The shard of the by_created feed that holds this image's result."""
    digest = hashlib.blake2b(image_id.encode(), digest_size=4).digest()
    return FEED_PARTITIONS[int.from_bytes(digest, "big") % FEED_SHARDS]


def label_key(label: str) -> str:
    """How a label or search word is matched: case and spacing do not matter."""
    return " ".join(label.lower().split())


def owner_key(owner: str, value: str) -> str:
    """An owner's partition of an index: their results of one status, or of one top label."""
    return f"{owner}#{value}"


def model_key(name: str, version: str, owner: str | None = None) -> str:
    """One string for a model, its version and whose images, as the by_content index holds it.

    Results are reused only among one owner's images: a copy of someone else's bytes must not
    learn that they exist, nor their result's ID.
    """
    return f"{name}@{version}" if owner is None else f"{name}@{version}#{owner}"


def index_attributes(record: ResultRecord) -> dict[str, Any]:
    """The attributes, beyond the record's own fields, that the indexes are keyed on."""
    attrs: dict[str, Any] = {BY_CREATED.partition: feed_partition(record.image_id)}
    if record.status in OPEN_STATUSES:
        attrs[BY_STATUS.partition] = record.status
    if record.status == "done" and record.labels:
        # The top score alone (no top label) keeps the result off the label indexes, which
        # hold its search items, while listings still filter on it (min_score).
        attrs[BY_LABEL.sort] = decimal(record.labels[0].score)
    if record.owner:
        attrs[BY_OWNER_STATUS.partition] = owner_key(record.owner, record.status)
    # Key attributes must be absent rather than null; by_content holds done results only.
    if record.sha256 and record.status == "done" and record.model_name:
        attrs[BY_CONTENT.sort] = model_key(record.model_name, record.model_version or "",
                                           record.owner)
    return attrs
