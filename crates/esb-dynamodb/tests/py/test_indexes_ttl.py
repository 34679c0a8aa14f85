"""Global and local secondary indexes (at creation and added by UpdateTable, backfilled),
and TTL expiry."""
import time

import pytest
from botocore.exceptions import ClientError

from conftest import error_code, error_message


def put_many(client, t, items):
    for i in range(0, len(items), 25):
        client.batch_write_item(RequestItems={t: [{"PutRequest": {"Item": it}} for it in items[i:i + 25]]})


def test_gsi_and_lsi_at_creation(client, make_table):
    t = make_table(
        range=("sk", "S"),
        attrs=[("email", "S"), ("score", "N"), ("created", "N")],
        GlobalSecondaryIndexes=[
            {"IndexName": "by-email", "KeySchema": [{"AttributeName": "email", "KeyType": "HASH"}],
             "Projection": {"ProjectionType": "KEYS_ONLY"}},
            {"IndexName": "by-score", "KeySchema": [{"AttributeName": "email", "KeyType": "HASH"},
                                                    {"AttributeName": "score", "KeyType": "RANGE"}],
             "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["note"]}},
        ],
        LocalSecondaryIndexes=[
            {"IndexName": "by-created", "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"},
                                                      {"AttributeName": "created", "KeyType": "RANGE"}],
             "Projection": {"ProjectionType": "KEYS_ONLY"}},
        ],
    )
    desc = client.describe_table(TableName=t)["Table"]
    assert {g["IndexName"] for g in desc["GlobalSecondaryIndexes"]} == {"by-email", "by-score"}
    assert desc["LocalSecondaryIndexes"][0]["IndexName"] == "by-created"
    items = [{"pk": {"S": "p"}, "sk": {"S": f"s{i:02d}"}, "email": {"S": f"u{i % 3}@x"}, "score": {"N": str(50 - i)},
              "created": {"N": str(1000 + (i * 7) % 20)}, "note": {"S": f"n{i}"}, "other": {"S": "o"}} for i in range(20)]
    items.append({"pk": {"S": "p"}, "sk": {"S": "no-email"}, "created": {"N": "1"}})  # sparse in the GSIs
    put_many(client, t, items)
    out = client.query(TableName=t, IndexName="by-email", KeyConditionExpression="email = :e",
                       ExpressionAttributeValues={":e": {"S": "u1@x"}})
    assert out["Count"] == 7 and all(set(i) == {"pk", "sk", "email"} for i in out["Items"])
    out = client.query(TableName=t, IndexName="by-score", KeyConditionExpression="email = :e AND score > :s",
                       ExpressionAttributeValues={":e": {"S": "u0@x"}, ":s": {"N": "40"}}, ScanIndexForward=False)
    assert [i["score"]["N"] for i in out["Items"]] == ["50", "47", "44", "41"]
    assert set(out["Items"][0]) == {"pk", "sk", "email", "score", "note"}
    out = client.query(TableName=t, IndexName="by-created", KeyConditionExpression="pk = :p AND created < :c",
                       ExpressionAttributeValues={":p": {"S": "p"}, ":c": {"N": "1003"}})
    assert [i["created"]["N"] for i in out["Items"]] == ["1", "1000", "1001", "1002"]
    # LSI with ALL_ATTRIBUTES fetches the full item.
    out = client.query(TableName=t, IndexName="by-created", KeyConditionExpression="pk = :p AND created = :c",
                       ExpressionAttributeValues={":p": {"S": "p"}, ":c": {"N": "1000"}}, Select="ALL_ATTRIBUTES")
    assert out["Items"][0]["other"] == {"S": "o"}
    with pytest.raises(ClientError) as e:
        client.query(TableName=t, IndexName="by-email", KeyConditionExpression="email = :e",
                     ExpressionAttributeValues={":e": {"S": "u1@x"}}, Select="ALL_ATTRIBUTES")
    assert error_code(e) == "ValidationException"
    # Index pagination
    seen = []
    start = None
    while True:
        kw = {"ExclusiveStartKey": start} if start else {}
        out = client.query(TableName=t, IndexName="by-email", KeyConditionExpression="email = :e",
                           ExpressionAttributeValues={":e": {"S": "u0@x"}}, Limit=2, **kw)
        seen += [i["sk"]["S"] for i in out["Items"]]
        start = out.get("LastEvaluatedKey")
        if not start:
            break
        assert set(start) == {"pk", "sk", "email"}
    assert len(seen) == 7 and len(set(seen)) == 7
    # Updating and deleting items maintains the indexes.
    client.update_item(TableName=t, Key={"pk": {"S": "p"}, "sk": {"S": "s01"}}, UpdateExpression="SET email = :e",
                       ExpressionAttributeValues={":e": {"S": "moved@x"}})
    client.delete_item(TableName=t, Key={"pk": {"S": "p"}, "sk": {"S": "s04"}})
    assert client.query(TableName=t, IndexName="by-email", KeyConditionExpression="email = :e",
                        ExpressionAttributeValues={":e": {"S": "u1@x"}})["Count"] == 5
    assert client.query(TableName=t, IndexName="by-email", KeyConditionExpression="email = :e",
                        ExpressionAttributeValues={":e": {"S": "moved@x"}})["Count"] == 1
    assert client.scan(TableName=t, IndexName="by-email")["Count"] == 19
    # Index key type mismatch is refused.
    with pytest.raises(ClientError) as e:
        client.put_item(TableName=t, Item={"pk": {"S": "p"}, "sk": {"S": "bad"}, "score": {"S": "high"}})
    assert error_code(e) == "ValidationException"


def test_gsi_added_by_update_table_is_backfilled(client, make_table):
    t = make_table()
    put_many(client, t, [{"pk": {"S": f"k{i}"}, "city": {"S": ["tokyo", "osaka"][i % 2]}, "n": {"N": str(i)}} for i in range(30)])
    out = client.update_table(
        TableName=t,
        AttributeDefinitions=[{"AttributeName": "city", "AttributeType": "S"}, {"AttributeName": "n", "AttributeType": "N"}],
        GlobalSecondaryIndexUpdates=[{"Create": {
            "IndexName": "by-city", "KeySchema": [{"AttributeName": "city", "KeyType": "HASH"}, {"AttributeName": "n", "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "ALL"}}}],
    )
    assert out["TableDescription"]["GlobalSecondaryIndexes"][0]["IndexName"] == "by-city"
    deadline = time.time() + 30
    while True:
        idx = client.describe_table(TableName=t)["Table"]["GlobalSecondaryIndexes"][0]
        if idx["IndexStatus"] == "ACTIVE" or time.time() > deadline:
            break
        time.sleep(0.5)
    assert idx["IndexStatus"] == "ACTIVE"
    out = client.query(TableName=t, IndexName="by-city", KeyConditionExpression="city = :c AND n >= :n",
                       ExpressionAttributeValues={":c": {"S": "osaka"}, ":n": {"N": "20"}})
    assert [i["n"]["N"] for i in out["Items"]] == [str(i) for i in range(21, 30, 2)]
    client.put_item(TableName=t, Item={"pk": {"S": "new"}, "city": {"S": "osaka"}, "n": {"N": "99"}})
    out = client.query(TableName=t, IndexName="by-city", KeyConditionExpression="city = :c AND n > :n",
                       ExpressionAttributeValues={":c": {"S": "osaka"}, ":n": {"N": "90"}})
    assert out["Items"][0]["pk"] == {"S": "new"}
    client.update_table(TableName=t, GlobalSecondaryIndexUpdates=[{"Delete": {"IndexName": "by-city"}}])
    assert "GlobalSecondaryIndexes" not in client.describe_table(TableName=t)["Table"]
    with pytest.raises(ClientError) as e:
        client.query(TableName=t, IndexName="by-city", KeyConditionExpression="city = :c",
                     ExpressionAttributeValues={":c": {"S": "osaka"}})
    assert error_code(e) == "ValidationException"


def test_ttl_expiry(client, make_table):
    t = make_table()
    assert client.describe_time_to_live(TableName=t)["TimeToLiveDescription"]["TimeToLiveStatus"] == "DISABLED"
    now = int(time.time())
    client.put_item(TableName=t, Item={"pk": {"S": "old"}, "exp": {"N": str(now - 10)}})
    out = client.update_time_to_live(TableName=t, TimeToLiveSpecification={"Enabled": True, "AttributeName": "exp"})
    assert out["TimeToLiveSpecification"] == {"Enabled": True, "AttributeName": "exp"}
    d = client.describe_time_to_live(TableName=t)["TimeToLiveDescription"]
    assert d["TimeToLiveStatus"] == "ENABLED" and d["AttributeName"] == "exp"
    with pytest.raises(ClientError) as e:
        client.update_time_to_live(TableName=t, TimeToLiveSpecification={"Enabled": True, "AttributeName": "exp"})
    assert error_code(e) == "ValidationException"
    client.put_item(TableName=t, Item={"pk": {"S": "soon"}, "exp": {"N": str(now + 2)}})
    client.put_item(TableName=t, Item={"pk": {"S": "later"}, "exp": {"N": str(now + 3600)}})
    client.put_item(TableName=t, Item={"pk": {"S": "never"}, "exp": {"S": "not a number"}})
    deadline = time.time() + 60
    while time.time() < deadline:
        keys = {i["pk"]["S"] for i in client.scan(TableName=t)["Items"]}
        if keys == {"later", "never"}:
            break
        time.sleep(0.5)
    assert keys == {"later", "never"}
    client.update_time_to_live(TableName=t, TimeToLiveSpecification={"Enabled": False, "AttributeName": "exp"})
    assert client.describe_time_to_live(TableName=t)["TimeToLiveDescription"]["TimeToLiveStatus"] == "DISABLED"
