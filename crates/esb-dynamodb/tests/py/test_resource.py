"""boto3 resource / Table API with boto3.dynamodb.conditions (Key, Attr)."""
from decimal import Decimal

import pytest
from boto3.dynamodb.conditions import Attr, Key
from botocore.exceptions import ClientError

from conftest import unique


@pytest.fixture
def table(resource):
    t = resource.create_table(
        TableName=unique(),
        KeySchema=[{"AttributeName": "user", "KeyType": "HASH"}, {"AttributeName": "ts", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "user", "AttributeType": "S"}, {"AttributeName": "ts", "AttributeType": "N"}],
        BillingMode="PAY_PER_REQUEST",
    )
    t.wait_until_exists()
    yield t
    t.delete()


def test_table_crud(table):
    assert table.table_status == "ACTIVE"
    table.put_item(Item={"user": "u1", "ts": 1, "name": "Ann", "score": Decimal("10.5"), "tags": {"a", "b"},
                         "profile": {"age": 30, "langs": ["en", "ja"]}, "active": True, "nothing": None})
    item = table.get_item(Key={"user": "u1", "ts": 1})["Item"]
    assert item["score"] == Decimal("10.5") and item["tags"] == {"a", "b"}
    assert item["profile"]["langs"] == ["en", "ja"] and item["nothing"] is None
    out = table.update_item(
        Key={"user": "u1", "ts": 1},
        UpdateExpression="SET score = score + :d, profile.age = :age REMOVE active",
        ExpressionAttributeValues={":d": Decimal("0.5"), ":age": 31},
        ReturnValues="ALL_NEW",
    )
    assert out["Attributes"]["score"] == Decimal("11") and out["Attributes"]["profile"]["age"] == 31
    table.delete_item(Key={"user": "u1", "ts": 1}, ConditionExpression=Attr("score").gt(10))
    assert "Item" not in table.get_item(Key={"user": "u1", "ts": 1})


def test_conditions_builders(table):
    with table.batch_writer() as w:
        for i in range(30):
            w.put_item(Item={"user": "u" + str(i % 3), "ts": i, "kind": "even" if i % 2 == 0 else "odd",
                             "label": f"L{i}", "n": i, "tags": {"t" + str(i % 4)}})
    r = table.query(KeyConditionExpression=Key("user").eq("u0"))
    assert r["Count"] == 10
    r = table.query(KeyConditionExpression=Key("user").eq("u0") & Key("ts").between(3, 12))
    assert [int(i["ts"]) for i in r["Items"]] == [3, 6, 9, 12]
    r = table.query(KeyConditionExpression=Key("user").eq("u1") & Key("ts").gt(20), ScanIndexForward=False)
    assert [int(i["ts"]) for i in r["Items"]] == [28, 25, 22]
    r = table.query(KeyConditionExpression=Key("user").eq("u0"), FilterExpression=Attr("kind").eq("odd"))
    assert [int(i["ts"]) for i in r["Items"]] == [3, 9, 15, 21, 27]
    r = table.scan(FilterExpression=Attr("n").lt(5) & Attr("kind").ne("odd"))
    assert sorted(int(i["ts"]) for i in r["Items"]) == [0, 2, 4]
    r = table.scan(FilterExpression=Attr("label").begins_with("L1") | Attr("n").is_in([25, 26]))
    assert r["Count"] == 13
    r = table.scan(FilterExpression=Attr("tags").contains("t1") & Attr("missing").not_exists())
    assert r["Count"] == 8
    r = table.scan(FilterExpression=Attr("label").size().eq(2) & Attr("n").attribute_type("N"))
    assert r["Count"] == 10
    r = table.scan(FilterExpression=~Attr("kind").eq("odd") & Attr("n").exists())
    assert r["Count"] == 15
    r = table.scan(ProjectionExpression="#u, ts", ExpressionAttributeNames={"#u": "user"}, Limit=4)
    assert len(r["Items"]) == 4 and all(set(i) == {"user", "ts"} for i in r["Items"])
    assert "LastEvaluatedKey" in r


def test_conditional_put_with_builder(table):
    table.put_item(Item={"user": "c", "ts": 0, "v": 1}, ConditionExpression=Attr("user").not_exists())
    with pytest.raises(ClientError) as e:
        table.put_item(Item={"user": "c", "ts": 0, "v": 2}, ConditionExpression=Attr("user").not_exists())
    assert e.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    assert table.get_item(Key={"user": "c", "ts": 0})["Item"]["v"] == 1


def test_batch_get_via_resource(resource, table):
    with table.batch_writer() as w:
        for i in range(10):
            w.put_item(Item={"user": "b", "ts": i})
    out = resource.batch_get_item(RequestItems={table.name: {"Keys": [{"user": "b", "ts": i} for i in range(0, 10, 2)]}})
    assert sorted(int(i["ts"]) for i in out["Responses"][table.name]) == [0, 2, 4, 6, 8]
