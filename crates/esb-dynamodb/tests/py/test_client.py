"""boto3 low-level client: control plane, item operations and the expression language."""
import time
from decimal import Decimal

import pytest
from botocore.exceptions import ClientError

from conftest import error_code, error_message, unique


def test_create_describe_list_delete(client):
    name = unique()
    out = client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "N"}],
        ProvisionedThroughput={"ReadCapacityUnits": 5, "WriteCapacityUnits": 5},
    )
    desc = out["TableDescription"]
    assert desc["TableName"] == name
    assert desc["KeySchema"][1] == {"AttributeName": "sk", "KeyType": "RANGE"}
    assert desc["ProvisionedThroughput"]["ReadCapacityUnits"] == 5
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 10})
    t = client.describe_table(TableName=name)["Table"]
    assert t["TableStatus"] == "ACTIVE"
    assert t["ItemCount"] == 0
    assert t["TableArn"].startswith("arn:aws:dynamodb:ap-northeast-1:")
    assert name in client.list_tables()["TableNames"]
    with pytest.raises(ClientError) as e:
        client.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    assert error_code(e) == "ResourceInUseException"
    assert client.delete_table(TableName=name)["TableDescription"]["TableStatus"] == "DELETING"
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.describe_table(TableName=name)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.delete_table(TableName=name)


def test_list_tables_paginated(client, make_table):
    names = sorted(make_table() for _ in range(5))
    seen = []
    start = None
    while True:
        kw = {"Limit": 2}
        if start:
            kw["ExclusiveStartTableName"] = start
        out = client.list_tables(**kw)
        assert len(out["TableNames"]) <= 2
        seen += out["TableNames"]
        start = out.get("LastEvaluatedTableName")
        if not start:
            break
    assert [n for n in seen if n in names] == names
    pages = list(client.get_paginator("list_tables").paginate(PaginationConfig={"PageSize": 3}))
    assert len(pages) >= 2


def test_create_table_validation(client):
    def create(**kw):
        args = dict(
            TableName=unique(),
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        args.update(kw)
        with pytest.raises(ClientError) as e:
            client.create_table(**args)
        assert error_code(e) == "ValidationException", e.value
        return error_message(e)

    assert "not defined in AttributeDefinitions" in create(KeySchema=[{"AttributeName": "x", "KeyType": "HASH"}])
    assert "does not exactly match" in create(
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "y", "AttributeType": "S"}]
    )
    assert "ReadCapacityUnits" in create(BillingMode="PROVISIONED")
    create(TableName="ab")
    create(KeySchema=[{"AttributeName": "pk", "KeyType": "RANGE"}])
    create(
        LocalSecondaryIndexes=[{
            "IndexName": "lsi", "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "pk", "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "ALL"}}]
    )


def test_put_get_delete_all_types(client, make_table):
    t = make_table()
    item = {
        "pk": {"S": "k1"},
        "s": {"S": "héllo"},
        "n": {"N": "-12.5000"},
        "big": {"N": "12345678901234567890123456789012345678"},
        "b": {"B": b"\x00\x01\xff"},
        "t": {"BOOL": True},
        "z": {"NULL": True},
        "m": {"M": {"inner": {"L": [{"S": "a"}, {"N": "1"}, {"M": {}}]}}},
        "ss": {"SS": ["a", "b"]},
        "ns": {"NS": ["1", "2.5"]},
        "bs": {"BS": [b"x", b"y"]},
        "empty_s": {"S": ""},
        "l": {"L": []},
    }
    assert "Attributes" not in client.put_item(TableName=t, Item=item)
    got = client.get_item(TableName=t, Key={"pk": {"S": "k1"}}, ConsistentRead=True)["Item"]
    assert got["n"] == {"N": "-12.5"}
    assert got["big"] == item["big"]
    assert got["b"] == item["b"]
    assert sorted(got["ss"]["SS"]) == ["a", "b"]
    assert got["m"] == item["m"]
    assert got["empty_s"] == {"S": ""}
    old = client.put_item(TableName=t, Item={"pk": {"S": "k1"}, "v": {"N": "1"}}, ReturnValues="ALL_OLD")["Attributes"]
    assert old["s"] == {"S": "héllo"}
    assert "Item" not in client.get_item(TableName=t, Key={"pk": {"S": "missing"}})
    out = client.delete_item(TableName=t, Key={"pk": {"S": "k1"}}, ReturnValues="ALL_OLD")
    assert out["Attributes"] == {"pk": {"S": "k1"}, "v": {"N": "1"}}
    assert "Item" not in client.get_item(TableName=t, Key={"pk": {"S": "k1"}})
    assert "Attributes" not in client.delete_item(TableName=t, Key={"pk": {"S": "k1"}}, ReturnValues="ALL_OLD")


def test_projection_expression(client, make_table):
    t = make_table()
    client.put_item(TableName=t, Item={
        "pk": {"S": "p"}, "a": {"M": {"b": {"N": "1"}, "c": {"N": "2"}}},
        "l": {"L": [{"S": "x"}, {"S": "y"}, {"S": "z"}]}, "name": {"S": "n"}})
    got = client.get_item(TableName=t, Key={"pk": {"S": "p"}}, ProjectionExpression="a.b, l[2], #n",
                          ExpressionAttributeNames={"#n": "name"})["Item"]
    assert got == {"a": {"M": {"b": {"N": "1"}}}, "l": {"L": [{"S": "z"}]}, "name": {"S": "n"}}


def test_condition_expressions(client, make_table):
    t = make_table()
    key = {"pk": {"S": "c"}}
    client.put_item(TableName=t, Item={**key, "v": {"N": "1"}, "tags": {"SS": ["x"]}, "s": {"S": "prefix-1"}},
                    ConditionExpression="attribute_not_exists(pk)")
    with pytest.raises(client.exceptions.ConditionalCheckFailedException) as e:
        client.put_item(TableName=t, Item={**key}, ConditionExpression="attribute_not_exists(pk)")
    assert error_message(e) == "The conditional request failed"
    with pytest.raises(ClientError) as e:
        client.put_item(TableName=t, Item={**key}, ConditionExpression="v = :two",
                        ExpressionAttributeValues={":two": {"N": "2"}},
                        ReturnValuesOnConditionCheckFailure="ALL_OLD")
    assert error_code(e) == "ConditionalCheckFailedException"
    assert e.value.response["Item"]["v"] == {"N": "1"}
    ok = [
        ("v = :one", {":one": {"N": "1"}}),
        ("v <> :two AND v < :two AND v <= :one AND v > :zero AND v >= :one", {":one": {"N": "1"}, ":two": {"N": "2"}, ":zero": {"N": "0"}}),
        ("v BETWEEN :zero AND :two", {":zero": {"N": "0"}, ":two": {"N": "2"}}),
        ("v IN (:zero, :one)", {":zero": {"N": "0"}, ":one": {"N": "1"}}),
        ("attribute_type(v, :n)", {":n": {"S": "N"}}),
        ("contains(tags, :x) AND begins_with(s, :p)", {":x": {"S": "x"}, ":p": {"S": "prefix"}}),
        ("size(s) = :eight", {":eight": {"N": "8"}}),
        ("NOT (v = :two) OR nothere = :two", {":two": {"N": "2"}}),
        ("(attribute_exists(v) AND attribute_not_exists(w))", None),
    ]
    for cond, values in ok:
        kw = {"ExpressionAttributeValues": values} if values else {}
        client.put_item(TableName=t, Item={**key, "v": {"N": "1"}, "tags": {"SS": ["x"]}, "s": {"S": "prefix-1"}},
                        ConditionExpression=cond, **kw)
    with pytest.raises(client.exceptions.ConditionalCheckFailedException):
        client.delete_item(TableName=t, Key=key, ConditionExpression="v > :one", ExpressionAttributeValues={":one": {"N": "1"}})
    client.delete_item(TableName=t, Key=key, ConditionExpression="v = :one", ExpressionAttributeValues={":one": {"N": "1"}})


def test_update_expressions(client, make_table):
    t = make_table()
    key = {"pk": {"S": "u"}}
    out = client.update_item(
        TableName=t, Key=key,
        UpdateExpression="SET #c = if_not_exists(#c, :zero) + :one, l = list_append(if_not_exists(l, :empty), :l), m = :m ADD s :s, n :five",
        ExpressionAttributeNames={"#c": "count"},
        ExpressionAttributeValues={":zero": {"N": "0"}, ":one": {"N": "1"}, ":empty": {"L": []},
                                   ":l": {"L": [{"S": "a"}]}, ":m": {"M": {"x": {"N": "1"}}},
                                   ":s": {"SS": ["p", "q"]}, ":five": {"N": "5"}},
        ReturnValues="ALL_NEW")
    a = out["Attributes"]
    assert a["count"] == {"N": "1"} and a["l"] == {"L": [{"S": "a"}]} and a["n"] == {"N": "5"}
    out = client.update_item(
        TableName=t, Key=key,
        UpdateExpression="SET m.y = :two, #c = #c - :one, l[1] = :b REMOVE m.x DELETE s :p ADD n :five",
        ExpressionAttributeNames={"#c": "count"},
        ExpressionAttributeValues={":two": {"N": "2"}, ":one": {"N": "1"}, ":b": {"S": "b"}, ":p": {"SS": ["p"]},
                                   ":five": {"N": "-5.5"}},
        ReturnValues="UPDATED_NEW")
    a = out["Attributes"]
    assert a["count"] == {"N": "0"}
    assert a["m"] == {"M": {"y": {"N": "2"}}}
    assert a["s"] == {"SS": ["q"]}
    assert a["n"] == {"N": "-0.5"}
    assert a["l"] == {"L": [{"S": "b"}]}  # only the updated element
    out = client.update_item(TableName=t, Key=key, UpdateExpression="REMOVE l[0], n", ReturnValues="UPDATED_OLD")
    assert out["Attributes"] == {"l": {"L": [{"S": "a"}]}, "n": {"N": "-0.5"}}
    item = client.get_item(TableName=t, Key=key)["Item"]
    assert item["l"] == {"L": [{"S": "b"}]} and "n" not in item
    # DELETE of the last element removes the attribute.
    client.update_item(TableName=t, Key=key, UpdateExpression="DELETE s :q", ExpressionAttributeValues={":q": {"SS": ["q"]}})
    assert "s" not in client.get_item(TableName=t, Key=key)["Item"]
    # ALL_OLD and conditions
    out = client.update_item(TableName=t, Key=key, UpdateExpression="SET v = :v", ConditionExpression="attribute_exists(pk)",
                             ExpressionAttributeValues={":v": {"S": "x"}}, ReturnValues="ALL_OLD")
    assert "v" not in out["Attributes"]
    with pytest.raises(client.exceptions.ConditionalCheckFailedException):
        client.update_item(TableName=t, Key={"pk": {"S": "nope"}}, UpdateExpression="SET v = :v",
                           ConditionExpression="attribute_exists(pk)", ExpressionAttributeValues={":v": {"S": "x"}})
    assert "Item" not in client.get_item(TableName=t, Key={"pk": {"S": "nope"}})
    # Upsert without an UpdateExpression creates the key-only item.
    client.update_item(TableName=t, Key={"pk": {"S": "bare"}})
    assert client.get_item(TableName=t, Key={"pk": {"S": "bare"}})["Item"] == {"pk": {"S": "bare"}}


def test_update_errors(client, make_table):
    t = make_table()
    key = {"pk": {"S": "e"}}
    client.put_item(TableName=t, Item={**key, "s": {"S": "str"}})

    def fails(expr, values=None, names=None):
        kw = {}
        if values:
            kw["ExpressionAttributeValues"] = values
        if names:
            kw["ExpressionAttributeNames"] = names
        with pytest.raises(ClientError) as e:
            client.update_item(TableName=t, Key=key, UpdateExpression=expr, **kw)
        assert error_code(e) == "ValidationException", e.value
        return error_message(e)

    assert "part of the key" in fails("SET pk = :v", {":v": {"S": "x"}})
    assert "incorrect data type" in fails("SET s = s + :one", {":one": {"N": "1"}})
    assert "does not exist" in fails("SET x = nothere + :one", {":one": {"N": "1"}})
    assert "invalid for update" in fails("SET nope.deeper = :one", {":one": {"N": "1"}})
    assert "overlap" in fails("SET a = :one, a.b = :one", {":one": {"N": "1"}})
    assert "Syntax error" in fails("SET = :one", {":one": {"N": "1"}})
    assert "unused" in fails("SET a = :one", {":one": {"N": "1"}, ":two": {"N": "2"}})
    assert "not defined" in fails("SET a = :nope", {":one": {"N": "1"}})
    assert "operator: ADD" in fails("ADD s :v", {":v": {"S": "x"}})
    assert client.get_item(TableName=t, Key=key)["Item"] == {**key, "s": {"S": "str"}}


def test_numbers_precision_and_order(client, make_table):
    t = make_table(range=("sk", "N"))
    vals = ["-1e10", "-3.5", "-0.001", "0", "0.0001", "1", "1.5", "10", "99999999999999999999999999999999999999"]
    for v in vals:
        client.put_item(TableName=t, Item={"pk": {"S": "n"}, "sk": {"N": v}})
    items = client.query(TableName=t, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "n"}})["Items"]
    got = [Decimal(i["sk"]["N"]) for i in items]
    assert got == sorted(Decimal(v) for v in vals)
    key = {"pk": {"S": "n"}, "sk": {"N": "0"}}
    out = client.update_item(TableName=t, Key=key, UpdateExpression="ADD c :a",
                             ExpressionAttributeValues={":a": {"N": "0.1"}}, ReturnValues="UPDATED_NEW")
    out = client.update_item(TableName=t, Key=key, UpdateExpression="ADD c :a",
                             ExpressionAttributeValues={":a": {"N": "0.2"}}, ReturnValues="UPDATED_NEW")
    assert out["Attributes"]["c"] == {"N": "0.3"}
    with pytest.raises(ClientError) as e:
        client.put_item(TableName=t, Item={"pk": {"S": "n"}, "sk": {"N": "1"}, "x": {"N": "1" * 39}})
    assert error_code(e) == "ValidationException"


def test_return_consumed_capacity(client, make_table):
    t = make_table()
    out = client.put_item(TableName=t, Item={"pk": {"S": "c"}}, ReturnConsumedCapacity="TOTAL")
    assert out["ConsumedCapacity"]["TableName"] == t
    out = client.get_item(TableName=t, Key={"pk": {"S": "c"}}, ReturnConsumedCapacity="TOTAL")
    assert out["Item"] == {"pk": {"S": "c"}} and out["ConsumedCapacity"]["CapacityUnits"] > 0
    out = client.query(TableName=t, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "c"}},
                       ReturnConsumedCapacity="INDEXES")
    assert out["Count"] == 1 and out["ConsumedCapacity"]["TableName"] == t
    out = client.batch_get_item(RequestItems={t: {"Keys": [{"pk": {"S": "c"}}]}}, ReturnConsumedCapacity="TOTAL")
    assert out["ConsumedCapacity"][0]["TableName"] == t
    assert "ConsumedCapacity" not in client.get_item(TableName=t, Key={"pk": {"S": "c"}})
