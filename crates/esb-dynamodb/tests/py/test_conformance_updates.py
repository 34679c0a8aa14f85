"""Conformance (issue 19): UpdateItem, the legacy parameters and TransactWriteItems as
DynamoDB answers them, through boto3 and the AWS CLI."""
import json
import os
import subprocess
import sys

import pytest
from botocore.exceptions import ClientError

from conftest import ENDPOINT, error_code, error_message


def fails(call, **kw):
    with pytest.raises(ClientError) as e:
        call(**kw)
    assert error_code(e) == "ValidationException", error_message(e)
    return error_message(e)


def test_add_delete_on_wrong_types(client, make_table):
    """ADD to a non-number/non-set attribute, DELETE from a non-set or a set of another type:
    'An operand in the update expression has an incorrect data type'; ADD/DELETE with a
    value of a type they never take is refused while parsing. Nothing is written."""
    t = make_table()
    k = {"pk": {"S": "a"}}
    client.put_item(TableName=t, Item={**k, "s": {"S": "x"}, "ns": {"NS": ["1"]}, "n": {"N": "1"}})
    bad = "An operand in the update expression has an incorrect data type"
    assert fails(client.update_item, TableName=t, Key=k, UpdateExpression="ADD s :n",
                 ExpressionAttributeValues={":n": {"N": "1"}}) == bad
    assert fails(client.update_item, TableName=t, Key=k, UpdateExpression="ADD ns :ss",
                 ExpressionAttributeValues={":ss": {"SS": ["a"]}}) == bad
    assert fails(client.update_item, TableName=t, Key=k, UpdateExpression="DELETE n :ns",
                 ExpressionAttributeValues={":ns": {"NS": ["1"]}}) == bad
    assert fails(client.update_item, TableName=t, Key=k, UpdateExpression="DELETE ns :ss",
                 ExpressionAttributeValues={":ss": {"SS": ["1"]}}) == bad
    assert fails(client.update_item, TableName=t, Key=k, UpdateExpression="ADD l :l",
                 ExpressionAttributeValues={":l": {"L": []}}) == (
        "Invalid UpdateExpression: Incorrect operand type for operator or function; operator: ADD, operand type: LIST")
    assert fails(client.update_item, TableName=t, Key=k, UpdateExpression="DELETE ns :n",
                 ExpressionAttributeValues={":n": {"N": "1"}}) == (
        "Invalid UpdateExpression: Incorrect operand type for operator or function; operator: DELETE, operand type: NUMBER")
    assert client.get_item(TableName=t, Key=k)["Item"] == {**k, "s": {"S": "x"}, "ns": {"NS": ["1"]}, "n": {"N": "1"}}


def test_conditions_on_missing_item(client, make_table):
    """A condition is evaluated against an empty item when the item does not exist: an
    attribute_exists or comparison fails (nothing created), attribute_not_exists passes."""
    t = make_table()
    k = {"pk": {"S": "ghost"}}
    for cond, vals in [("attribute_exists(pk)", None), ("v = :v", {":v": {"N": "1"}}), ("size(v) > :v", {":v": {"N": "0"}})]:
        kw = {"ExpressionAttributeValues": vals} if vals else {}
        with pytest.raises(client.exceptions.ConditionalCheckFailedException) as e:
            client.update_item(TableName=t, Key=k, UpdateExpression="SET w = :w", ConditionExpression=cond,
                               ReturnValuesOnConditionCheckFailure="ALL_OLD",
                               **{**kw, "ExpressionAttributeValues": {**(vals or {}), ":w": {"N": "2"}}})
        assert "Item" not in e.value.response
    assert "Item" not in client.get_item(TableName=t, Key=k)
    # <> on a missing attribute is true.
    client.update_item(TableName=t, Key=k, UpdateExpression="SET w = :w", ConditionExpression="v <> :v",
                       ExpressionAttributeValues={":v": {"N": "1"}, ":w": {"N": "2"}})
    client.delete_item(TableName=t, Key=k)
    client.update_item(TableName=t, Key=k, UpdateExpression="SET w = :w", ConditionExpression="attribute_not_exists(pk)",
                       ExpressionAttributeValues={":w": {"N": "2"}})
    assert client.get_item(TableName=t, Key=k)["Item"] == {**k, "w": {"N": "2"}}


def test_return_values_with_nested_paths(client, make_table):
    """UPDATED_OLD / UPDATED_NEW return only the updated attributes, nested paths as the
    part of the top-level attribute they name; ALL_NEW the whole item; REMOVEd attributes
    appear in UPDATED_OLD only."""
    t = make_table()
    k = {"pk": {"S": "a"}}
    client.put_item(TableName=t, Item={**k, "m": {"M": {"x": {"N": "1"}, "y": {"N": "2"}, "in": {"M": {"z": {"S": "z"}}}}},
                                       "l": {"L": [{"S": "a"}, {"S": "b"}, {"S": "c"}]}, "gone": {"S": "g"}, "keep": {"S": "k"}})
    upd = dict(TableName=t, Key=k, UpdateExpression="SET m.x = :v, m.#in.z = :v, l[1] = :v REMOVE gone",
               ExpressionAttributeNames={"#in": "in"}, ExpressionAttributeValues={":v": {"S": "new"}})
    old = client.update_item(ReturnValues="UPDATED_OLD", **upd)["Attributes"]
    assert old == {"m": {"M": {"x": {"N": "1"}, "in": {"M": {"z": {"S": "z"}}}}}, "l": {"L": [{"S": "b"}]},
                   "gone": {"S": "g"}}
    client.put_item(TableName=t, Item={**k, "m": {"M": {"x": {"N": "1"}, "y": {"N": "2"}, "in": {"M": {"z": {"S": "z"}}}}},
                                       "l": {"L": [{"S": "a"}, {"S": "b"}, {"S": "c"}]}, "gone": {"S": "g"}, "keep": {"S": "k"}})
    new = client.update_item(ReturnValues="UPDATED_NEW", **upd)["Attributes"]
    assert new == {"m": {"M": {"x": {"S": "new"}, "in": {"M": {"z": {"S": "new"}}}}}, "l": {"L": [{"S": "new"}]}}
    everything = client.update_item(TableName=t, Key=k, UpdateExpression="SET keep = :v",
                                    ExpressionAttributeValues={":v": {"S": "k2"}}, ReturnValues="ALL_NEW")["Attributes"]
    assert everything == {**k, "m": {"M": {"x": {"S": "new"}, "y": {"N": "2"}, "in": {"M": {"z": {"S": "new"}}}}},
                          "l": {"L": [{"S": "a"}, {"S": "new"}, {"S": "c"}]}, "keep": {"S": "k2"}}


def test_expected_every_operator(client, make_table):
    """Expected with each ComparisonOperator on a stored item, and ConditionalOperator AND/OR."""
    t = make_table()
    k = {"pk": {"S": "a"}}
    client.put_item(TableName=t, Item={**k, "n": {"N": "5"}, "s": {"S": "hello"}, "ss": {"SS": ["x", "y"]}})
    N = lambda v: {"N": v}
    S = lambda v: {"S": v}
    cases = [
        ("n", "EQ", [N("5")], True), ("n", "EQ", [N("6")], False),
        ("n", "NE", [N("6")], True), ("missing", "NE", [N("6")], True),
        ("n", "LE", [N("5")], True), ("n", "LT", [N("5")], False),
        ("n", "GE", [N("5")], True), ("n", "GT", [N("4")], True),
        ("n", "NOT_NULL", [], True), ("missing", "NULL", [], True), ("n", "NULL", [], False),
        ("s", "CONTAINS", [S("ell")], True), ("ss", "CONTAINS", [S("x")], True),
        ("s", "NOT_CONTAINS", [S("zz")], True), ("missing", "NOT_CONTAINS", [S("zz")], False),
        ("s", "BEGINS_WITH", [S("he")], True), ("s", "BEGINS_WITH", [S("lo")], False),
        ("n", "IN", [N("1"), N("5")], True), ("n", "IN", [N("1")], False),
        ("n", "BETWEEN", [N("1"), N("5")], True), ("n", "BETWEEN", [N("6"), N("9")], False),
        ("n", "GT", [S("a")], False),
    ]
    for attr, op, vals, ok in cases:
        call = lambda: client.put_item(TableName=t, Item={**k, "n": N("5"), "s": S("hello"), "ss": {"SS": ["x", "y"]}},
                                       Expected={attr: {"ComparisonOperator": op, "AttributeValueList": vals}})
        if ok:
            call()
        else:
            with pytest.raises(client.exceptions.ConditionalCheckFailedException):
                call()
    two = {"n": {"ComparisonOperator": "EQ", "AttributeValueList": [N("0")]},
           "s": {"ComparisonOperator": "EQ", "AttributeValueList": [S("hello")]}}
    client.put_item(TableName=t, Item={**k, "n": N("5"), "s": S("hello")}, Expected=two, ConditionalOperator="OR")
    with pytest.raises(client.exceptions.ConditionalCheckFailedException):
        client.put_item(TableName=t, Item={**k, "n": N("5"), "s": S("hello")}, Expected=two, ConditionalOperator="AND")
    # Exists / Value forms.
    client.put_item(TableName=t, Item={**k, "n": N("5")}, Expected={"n": {"Value": N("5")}})
    client.put_item(TableName=t, Item={**k, "n": N("5")}, Expected={"n": {"Exists": True, "Value": N("5")}})
    client.put_item(TableName=t, Item={**k, "n": N("5")}, Expected={"zz": {"Exists": False}})
    client.put_item(TableName=t, Item={**k, "n": N("5")}, Expected={"n": {"ComparisonOperator": "EQ", "Value": N("5")}})


def test_expected_argument_checks(client, make_table):
    """Expected: argument counts per operator, same-typed values, operator/type pairs, BETWEEN
    bounds, and the Exists/Value/ComparisonOperator/AttributeValueList combinations."""
    t = make_table()
    put = lambda exp: fails(client.put_item, TableName=t, Item={"pk": {"S": "a"}}, Expected=exp)
    pre = "One or more parameter values were invalid: "
    for op, vals in [("EQ", []), ("NE", [{"N": "1"}, {"N": "2"}]), ("NULL", [{"N": "1"}]), ("NOT_NULL", [{"N": "1"}]),
                     ("BETWEEN", [{"N": "1"}]), ("IN", []), ("BEGINS_WITH", []), ("CONTAINS", [{"S": "a"}, {"S": "b"}])]:
        assert put({"a": {"ComparisonOperator": op, "AttributeValueList": vals}}) == (
            pre + f"Invalid number of argument(s) for the {op} ComparisonOperator"), op
    assert put({"a": {"ComparisonOperator": "IN", "AttributeValueList": [{"N": "1"}, {"S": "1"}]}}) == (
        pre + "AttributeValues inside AttributeValueList must be of same type")
    assert put({"a": {"ComparisonOperator": "LT", "AttributeValueList": [{"SS": ["a"]}]}}) == (
        pre + "ComparisonOperator LT is not valid for SS AttributeValue type")
    assert put({"a": {"ComparisonOperator": "BEGINS_WITH", "AttributeValueList": [{"N": "1"}]}}) == (
        pre + "ComparisonOperator BEGINS_WITH is not valid for N AttributeValue type")
    assert put({"a": {"ComparisonOperator": "BETWEEN", "AttributeValueList": [{"N": "2"}, {"N": "1"}]}}) == (
        "The BETWEEN condition was provided a range where the lower bound is greater than the upper bound")
    assert put({"a": {"Exists": True}}) == pre + "Value must be provided when Exists is true for Attribute: a"
    assert put({"a": {}}) == pre + "Value must be provided when Exists is null for Attribute: a"
    assert put({"a": {"Exists": False, "Value": {"S": "x"}}}) == pre + "Value cannot be used when Exists is false for Attribute: a"
    assert put({"a": {"Exists": True, "ComparisonOperator": "NULL"}}) == (
        pre + "Exists and ComparisonOperator cannot be used together for Attribute: a")
    assert put({"a": {"Value": {"S": "x"}, "AttributeValueList": [{"S": "x"}], "ComparisonOperator": "EQ"}}) == (
        pre + "Value and AttributeValueList cannot be used together for Attribute: a")
    assert put({"a": {"AttributeValueList": [{"S": "x"}]}}) == (
        pre + "AttributeValueList can only be used with a ComparisonOperator for Attribute: a")
    assert put({"a": {"ComparisonOperator": "GT"}}) == (
        pre + "Value or AttributeValueList must be used with ComparisonOperator: GT for Attribute: a")
    assert "Item" not in client.get_item(TableName=t, Key={"pk": {"S": "a"}})


def test_key_conditions_operators(client, make_table):
    """KeyConditions: the sort key takes EQ LE LT GE GT BEGINS_WITH BETWEEN, the partition key
    only EQ; other operators are not indexable; argument counts are checked."""
    t = make_table(range=("sk", "S"))
    for s in ["a1", "a2", "b1", "b2", "c1"]:
        client.put_item(TableName=t, Item={"pk": {"S": "p"}, "sk": {"S": s}})
    eq = {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "p"}]}

    def q(op, *vals):
        out = client.query(TableName=t, KeyConditions={"pk": eq, "sk": {
            "ComparisonOperator": op, "AttributeValueList": [{"S": v} for v in vals]}})
        return [i["sk"]["S"] for i in out["Items"]]

    assert q("EQ", "b1") == ["b1"]
    assert q("LT", "b1") == ["a1", "a2"]
    assert q("LE", "b1") == ["a1", "a2", "b1"]
    assert q("GT", "b1") == ["b2", "c1"]
    assert q("GE", "b2") == ["b2", "c1"]
    assert q("BEGINS_WITH", "b") == ["b1", "b2"]
    assert q("BETWEEN", "a2", "b2") == ["a2", "b1", "b2"]
    for op in ["NE", "IN", "CONTAINS", "NOT_CONTAINS"]:
        assert fails(client.query, TableName=t, KeyConditions={"pk": eq, "sk": {
            "ComparisonOperator": op, "AttributeValueList": [{"S": "a"}]}}) == (
            "Attempted conditional constraint is not an indexable operation"), op
    assert fails(client.query, TableName=t, KeyConditions={"pk": eq, "sk": {"ComparisonOperator": "NULL"}}) == (
        "Attempted conditional constraint is not an indexable operation")
    assert fails(client.query, TableName=t, KeyConditions={"pk": {
        "ComparisonOperator": "BEGINS_WITH", "AttributeValueList": [{"S": "p"}]}}) == "Query key condition not supported"
    assert fails(client.query, TableName=t, KeyConditions={"pk": eq, "sk": {
        "ComparisonOperator": "BETWEEN", "AttributeValueList": [{"S": "a"}]}}) == (
        "One or more parameter values were invalid: Invalid number of argument(s) for the BETWEEN ComparisonOperator")
    assert fails(client.query, TableName=t, KeyConditions={"sk": {
        "ComparisonOperator": "EQ", "AttributeValueList": [{"S": "a1"}]}}) == "Query condition missed key schema element: pk"
    assert fails(client.query, TableName=t, KeyConditions={"pk": eq, "sk": eq, "x": eq}) == (
        "Conditions can be of length 1 or 2 only")


def test_query_and_scan_filter_across_types(client, make_table):
    """QueryFilter/ScanFilter compare by type: numbers by value, strings and binary by bytes,
    sets by membership (CONTAINS); a value of another type never matches."""
    t = make_table(range=("sk", "N"))
    rows = [{"v": {"N": "10"}}, {"v": {"N": "9"}}, {"v": {"S": "10"}}, {"v": {"B": b"\x01\x02"}},
            {"v": {"SS": ["10", "x"]}}, {"v": {"NS": ["10"]}}, {"v": {"BOOL": True}}, {}]
    for i, r in enumerate(rows):
        client.put_item(TableName=t, Item={"pk": {"S": "p"}, "sk": {"N": str(i)}, **r})
    eq = {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "p"}]}

    def qf(op, *vals):
        out = client.query(TableName=t, KeyConditions={"pk": eq},
                           QueryFilter={"v": {"ComparisonOperator": op, "AttributeValueList": list(vals)}})
        return sorted(int(i["sk"]["N"]) for i in out["Items"])

    assert qf("GT", {"N": "9.5"}) == [0]
    assert qf("GE", {"S": "1"}) == [2]
    assert qf("LT", {"B": b"\x02"}) == [3]
    assert qf("CONTAINS", {"S": "10"}) == [2, 4]
    assert qf("CONTAINS", {"N": "10"}) == [5]
    assert qf("NOT_NULL") == [0, 1, 2, 3, 4, 5, 6]
    assert qf("NULL") == [7]
    assert qf("NE", {"N": "10"}) == [1, 2, 3, 4, 5, 6, 7]
    assert qf("IN", {"N": "9"}, {"N": "10"}) == [0, 1]
    out = client.scan(TableName=t, ScanFilter={"v": {"ComparisonOperator": "BETWEEN",
                                                     "AttributeValueList": [{"N": "9"}, {"N": "10"}]}})
    assert sorted(int(i["sk"]["N"]) for i in out["Items"]) == [0, 1]


def test_transact_idempotent_token(client, make_table):
    """TransactWriteItems with a ClientRequestToken: the same request again within 10 minutes
    answers the same without writing again; another request with the token is refused with
    IdempotentParameterMismatchException."""
    t = make_table()
    k = {"pk": {"S": "c"}}
    client.put_item(TableName=t, Item={**k, "n": {"N": "0"}})
    items = [{"Update": {"TableName": t, "Key": k, "UpdateExpression": "ADD n :one",
                         "ExpressionAttributeValues": {":one": {"N": "1"}}}}]
    first = client.transact_write_items(TransactItems=items, ClientRequestToken="tok-1")
    second = client.transact_write_items(TransactItems=items, ClientRequestToken="tok-1")
    assert first.keys() == second.keys()
    assert client.get_item(TableName=t, Key=k)["Item"]["n"] == {"N": "1"}
    other = [{"Update": {**items[0]["Update"], "ExpressionAttributeValues": {":one": {"N": "2"}}}}]
    with pytest.raises(ClientError) as e:
        client.transact_write_items(TransactItems=other, ClientRequestToken="tok-1")
    assert error_code(e) == "IdempotentParameterMismatchException"
    client.transact_write_items(TransactItems=items, ClientRequestToken="tok-2")
    client.transact_write_items(TransactItems=items)
    assert client.get_item(TableName=t, Key=k)["Item"]["n"] == {"N": "3"}
    assert fails(client.transact_write_items, TransactItems=items, ClientRequestToken="x" * 37).startswith(
        "1 validation error detected: Value '" + "x" * 37 + "' at 'clientRequestToken'")


def test_transact_idempotent_token_aws_cli(make_table, client):
    """The same through the AWS CLI: aws dynamodb transact-write-items --client-request-token."""
    t = make_table()
    aws = os.path.join(os.path.dirname(sys.executable), "aws")
    items = json.dumps([{"Update": {"TableName": t, "Key": {"pk": {"S": "c"}}, "UpdateExpression": "ADD n :one",
                                    "ExpressionAttributeValues": {":one": {"N": "1"}}}}])

    def run(token, its):
        return subprocess.run([aws, "dynamodb", "transact-write-items", "--transact-items", its, "--client-request-token",
                               token, "--endpoint-url", ENDPOINT], capture_output=True, text=True, timeout=120)

    assert run("cli-tok", items).returncode == 0
    assert run("cli-tok", items).returncode == 0
    p = run("cli-tok", items.replace('"1"}', '"5"}'))
    assert p.returncode != 0 and "IdempotentParameterMismatchException" in p.stderr
    assert client.get_item(TableName=t, Key={"pk": {"S": "c"}})["Item"]["n"] == {"N": "1"}


def test_transact_4mb_limit(client, make_table):
    """A transaction whose items add up to more than 4 MB is refused and writes nothing."""
    t = make_table()
    big = "x" * (390 * 1024)
    items = [{"Put": {"TableName": t, "Item": {"pk": {"S": f"k{i}"}, "v": {"S": big}}}} for i in range(11)]
    assert fails(client.transact_write_items, TransactItems=items) == "Transaction request cannot be larger than 4 MB"
    pages = client.get_paginator("scan").paginate(TableName=t, Select="COUNT")
    assert sum(p["Count"] for p in pages) == 0
    client.transact_write_items(TransactItems=items[:10])
    pages = client.get_paginator("scan").paginate(TableName=t, Select="COUNT")
    assert sum(p["Count"] for p in pages) == 10


def test_transact_cancellation_reasons_for_validation_errors(client, make_table):
    """A transaction whose item fails validation while it runs is cancelled with a
    CancellationReason per item: ValidationError with its message for that one, None for
    the others; nothing is written."""
    t = make_table()
    client.put_item(TableName=t, Item={"pk": {"S": "s"}, "v": {"S": "text"}})
    with pytest.raises(ClientError) as e:
        client.transact_write_items(TransactItems=[
            {"Put": {"TableName": t, "Item": {"pk": {"S": "new"}}}},
            {"Update": {"TableName": t, "Key": {"pk": {"S": "s"}}, "UpdateExpression": "ADD v :one",
                        "ExpressionAttributeValues": {":one": {"N": "1"}}}},
            {"Delete": {"TableName": t, "Key": {"pk": {"S": "other"}}}}])
    assert error_code(e) == "TransactionCanceledException"
    reasons = e.value.response["CancellationReasons"]
    assert [r["Code"] for r in reasons] == ["None", "ValidationError", "None"]
    assert reasons[1]["Message"] == "An operand in the update expression has an incorrect data type"
    assert "[None, ValidationError, None]" in error_message(e)
    assert "Item" not in client.get_item(TableName=t, Key={"pk": {"S": "new"}})


def test_delete_table_returns_description_with_indexes(client, make_table):
    """DeleteTable answers with the TableDescription: TableStatus DELETING, key schema and
    both kinds of secondary index."""
    t = make_table(range=("sk", "N"), attrs=[("g", "S"), ("l", "N")], GlobalSecondaryIndexes=[
        {"IndexName": "by-g", "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
         "Projection": {"ProjectionType": "KEYS_ONLY"}}], LocalSecondaryIndexes=[
        {"IndexName": "by-l", "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"},
                                            {"AttributeName": "l", "KeyType": "RANGE"}],
         "Projection": {"ProjectionType": "ALL"}}])
    client.put_item(TableName=t, Item={"pk": {"S": "a"}, "sk": {"N": "1"}, "g": {"S": "x"}})
    d = client.delete_table(TableName=t)["TableDescription"]
    assert d["TableName"] == t and d["TableStatus"] == "DELETING"
    assert [i["IndexName"] for i in d["GlobalSecondaryIndexes"]] == ["by-g"]
    assert d["GlobalSecondaryIndexes"][0]["Projection"] == {"ProjectionType": "KEYS_ONLY"}
    assert [i["IndexName"] for i in d["LocalSecondaryIndexes"]] == ["by-l"]
    assert d["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}]
    assert d["ItemCount"] == 1
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.describe_table(TableName=t)


def test_conditional_operator_needs_two_conditions(client, make_table):
    """ConditionalOperator joins conditions: DynamoDB refuses it without Expected /
    QueryFilter / ScanFilter (absent or empty) and with a single condition (dynalite accepts
    both); two or more are fine."""
    t = make_table()
    k = {"pk": {"S": "a"}}
    client.put_item(TableName=t, Item={**k, "n": {"N": "1"}})
    one = {"n": {"ComparisonOperator": "EQ", "AttributeValueList": [{"N": "1"}]}}
    two = {**one, "zz": {"ComparisonOperator": "NULL"}}
    without = "ConditionalOperator cannot be used without Filter or Expected"
    single = "ConditionalOperator can only be used when Filter or Expected has two or more elements"
    for op in ("AND", "OR"):
        assert fails(client.put_item, TableName=t, Item=k, ConditionalOperator=op) == without
        assert fails(client.put_item, TableName=t, Item=k, Expected={}, ConditionalOperator=op) == without
        assert fails(client.put_item, TableName=t, Item=k, Expected=one, ConditionalOperator=op) == single
        assert fails(client.delete_item, TableName=t, Key=k, Expected=one, ConditionalOperator=op) == single
        assert fails(client.update_item, TableName=t, Key=k, ConditionalOperator=op,
                     AttributeUpdates={"v": {"Action": "PUT", "Value": {"S": "x"}}}) == without
        assert fails(client.update_item, TableName=t, Key=k, Expected=one, ConditionalOperator=op,
                     AttributeUpdates={"v": {"Action": "PUT", "Value": {"S": "x"}}}) == single
        assert fails(client.scan, TableName=t, ConditionalOperator=op) == without
        assert fails(client.scan, TableName=t, ScanFilter={}, ConditionalOperator=op) == without
        assert fails(client.scan, TableName=t, ScanFilter=one, ConditionalOperator=op) == single
        keys = {"pk": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "a"}]}}
        assert fails(client.query, TableName=t, KeyConditions=keys, ConditionalOperator=op) == without
        # Before the missing key condition is noticed.
        assert fails(client.query, TableName=t, ConditionalOperator=op) == without
        assert fails(client.query, TableName=t, KeyConditions=keys, QueryFilter=one,
                     ConditionalOperator=op) == single
        # Two conditions: accepted.
        client.scan(TableName=t, ScanFilter=two, ConditionalOperator=op)
        client.query(TableName=t, KeyConditions=keys, QueryFilter=two, ConditionalOperator=op)
        client.put_item(TableName=t, Item={**k, "n": {"N": "1"}}, Expected=two, ConditionalOperator=op)
    # Mixing with an expression parameter is reported first, as before.
    assert fails(client.put_item, TableName=t, Item=k, ConditionalOperator="AND",
                 ConditionExpression="attribute_exists(pk)").startswith(
        "Can not use both expression and non-expression parameters")
    # One condition without ConditionalOperator stays fine.
    client.put_item(TableName=t, Item={**k, "n": {"N": "1"}}, Expected=one)
