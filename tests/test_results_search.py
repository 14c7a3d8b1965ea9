"""The issue's acceptance: a tabby photo processed, found by cat and animal, not by dog;
re-processed by another model, its old words are gone. The worker and the front are real, the
model's network is a fixed probability vector (tests/fakes.py) with the real labels and tree."""

from __future__ import annotations

from dataclasses import replace

from imagepipe.core.records import ResultStore
from imagepipe.core.records.search import is_word_item, result_of
from tests.conftest import s3_event
from tests.fakes import TABBY_PHOTO, imagenet_classifier, png, put_image

DOG_PHOTO = {"golden retriever": 0.7, "Labrador retriever": 0.2}


def _process(make_worker, settings, clients, resources, classifier) -> None:
    worker = make_worker(settings, clients, classifier)
    for _ in range(5):
        if worker.run(max_batches=1).received == 0:
            return


def _found(client, word: str, **params) -> list[str]:
    response = client.get("/api/results", query_string={"label": word, **params})
    assert response.status_code == 200, response.get_json()
    return [r["image_id"] for r in response.get_json()["results"]]


def _words_in_table(clients, settings, image_id: str) -> set[str]:
    items = clients.dynamodb.scan(TableName=settings.table)["Items"]
    return {i["top_label"]["S"] for i in items
            if is_word_item(i["image_id"]["S"]) and result_of(i) == image_id}


def test_a_tabby_is_found_by_cat_and_animal_and_not_by_dog(
        make_worker, settings, clients, resources, store: ResultStore, client) -> None:
    settings = replace(settings, reuse_results=False)
    image_id = put_image(clients, settings, "pets/chelsea.png", png((300, 200)))

    _process(make_worker, settings, clients, resources, imagenet_classifier(TABBY_PHOTO))

    result = client.get(f"/api/results/{image_id}").get_json()
    assert result["status"] == "done"
    assert result["labels"][0]["label"] == "tiger cat"
    assert result["labels"][0]["parents"][:2] == ["domestic cat", "cat"]
    names = [c["label"] for c in result["categories"]]
    assert {"cat", "feline", "mammal", "animal"} <= set(names)
    assert names[0] == "domestic cat" and len(names) <= settings.category_top_k
    assert all(c["score"] >= settings.category_min_score for c in result["categories"])
    assert _found(client, "cat") == [image_id]
    assert _found(client, "Animal") == [image_id]
    assert _found(client, "house cat") == [image_id]
    assert _found(client, "tabby") == [image_id]
    assert _found(client, "tabby", min_score=0.5) == []
    assert _found(client, "dog") == []

    # Re-processed by another model, which sees a dog: the cat's words go.
    clients.sqs.send_message(QueueUrl=resources.queue_url,
                             MessageBody=s3_event(settings.bucket, "pets/chelsea.png",
                                                  event_time="2099-01-01T00:00:00.000Z"))
    _process(make_worker, settings, clients, resources,
             imagenet_classifier(DOG_PHOTO, name="other-model"))

    assert store.get(image_id).model_name == "other-model"
    assert _found(client, "dog") == [image_id]
    assert _found(client, "cat") == [] and _found(client, "tabby") == []
    assert _found(client, "animal") == [image_id]
    words = _words_in_table(clients, settings, image_id)
    assert "dog" in words and "retriever" in words
    assert not words & {"cat", "feline", "tabby", "tiger cat", "house cat"}


def test_words_are_suggested_from_the_hierarchy(client) -> None:
    body = client.get("/api/words", query_string={"prefix": "House C"}).get_json()
    assert "house cat" in body["words"]
    assert client.get("/api/words", query_string={"prefix": ""}).get_json() == {"words": []}
    assert client.get("/api/words", query_string={"prefix": "x" * 101}).status_code == 400
    assert len(client.get("/api/words", query_string={"prefix": "a", "limit": 3}
                          ).get_json()["words"]) == 3
