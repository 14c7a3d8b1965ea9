"""Search by any word: one item per (result, word) on the label indexes, kept in step."""

from __future__ import annotations

from dataclasses import replace

from imagepipe.core.aws import Clients
from imagepipe.core.ids import new_image_id
from imagepipe.core.records import Category, Label, ResultRecord, ResultStore
from imagepipe.core.records.search import is_word_item, word_item_key

OWNER = "0b7e2c4a-5d6f-4a1b-9c3d-2e8f7a6b5c4d"
CAT_WORDS = {"tabby": 0.61, "tabby cat": 0.61, "cat": 0.93, "feline": 0.93, "animal": 0.96}


def _done(words: dict[str, float], owner: str | None = None, model: str = "lite0",
          image_id: str | None = None) -> ResultRecord:
    record = ResultRecord(image_id=image_id or new_image_id(), bucket="b", key="k", owner=owner)
    return record.done([Label("tabby", 0.61, 281, ("domestic cat", "cat"))], model, "1",
                       categories=(Category("cat", 0.93),), words=words)


def _word_keys(clients: Clients, store: ResultStore) -> set[str]:
    items = clients.dynamodb.scan(TableName=store.table)["Items"]
    return {i["image_id"]["S"] for i in items if is_word_item(i["image_id"]["S"])}


def _found(store: ResultStore, word: str, **options) -> list[str]:
    return [r.image_id for r in store.list_results(label=word, **options).records]


def test_a_result_is_found_by_every_word_best_first(store: ResultStore, write) -> None:
    cat = _done(CAT_WORDS)
    kitten = _done({"cat": 0.5, "tabby": 0.2})
    write(cat)
    write(kitten)

    assert _found(store, "Cat") == [cat.image_id, kitten.image_id]
    assert _found(store, "  ANIMAL ") == [cat.image_id]
    assert _found(store, "tabby cat") == [cat.image_id]
    assert _found(store, "cat", min_score=0.6) == [cat.image_id]
    assert _found(store, "dog") == []
    found = store.list_results(label="feline").records[0]
    assert found == store.get(cat.image_id) and found.categories == (Category("cat", 0.93),)
    assert found.labels[0].parents == ("domestic cat", "cat")


def test_reprocessing_replaces_the_words_and_failing_removes_them(
        store: ResultStore, clients: Clients, write) -> None:
    cat = _done(CAT_WORDS)
    write(cat)
    assert _word_keys(clients, store) == {word_item_key(cat.image_id, w) for w in CAT_WORDS}

    # Re-processed by another model that sees a dog
    dog = _done({"dog": 0.8, "animal": 0.9}, model="lite2", image_id=cat.image_id)
    write(dog)

    assert _word_keys(clients, store) == {word_item_key(cat.image_id, w)
                                          for w in ("dog", "animal")}
    assert _found(store, "cat") == [] and _found(store, "dog") == [cat.image_id]
    assert _found(store, "animal") == [cat.image_id]

    # A failure never replaces a done result (records.writes), so its words stay with it;
    # an image that fails outright has none.
    assert not store.save_result(dog.failed("decode_error", "broken"))
    assert _found(store, "dog") == [cat.image_id]
    broken = ResultRecord(image_id=new_image_id(), bucket="b", key="k2")
    store.create_pending(broken)
    store.save_result(broken.failed("decode_error", "broken"))
    assert all(not k.startswith(broken.image_id) for k in _word_keys(clients, store))


def test_word_items_expire_with_their_result(store: ResultStore, clients: Clients) -> None:
    cat = replace(_done({"cat": 0.9}), expires_at=1_900_000_000)
    store.save_result(cat)

    item = clients.dynamodb.get_item(TableName=store.table, Key={
        "image_id": {"S": word_item_key(cat.image_id, "cat")}})["Item"]
    assert item["expires_at"] == {"N": "1900000000"}
    assert not {"feed", "owner", "status", "owner_status"} & set(item)


def test_a_stale_word_item_shows_nothing(store: ResultStore, clients: Clients) -> None:
    cat = _done(CAT_WORDS)
    store.save_result(cat)
    # A crash between the result's write and its words' deletes leaves an item behind.
    store.save_result(replace(_done({"dog": 0.9}, image_id=cat.image_id)))
    clients.dynamodb.put_item(TableName=store.table, Item={
        "image_id": {"S": word_item_key(cat.image_id, "cat")}, "result_id": {"S": cat.image_id},
        "top_label": {"S": "cat"}, "top_score": {"N": "0.93"}})

    assert _found(store, "cat") == []


def test_owners_search_only_their_own(store: ResultStore) -> None:
    mine = _done(CAT_WORDS, owner=OWNER)
    theirs = _done(CAT_WORDS, owner="someone-else")
    store.save_result(mine)
    store.save_result(theirs)

    assert _found(store, "cat", owner=OWNER) == [mine.image_id]
    assert set(_found(store, "cat")) == {mine.image_id, theirs.image_id}
    # The word items are on no other index: the owner's feed holds their one result.
    assert [r.image_id for r in store.list_results(owner=OWNER).records] == [mine.image_id]
    assert [r.image_id for r in store.list_results().records] != []
    assert all(not is_word_item(r.image_id) for r in store.list_results().records)


def test_pages_of_a_word_follow_the_cursor(store: ResultStore) -> None:
    records = [_done({"cat": 0.5 + i / 100}) for i in range(5)]
    for record in records:
        store.save_result(record)

    first = store.list_results(label="cat", limit=3)
    second = store.list_results(label="cat", limit=3, cursor=first.next_cursor)

    expected = [r.image_id for r in sorted(records, key=lambda r: -r.words["cat"])]
    assert [r.image_id for r in first.records + second.records] == expected
    assert second.next_cursor is None


def test_a_copy_of_the_same_bytes_is_found_by_the_same_words(store: ResultStore) -> None:
    original = _done(CAT_WORDS)
    store.save_result(original)
    copy = ResultRecord(image_id=new_image_id(), bucket="b", key="copy").reusing(original)
    store.save_result(copy)

    assert copy.categories == original.categories and copy.words == original.words
    assert set(_found(store, "feline")) == {original.image_id, copy.image_id}
