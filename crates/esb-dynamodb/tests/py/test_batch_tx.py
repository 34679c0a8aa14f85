"""BatchGetItem / BatchWriteItem and TransactWriteItems / TransactGetItems."""
import pytest
from botocore.exceptions import ClientError

from conftest import error_code, error_message


def test_batch_write_and_get(client, make_table):
    t1 = make_table()
    t2 = make_table(hash=("id", "N"))
    client.batch_write_item(RequestItems={
        t1: [{"PutRequest": {"Item": {"pk": {"S": f"k{i}"}, "v": {"N": str(i)}}}} for i in range(20)],
        t2: [{"PutRequest": {"Item": {"id": {"N": str(i)}}}} for i in range(5)],
    })
    out = client.batch_write_item(RequestItems={
        t1: [{"DeleteRequest": {"Key": {"pk": {"S": "k0"}}}}, {"PutRequest": {"Item": {"pk": {"S": "k1"}, "v": {"N": "100"}}}}],
    })
    assert out["UnprocessedItems"] == {}
    out = client.batch_get_item(RequestItems={
        t1: {"Keys": [{"pk": {"S": f"k{i}"}} for i in range(3)], "ProjectionExpression": "v"},
        t2: {"Keys": [{"id": {"N": "4"}}, {"id": {"N": "9"}}], "ConsistentRead": True},
    })
    assert sorted(i["v"]["N"] for i in out["Responses"][t1]) == ["100", "2"]
    assert out["Responses"][t2] == [{"id": {"N": "4"}}]
    assert out["UnprocessedKeys"] == {}


def test_batch_limits(client, make_table):
    t = make_table()
    with pytest.raises(ClientError) as e:
        client.batch_write_item(RequestItems={t: [{"PutRequest": {"Item": {"pk": {"S": f"k{i}"}}}} for i in range(26)]})
    assert error_code(e) == "ValidationException"
    with pytest.raises(ClientError) as e:
        client.batch_write_item(RequestItems={t: [{"PutRequest": {"Item": {"pk": {"S": "same"}}}}] * 2})
    assert "duplicates" in error_message(e)
    with pytest.raises(ClientError) as e:
        client.batch_get_item(RequestItems={t: {"Keys": [{"pk": {"S": f"k{i}"}} for i in range(101)]}})
    assert error_code(e) == "ValidationException"
    with pytest.raises(ClientError) as e:
        client.batch_get_item(RequestItems={t: {"Keys": [{"pk": {"S": "a"}}, {"pk": {"S": "a"}}]}})
    assert "duplicates" in error_message(e)
    # A bad item in a batch writes nothing.
    with pytest.raises(ClientError):
        client.batch_write_item(RequestItems={t: [
            {"PutRequest": {"Item": {"pk": {"S": "good"}}}},
            {"PutRequest": {"Item": {"nokey": {"S": "bad"}}}}]})
    assert "Item" not in client.get_item(TableName=t, Key={"pk": {"S": "good"}})
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.batch_write_item(RequestItems={"no-such-table": [{"PutRequest": {"Item": {"pk": {"S": "x"}}}}]})


def test_batch_get_unprocessed_keys_over_16mb(client, make_table):
    t = make_table()
    blob = "y" * 390_000
    for i in range(0, 50, 10):
        client.batch_write_item(RequestItems={t: [{"PutRequest": {"Item": {"pk": {"S": f"k{j}"}, "b": {"S": blob}}}} for j in range(i, i + 10)]})
    keys = [{"pk": {"S": f"k{j}"}} for j in range(50)]
    out = client.batch_get_item(RequestItems={t: {"Keys": keys}})
    got = len(out["Responses"][t])
    left = out["UnprocessedKeys"].get(t, {}).get("Keys", [])
    assert got < 50 and got + len(left) == 50
    out2 = client.batch_get_item(RequestItems=out["UnprocessedKeys"])
    assert len(out2["Responses"][t]) == len(left)


def test_transact_write_commits_atomically(client, make_table):
    t = make_table()
    client.put_item(TableName=t, Item={"pk": {"S": "acct1"}, "bal": {"N": "100"}})
    client.put_item(TableName=t, Item={"pk": {"S": "acct2"}, "bal": {"N": "0"}})
    client.put_item(TableName=t, Item={"pk": {"S": "gone"}})
    client.transact_write_items(TransactItems=[
        {"Update": {"TableName": t, "Key": {"pk": {"S": "acct1"}}, "UpdateExpression": "SET bal = bal - :a",
                    "ConditionExpression": "bal >= :a", "ExpressionAttributeValues": {":a": {"N": "30"}}}},
        {"Update": {"TableName": t, "Key": {"pk": {"S": "acct2"}}, "UpdateExpression": "SET bal = bal + :a",
                    "ExpressionAttributeValues": {":a": {"N": "30"}}}},
        {"Put": {"TableName": t, "Item": {"pk": {"S": "log1"}, "amount": {"N": "30"}},
                 "ConditionExpression": "attribute_not_exists(pk)"}},
        {"Delete": {"TableName": t, "Key": {"pk": {"S": "gone"}}}},
    ])
    out = client.transact_get_items(TransactItems=[
        {"Get": {"TableName": t, "Key": {"pk": {"S": "acct1"}}}},
        {"Get": {"TableName": t, "Key": {"pk": {"S": "acct2"}}, "ProjectionExpression": "bal"}},
        {"Get": {"TableName": t, "Key": {"pk": {"S": "gone"}}}},
    ])
    r = out["Responses"]
    assert r[0]["Item"]["bal"] == {"N": "70"} and r[1]["Item"] == {"bal": {"N": "30"}} and "Item" not in r[2]


def test_failed_transaction_writes_nothing(client, make_table):
    t = make_table()
    client.put_item(TableName=t, Item={"pk": {"S": "a"}, "v": {"N": "1"}})
    with pytest.raises(ClientError) as e:
        client.transact_write_items(TransactItems=[
            {"Put": {"TableName": t, "Item": {"pk": {"S": "new"}, "v": {"N": "1"}}}},
            {"ConditionCheck": {"TableName": t, "Key": {"pk": {"S": "a"}}, "ConditionExpression": "v = :nine",
                                "ExpressionAttributeValues": {":nine": {"N": "9"}}, "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
            {"Delete": {"TableName": t, "Key": {"pk": {"S": "b"}}}},
        ])
    assert error_code(e) == "TransactionCanceledException"
    reasons = e.value.response["CancellationReasons"]
    assert [r["Code"] for r in reasons] == ["None", "ConditionalCheckFailed", "None"]
    assert reasons[1]["Item"] == {"pk": {"S": "a"}, "v": {"N": "1"}}
    assert "ConditionalCheckFailed" in error_message(e)
    assert "Item" not in client.get_item(TableName=t, Key={"pk": {"S": "new"}})
    assert client.get_item(TableName=t, Key={"pk": {"S": "a"}})["Item"]["v"] == {"N": "1"}
    # An update that fails at run time cancels the transaction too.
    with pytest.raises(ClientError) as e:
        client.transact_write_items(TransactItems=[
            {"Put": {"TableName": t, "Item": {"pk": {"S": "new2"}}}},
            {"Update": {"TableName": t, "Key": {"pk": {"S": "a"}}, "UpdateExpression": "SET v = v + :s",
                        "ExpressionAttributeValues": {":s": {"S": "str"}}}},
        ])
    assert error_code(e) == "TransactionCanceledException"
    assert "Item" not in client.get_item(TableName=t, Key={"pk": {"S": "new2"}})


def test_transaction_validation(client, make_table):
    t = make_table()
    with pytest.raises(ClientError) as e:
        client.transact_write_items(TransactItems=[
            {"Put": {"TableName": t, "Item": {"pk": {"S": "x"}}}},
            {"Delete": {"TableName": t, "Key": {"pk": {"S": "x"}}}},
        ])
    assert error_code(e) == "ValidationException" and "multiple operations on one item" in error_message(e)
    with pytest.raises(ClientError) as e:
        client.transact_write_items(TransactItems=[{"Put": {"TableName": t, "Item": {"pk": {"S": f"k{i}"}}}} for i in range(101)])
    assert error_code(e) == "ValidationException"
    items = [{"Put": {"TableName": t, "Item": {"pk": {"S": f"k{i}"}}}} for i in range(100)]
    client.transact_write_items(TransactItems=items)
    assert client.scan(TableName=t, Select="COUNT")["Count"] == 100
