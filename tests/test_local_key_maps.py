"""The local endpoint's index maps answer every query exactly as moto's own walk does."""

from __future__ import annotations

import random
from typing import Any

import boto3
import pytest
from moto import mock_aws

from imagepipe.local.key_maps import moto_queries, speed_up_indexes

TABLE = "maps"


@pytest.fixture(scope="module")
def db() -> Any:
    assert speed_up_indexes()
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName=TABLE, BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": name, "AttributeType": kind}
                                  for name, kind in (("id", "S"), ("feed", "S"), ("at", "S"),
                                                     ("label", "S"), ("score", "N"),
                                                     ("sha", "S"))],
            GlobalSecondaryIndexes=[
                {"IndexName": "by_at", "Projection": {"ProjectionType": "ALL"},
                 "KeySchema": [{"AttributeName": "feed", "KeyType": "HASH"},
                               {"AttributeName": "at", "KeyType": "RANGE"}]},
                {"IndexName": "by_label", "Projection": {"ProjectionType": "ALL"},
                 "KeySchema": [{"AttributeName": "label", "KeyType": "HASH"},
                               {"AttributeName": "score", "KeyType": "RANGE"}]},
                # No range key: moto orders a partition by the table's key.
                {"IndexName": "by_sha", "Projection": {"ProjectionType": "KEYS_ONLY"},
                 "KeySchema": [{"AttributeName": "sha", "KeyType": "HASH"}]},
            ])
        yield client


def random_item(rng: random.Random, key: str) -> dict[str, Any]:
    item: dict[str, Any] = {"id": {"S": key}, "feed": {"S": f"all#{rng.randrange(3)}"},
                            "status": {"S": rng.choice(["pending", "done", "failed"])}}
    # Equal sort keys are common (same second): the table key then decides the order.
    item["at"] = {"S": f"2026-01-0{rng.randrange(1, 4)}T00:00:{rng.randrange(10):02d}"}
    if rng.random() < 0.7:  # sparse indexes: some items are not in them
        item["label"] = {"S": rng.choice(["cat", "dog", "owl"])}
        item["score"] = {"N": str(rng.choice([0.5, 0.25, 0.75, 1, 0.125]))}
    if rng.random() < 0.5:
        item["sha"] = {"S": rng.choice(["aa", "bb"])}
    return item


def fill(client: Any, rng: random.Random, steps: int) -> None:
    """Random puts, overwrites, updates (moving items between partitions) and deletes."""
    keys = [f"k{n:03d}" for n in range(120)]
    for _ in range(steps):
        key = rng.choice(keys)
        roll = rng.random()
        if roll < 0.55:
            client.put_item(TableName=TABLE, Item=random_item(rng, key))
        elif roll < 0.85:
            client.update_item(
                TableName=TABLE, Key={"id": {"S": key}},
                UpdateExpression="SET feed = :f, #at = :a REMOVE label",
                ExpressionAttributeNames={"#at": "at"},
                ExpressionAttributeValues={":f": {"S": f"all#{rng.randrange(3)}"},
                                           ":a": {"S": f"2026-01-02T00:00:0{rng.randrange(9)}"}})
        else:
            client.delete_item(TableName=TABLE, Key={"id": {"S": key}})


def queries(rng: random.Random) -> list[dict[str, Any]]:
    found = []
    for _ in range(60):
        index = rng.choice(["by_at", "by_label", "by_sha"])
        request: dict[str, Any] = {"TableName": TABLE, "IndexName": index,
                                   "ScanIndexForward": rng.random() < 0.5}
        if index == "by_at":
            request["KeyConditionExpression"] = "feed = :p"
            values = {":p": {"S": f"all#{rng.randrange(3)}"}}
            roll = rng.random()
            if roll < 0.3:
                request["KeyConditionExpression"] += " AND #at >= :since"
                values[":since"] = {"S": "2026-01-02"}
            elif roll < 0.45:
                request["KeyConditionExpression"] += " AND #at < :until"
                values[":until"] = {"S": "2026-01-02T00:00:05"}
            elif roll < 0.6:
                request["KeyConditionExpression"] += " AND begins_with(#at, :day)"
                values[":day"] = {"S": "2026-01-02"}
            if "#at" in request["KeyConditionExpression"]:
                request["ExpressionAttributeNames"] = {"#at": "at"}
            if rng.random() < 0.4:
                request["FilterExpression"] = "#st = :st"
                request.setdefault("ExpressionAttributeNames", {})["#st"] = "status"
                values[":st"] = {"S": "done"}
        elif index == "by_label":
            request["KeyConditionExpression"] = "label = :p"
            values = {":p": {"S": rng.choice(["cat", "dog", "owl", "emu"])}}
            if rng.random() < 0.5:
                request["KeyConditionExpression"] += " AND score BETWEEN :lo AND :hi"
                values[":lo"], values[":hi"] = {"N": "0.25"}, {"N": "0.75"}
        else:
            request["KeyConditionExpression"] = "sha = :p"
            values = {":p": {"S": rng.choice(["aa", "bb"])}}
        request["ExpressionAttributeValues"] = values
        if rng.random() < 0.7:
            request["Limit"] = rng.choice([1, 2, 3, 7, 25])
        if rng.random() < 0.2:
            request["Select"] = "COUNT"
        found.append(request)
    return found


def every_page(client: Any, request: dict[str, Any]) -> list[dict[str, Any]]:
    """Every page of a query, with each page's items, count and LastEvaluatedKey."""
    request = dict(request)
    pages = []
    while True:
        page = client.query(**request)
        pages.append({k: page.get(k) for k in ("Items", "Count", "ScannedCount",
                                               "LastEvaluatedKey")})
        if "LastEvaluatedKey" not in page or len(pages) > 200:
            return pages
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


@pytest.mark.parametrize("seed", range(4))
def test_index_queries_match_motos_own_on_random_tables(db: Any, seed: int) -> None:
    rng = random.Random(seed)
    fill(db, rng, 150)
    for request in queries(rng):
        fast = every_page(db, request)
        with moto_queries():
            slow = every_page(db, request)
        assert fast == slow, request


def test_a_query_touches_only_its_partition(db: Any) -> None:
    from moto.dynamodb.models import dynamodb_backends
    from moto.dynamodb.models.table import Table

    table = dynamodb_backends["123456789012"]["us-east-1"].get_table(TABLE)
    walked: list[int] = []
    original = Table.all_items

    def counting(self: Any) -> list[Any]:
        items = original(self)
        walked.append(len(items))
        return items

    Table.all_items = counting
    try:
        db.put_item(TableName=TABLE, Item={"id": {"S": "lonely"}, "sha": {"S": "zz"}})
        page = db.query(TableName=TABLE, IndexName="by_sha", KeyConditionExpression="sha = :p",
                        ExpressionAttributeValues={":p": {"S": "zz"}})
    finally:
        Table.all_items = original
    assert [item["id"]["S"] for item in page["Items"]] == ["lonely"]
    assert walked == [1] and len(table.all_items()) > 1
