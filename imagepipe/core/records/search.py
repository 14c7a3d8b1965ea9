"""Search by any word: one item per (result, word it answers to), on the label indexes.

DynamoDB has no multi-valued index, so a done result that answers to "tabby", "cat",
"feline", "mammal" and "animal" gets one small item per word in the results table, keyed
``<image_id>#word#<word>``, with the word and its score as the `by_label` index's keys (and
``<owner>#<word>`` as `by_owner_label`'s). `GET /api/results?label=WORD` is then one query of
one partition, best score first, and a BatchGetItem of the results found.

The items carry no feed, status or owner attribute, so no other index sees them. They are
kept consistent with the result: the result records the words it was written with
(`ResultRecord.words`), and the next outcome of the image (re-processed by another model,
failed) deletes the words it no longer has. A search reads the results it found and keeps a
hit only if the result still answers to that word, so an item a crash left behind is never
shown; items of results that expire expire with them (the same TTL attribute).

Writes per image: one item per word (the labels' names and WordNet synonyms, the scored
nodes' words: 5 to 23 for Lite0 and Lite2 on scikit-image's photos, each well under 1 KB, so
one write unit each), plus one delete per word the previous outcome had and this one has not;
BatchWriteItem sends them 25 to a call, so nearly always one call after the result's own
write.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from imagepipe.core.records.codec import TTL_ATTRIBUTE, decimal, to_dynamo
from imagepipe.core.records.indexes import (
    BY_LABEL,
    BY_OWNER_LABEL,
    RESULT_ID,
    label_key,
    owner_key,
)
from imagepipe.core.records.record import ResultRecord

WORD_SEPARATOR = "#word#"


def word_item_key(image_id: str, word: str) -> str:
    """The table key of a result's item for one word."""
    return f"{image_id}{WORD_SEPARATOR}{label_key(word)}"


def is_word_item(key: str) -> bool:
    """Whether a table key is a search item's rather than a result's."""
    return WORD_SEPARATOR in key


def result_of(item: dict[str, Any]) -> str:
    """The image ID a typed item of the label indexes stands for: a search item's result,
    or a result written before search items, which is on the index itself."""
    return item[RESULT_ID]["S"] if RESULT_ID in item else item["image_id"]["S"]


def answers_to(record: ResultRecord, word: str) -> bool:
    """Whether a result read back still answers to a word (and so may be shown for it)."""
    if record.status != "done":
        return False
    if record.words:
        return label_key(word) in record.words
    # Written before search items: only its top label was on the index.
    return bool(record.labels) and label_key(record.labels[0].label) == label_key(word)


def word_items(record: ResultRecord) -> list[dict[str, Any]]:
    """The typed search items of a result: one per word, none unless it is done."""
    if record.status != "done":
        return []
    items = []
    for word, score in record.words.items():
        item: dict[str, Any] = {
            "image_id": word_item_key(record.image_id, word),
            RESULT_ID: record.image_id,
            BY_LABEL.partition: label_key(word),
            BY_LABEL.sort: decimal(score),
        }
        if record.owner:
            item[BY_OWNER_LABEL.partition] = owner_key(record.owner, label_key(word))
        if record.expires_at:
            item[TTL_ATTRIBUTE] = record.expires_at
        items.append({name: to_dynamo(value) for name, value in item.items()})
    return items


def word_writes(record: ResultRecord, previous_words: Iterable[str]) -> list[dict[str, Any]]:
    """The BatchWriteItem requests that make a result's search items match it: a put per
    word it has, a delete per word the previous outcome had and it has not."""
    current = set(record.words) if record.status == "done" else set()
    requests: list[dict[str, Any]] = [{"PutRequest": {"Item": item}}
                                      for item in word_items(record)]
    requests += [{"DeleteRequest": {"Key": {"image_id": {"S": word_item_key(record.image_id,
                                                                            word)}}}}
                 for word in sorted(set(previous_words) - current)]
    return requests
