"""Conformance (issue 19): validation errors worded as DynamoDB words them, through boto3.
Each test names the AWS behaviour it checks; the table in docs/dynamodb.md lists them."""
import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import ENDPOINT, error_code, error_message, unique

# A client that sends what it is given (boto3 refuses some of these requests itself).
RAW = boto3.client("dynamodb", endpoint_url=ENDPOINT,
                   config=Config(parameter_validation=False, retries={"max_attempts": 1}))


def fails(call, **kw):
    with pytest.raises(ClientError) as e:
        call(**kw)
    assert error_code(e) == "ValidationException", error_message(e)
    return error_message(e)


def test_attributes_to_get_empty_or_duplicate(client, make_table):
    """AttributesToGet must have at least one member and no duplicates (GetItem, Query)."""
    t = make_table()
    assert fails(RAW.get_item, TableName=t, Key={"pk": {"S": "a"}}, AttributesToGet=[]) == (
        "1 validation error detected: Value '[]' at 'attributesToGet' failed to satisfy constraint: "
        "Member must have length greater than or equal to 1")
    assert fails(client.get_item, TableName=t, Key={"pk": {"S": "a"}}, AttributesToGet=["a", "a"]) == (
        "One or more parameter values were invalid: Duplicate value in attribute name: a")
    assert fails(client.query, TableName=t, KeyConditions={
        "pk": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "a"}]}},
        AttributesToGet=["x", "y", "x"]) == "One or more parameter values were invalid: Duplicate value in attribute name: x"


def test_select_conflicts_query_and_scan(client, make_table):
    """Select with a projection: Query words the refusal as '1 validation error detected: …',
    Scan bare; SPECIFIC_ATTRIBUTES needs a projection."""
    t = make_table()
    q = dict(TableName=t, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "a"}})
    assert fails(client.query, Select="COUNT", ProjectionExpression="v", **q) == (
        "1 validation error detected: Cannot specify the ProjectionExpression when choosing to get only the Count")
    assert fails(client.query, Select="ALL_ATTRIBUTES", ProjectionExpression="v", **q) == (
        "1 validation error detected: Cannot specify the ProjectionExpression when choosing to get ALL_ATTRIBUTES")
    assert fails(client.query, Select="SPECIFIC_ATTRIBUTES", **q) == (
        "1 validation error detected: Must specify the AttributesToGet or ProjectionExpression when choosing to get SPECIFIC_ATTRIBUTES")
    assert fails(client.scan, TableName=t, Select="COUNT", ProjectionExpression="v") == (
        "Cannot specify the ProjectionExpression when choosing to get only the Count")
    assert fails(client.scan, TableName=t, Select="COUNT", AttributesToGet=["v"]) == (
        "Cannot specify the AttributesToGet when choosing to get only the Count")
    assert fails(client.scan, TableName=t, Select="SPECIFIC_ATTRIBUTES") == (
        "Must specify the AttributesToGet or ProjectionExpression when choosing to get SPECIFIC_ATTRIBUTES")
    # SPECIFIC_ATTRIBUTES with a projection is the projection.
    client.put_item(TableName=t, Item={"pk": {"S": "a"}, "v": {"N": "1"}, "w": {"N": "2"}})
    out = client.query(Select="SPECIFIC_ATTRIBUTES", ProjectionExpression="v", **q)
    assert out["Items"] == [{"v": {"N": "1"}}]


def test_exclusive_start_key_schema_and_partition(client, make_table):
    """ExclusiveStartKey must be the key schema (Query: short message; Scan: long one; wrong
    types: long one) and lie inside the Query's partition and sort-key bounds."""
    t = make_table(range=("sk", "N"))
    q = dict(TableName=t, KeyConditionExpression="pk = :p AND sk > :s",
             ExpressionAttributeValues={":p": {"S": "a"}, ":s": {"N": "5"}})
    assert fails(client.query, ExclusiveStartKey={"bad": {"S": "p"}}, **q) == "The provided starting key is invalid"
    assert fails(client.scan, TableName=t, ExclusiveStartKey={"bad": {"S": "p"}}) == (
        "The provided starting key is invalid: The provided key element does not match the schema")
    assert fails(client.query, ExclusiveStartKey={"pk": {"S": "a"}, "sk": {"S": "x"}}, **q) == (
        "The provided starting key is invalid: The provided key element does not match the schema")
    outside = "The provided starting key is outside query boundaries based on provided conditions"
    assert fails(client.query, ExclusiveStartKey={"pk": {"S": "b"}, "sk": {"N": "9"}}, **q) == outside
    assert fails(client.query, ExclusiveStartKey={"pk": {"S": "a"}, "sk": {"N": "3"}}, **q) == outside
    client.query(ExclusiveStartKey={"pk": {"S": "a"}, "sk": {"N": "9"}}, **q)


def test_attribute_definitions_duplicate_and_unused(client):
    """CreateTable: a duplicated AttributeDefinition, and definitions no key uses (worded
    differently with and without indexes)."""
    base = dict(TableName=unique(), BillingMode="PAY_PER_REQUEST",
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
    assert fails(client.create_table, AttributeDefinitions=[
        {"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "pk", "AttributeType": "N"}], **base) == (
        "Attribute Name is duplicated: pk")
    assert fails(client.create_table, AttributeDefinitions=[
        {"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "x", "AttributeType": "N"}], **base) == (
        "One or more parameter values were invalid: Number of attributes in KeySchema does not exactly match "
        "number of attributes defined in AttributeDefinitions")
    gsi = [{"IndexName": "gsi1", "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "ALL"}}]
    assert fails(client.create_table, AttributeDefinitions=[
        {"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "g", "AttributeType": "S"},
        {"AttributeName": "x", "AttributeType": "N"}], GlobalSecondaryIndexes=gsi, **base) == (
        "One or more parameter values were invalid: Some AttributeDefinitions are not used. "
        "AttributeDefinitions: [pk, g, x], keys used: [pk, g]")


def test_index_projection_missing(client):
    """CreateTable: a GSI without Projection, or with a Projection without ProjectionType."""
    base = dict(TableName=unique(), BillingMode="PAY_PER_REQUEST",
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                      {"AttributeName": "g", "AttributeType": "S"}])
    # boto3 refuses a missing Projection itself; send it raw.
    assert fails(RAW.create_table, GlobalSecondaryIndexes=[
        {"IndexName": "gsi1", "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}]}], **base) == (
        "1 validation error detected: Value null at 'globalSecondaryIndexes.1.member.projection' "
        "failed to satisfy constraint: Member must not be null")
    assert fails(client.create_table, GlobalSecondaryIndexes=[
        {"IndexName": "gsi1", "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}], "Projection": {}}], **base) == (
        "One or more parameter values were invalid: Unknown ProjectionType: null")


def test_index_key_type_conflicts(client, make_table):
    """An item whose GSI key has another type than the index's is refused (Type mismatch for
    Index Key); an UpdateTable redefining a key attribute with another type is refused."""
    t = make_table(attrs=[("g", "N")], GlobalSecondaryIndexes=[
        {"IndexName": "by-g", "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
         "Projection": {"ProjectionType": "KEYS_ONLY"}}])
    assert fails(client.put_item, TableName=t, Item={"pk": {"S": "a"}, "g": {"S": "x"}}) == (
        "One or more parameter values were invalid: Type mismatch for Index Key g Expected: N Actual: S IndexName: by-g")
    assert "Item" not in client.get_item(TableName=t, Key={"pk": {"S": "a"}})
    msg = fails(client.update_table, TableName=t, AttributeDefinitions=[{"AttributeName": "g", "AttributeType": "S"}],
                GlobalSecondaryIndexUpdates=[{"Create": {"IndexName": "by-g2", "KeySchema": [
                    {"AttributeName": "g", "KeyType": "HASH"}], "Projection": {"ProjectionType": "ALL"}}}])
    assert msg == "One or more parameter values were invalid: Attribute g is already defined with type N"


def test_consistent_read_on_gsi(client, make_table):
    """ConsistentRead=true on a GSI is refused; on an LSI and the table it is accepted."""
    t = make_table(range=("sk", "N"), attrs=[("g", "S"), ("l", "S")], GlobalSecondaryIndexes=[
        {"IndexName": "by-g", "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
         "Projection": {"ProjectionType": "ALL"}}], LocalSecondaryIndexes=[
        {"IndexName": "by-l", "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"},
                                            {"AttributeName": "l", "KeyType": "RANGE"}],
         "Projection": {"ProjectionType": "ALL"}}])
    assert fails(client.query, TableName=t, IndexName="by-g", ConsistentRead=True, KeyConditionExpression="g = :g",
                 ExpressionAttributeValues={":g": {"S": "x"}}) == "Consistent reads are not supported on global secondary indexes"
    assert fails(client.scan, TableName=t, IndexName="by-g", ConsistentRead=True) == (
        "Consistent reads are not supported on global secondary indexes")
    client.query(TableName=t, IndexName="by-l", ConsistentRead=True, KeyConditionExpression="pk = :p",
                 ExpressionAttributeValues={":p": {"S": "x"}})
    client.scan(TableName=t, ConsistentRead=True)


def test_key_size_limits(client, make_table):
    """Partition keys up to 2048 bytes, sort keys up to 1024 bytes (UTF-8), with DynamoDB's words."""
    t = make_table(range=("sk", "S"))
    client.put_item(TableName=t, Item={"pk": {"S": "é" * 1024}, "sk": {"S": "x" * 1024}})
    assert fails(client.put_item, TableName=t, Item={"pk": {"S": "x" * 2049}, "sk": {"S": "a"}}) == (
        "One or more parameter values were invalid: Size of hashkey has exceeded the maximum size limit of2048 bytes")
    assert fails(client.get_item, TableName=t, Key={"pk": {"S": "a"}, "sk": {"S": "é" * 513}}) == (
        "One or more parameter values were invalid: Aggregated size of all range keys has exceeded the size limit of 1024 bytes")


def test_invalid_and_out_of_range_numbers(client, make_table):
    """Numbers: not numeric, more than 38 significant digits, magnitude 1E-130..9.99…E+125."""
    t = make_table()
    item = lambda n: {"pk": {"S": "a"}, "n": {"N": n}}
    assert fails(client.put_item, TableName=t, Item=item("12a")) == "The parameter cannot be converted to a numeric value: 12a"
    assert fails(client.put_item, TableName=t, Item=item("1" * 39)) == (
        "Attempting to store more than 38 significant digits in a Number")
    assert fails(client.put_item, TableName=t, Item=item("1e126")) == (
        "Number overflow. Attempting to store a number with magnitude larger than supported range")
    assert fails(client.put_item, TableName=t, Item=item("1e-131")) == (
        "Number underflow. Attempting to store a number with magnitude smaller than supported range")
    client.put_item(TableName=t, Item=item("9.9999999999999999999999999999999999999E+125"))
    client.put_item(TableName=t, Item={"pk": {"S": "b"}, "n": {"N": "1E-130"}, "z": {"N": "000.1000"}})
    got = client.get_item(TableName=t, Key={"pk": {"S": "b"}})["Item"]
    assert got["z"] == {"N": "0.1"}


def test_arithmetic_rounds_to_38_digits_and_overflows(client, make_table):
    """SET a = a + :n and ADD round the result to 38 significant digits; a result beyond
    the range fails with DynamoDB's overflow/underflow errors and writes nothing."""
    t = make_table()
    k = {"pk": {"S": "a"}}
    client.put_item(TableName=t, Item={**k, "a": {"N": "1E+37"}, "b": {"N": "12345678901234567890123456789012345678"},
                                       "big": {"N": "9.9999999999999999999999999999999999999E+125"},
                                       "tiny": {"N": "1.5E-130"}})
    out = client.update_item(TableName=t, Key=k, UpdateExpression="SET a = a + :s ADD b :f",
                             ExpressionAttributeValues={":s": {"N": "1E-10"}, ":f": {"N": "0.6"}},
                             ReturnValues="UPDATED_NEW")
    assert out["Attributes"] == {"a": {"N": "10000000000000000000000000000000000000"},
                                 "b": {"N": "12345678901234567890123456789012345679"}}
    assert fails(client.update_item, TableName=t, Key=k, UpdateExpression="SET big = big + :v",
                 ExpressionAttributeValues={":v": {"N": "1E+125"}}) == (
        "Number overflow. Attempting to store a number with magnitude larger than supported range")
    assert fails(client.update_item, TableName=t, Key=k, UpdateExpression="SET tiny = tiny - :v",
                 ExpressionAttributeValues={":v": {"N": "1E-130"}}) == (
        "Number underflow. Attempting to store a number with magnitude smaller than supported range")
    # Nothing was written by the failed updates.
    assert client.get_item(TableName=t, Key=k)["Item"]["big"] == {"N": "9" * 38 + "0" * 88}


def test_path_overlap_and_conflict(client, make_table):
    """Two paths of one projection or update expression: overlap (one a prefix of the other)
    or conflict (a map key against a list index), named in the order given."""
    t = make_table()
    k = {"pk": {"S": "a"}}
    assert fails(client.get_item, TableName=t, Key=k, ProjectionExpression="a, a.b") == (
        "Invalid ProjectionExpression: Two document paths overlap with each other; must remove or rewrite one of "
        "these paths; path one: [a], path two: [a, b]")
    assert fails(client.get_item, TableName=t, Key=k, ProjectionExpression="a.b, a") == (
        "Invalid ProjectionExpression: Two document paths overlap with each other; must remove or rewrite one of "
        "these paths; path one: [a, b], path two: [a]")
    assert fails(client.get_item, TableName=t, Key=k, ProjectionExpression="a.b, a[0]") == (
        "Invalid ProjectionExpression: Two document paths conflict with each other; must remove or rewrite one of "
        "these paths; path one: [a, b], path two: [a, [0]]")
    assert fails(client.update_item, TableName=t, Key=k, UpdateExpression="SET a.b = :v REMOVE a",
                 ExpressionAttributeValues={":v": {"S": "x"}}) == (
        "Invalid UpdateExpression: Two document paths overlap with each other; must remove or rewrite one of "
        "these paths; path one: [a, b], path two: [a]")
    assert fails(client.update_item, TableName=t, Key=k, UpdateExpression="SET a[1] = :v, a.c = :v",
                 ExpressionAttributeValues={":v": {"S": "x"}}) == (
        "Invalid UpdateExpression: Two document paths conflict with each other; must remove or rewrite one of "
        "these paths; path one: [a, [1]], path two: [a, c]")


def test_list_index_beyond_end(client, make_table):
    """SET l[i] past the end of a list appends; REMOVE past the end does nothing; a
    condition on a missing index sees no attribute; indexing a non-list is invalid for update."""
    t = make_table()
    k = {"pk": {"S": "a"}}
    client.put_item(TableName=t, Item={**k, "l": {"L": [{"N": "0"}, {"N": "1"}]}, "s": {"S": "x"}})
    client.update_item(TableName=t, Key=k, UpdateExpression="SET l[10] = :v REMOVE l[20]",
                       ExpressionAttributeValues={":v": {"N": "9"}})
    assert client.get_item(TableName=t, Key=k)["Item"]["l"] == {"L": [{"N": "0"}, {"N": "1"}, {"N": "9"}]}
    with pytest.raises(client.exceptions.ConditionalCheckFailedException):
        client.update_item(TableName=t, Key=k, UpdateExpression="SET z = :v", ConditionExpression="attribute_exists(l[5])",
                           ExpressionAttributeValues={":v": {"N": "1"}})
    assert fails(client.update_item, TableName=t, Key=k, UpdateExpression="SET s[0] = :v",
                 ExpressionAttributeValues={":v": {"N": "1"}}) == (
        "The document path provided in the update expression is invalid for update")


def test_functions_unknown_nested_and_misplaced(client, make_table):
    """Unknown functions, functions nested where DynamoDB refuses them, functions that need a
    document path, wrong operand counts, and functions not allowed in an update."""
    t = make_table()
    k = {"pk": {"S": "a"}}
    cond = lambda c, **v: fails(client.put_item, TableName=t, Item=k, ConditionExpression=c, **v)
    assert cond("nope(a)") == "Invalid ConditionExpression: Invalid function name; function: nope"
    assert cond("begins_with(attribute_type(a, :t), :t)", ExpressionAttributeValues={":t": {"S": "S"}}) == (
        "Invalid ConditionExpression: The function is not allowed to be used this way in an expression; function: attribute_type")
    assert cond("attribute_exists(size(a))") == (
        "Invalid ConditionExpression: Operator or function requires a document path; operator or function: attribute_exists")
    assert cond("attribute_exists(:v)", ExpressionAttributeValues={":v": {"S": "x"}}) == (
        "Invalid ConditionExpression: Operator or function requires a document path; operator or function: attribute_exists")
    assert cond("size(size(a)) > :v", ExpressionAttributeValues={":v": {"N": "1"}}) == (
        "Invalid ConditionExpression: Incorrect operand type for operator or function; operator or function: size, operand type: N")
    assert cond("attribute_exists(a, b)") == (
        "Invalid ConditionExpression: Incorrect number of operands for operator or function; operator or function: "
        "attribute_exists, number of operands: 2")
    assert cond("contains(a)") == (
        "Invalid ConditionExpression: Incorrect number of operands for operator or function; operator or function: "
        "contains, number of operands: 1")
    upd = lambda u, **v: fails(client.update_item, TableName=t, Key=k, UpdateExpression=u, **v)
    assert upd("SET a = size(b)") == "Invalid UpdateExpression: The function is not allowed in an update expression; function: size"
    assert upd("SET a = nope(b)") == "Invalid UpdateExpression: Invalid function name; function: nope"
    assert upd("SET a = if_not_exists(:v, b)", ExpressionAttributeValues={":v": {"N": "1"}}) == (
        "Invalid UpdateExpression: Operator or function requires a document path; operator or function: if_not_exists")
    # list_append(if_not_exists(…)) is the documented way to append to a list that may not exist.
    client.update_item(TableName=t, Key=k, UpdateExpression="SET l = list_append(if_not_exists(l, :e), :v)",
                       ExpressionAttributeValues={":e": {"L": []}, ":v": {"L": [{"N": "1"}]}})
    client.update_item(TableName=t, Key=k, UpdateExpression="SET n = (if_not_exists(n, :z) + :one)",
                       ExpressionAttributeValues={":z": {"N": "0"}, ":one": {"N": "1"}})
    assert client.get_item(TableName=t, Key=k)["Item"]["n"] == {"N": "1"}


def test_redundant_parentheses(client, make_table):
    """((…)) around a condition is refused as redundant parentheses; one pair is fine."""
    t = make_table()
    v = {":v": {"S": "a"}}
    assert fails(client.query, TableName=t, KeyConditionExpression="((pk = :v))", ExpressionAttributeValues=v) == (
        "Invalid KeyConditionExpression: The expression has redundant parentheses;")
    assert fails(client.scan, TableName=t, FilterExpression="a = :v AND ((a = :v OR a = :v))",
                 ExpressionAttributeValues=v) == "Invalid FilterExpression: The expression has redundant parentheses;"
    client.query(TableName=t, KeyConditionExpression="(pk = :v)", ExpressionAttributeValues=v)
    client.scan(TableName=t, FilterExpression="(a = :v) AND ((a = :v) OR (a = :v))", ExpressionAttributeValues=v)


def test_parenthesised_operands(client, make_table):
    """One pair of parentheses around an operand is accepted (`(a) = :v`, `(m).b`, in
    function arguments); two pairs are redundant parentheses, as around a condition."""
    t = make_table()
    client.put_item(TableName=t, Item={"pk": {"S": "k"}, "a": {"S": "a"}, "m": {"M": {"b": {"S": "bb"}}}})
    values = {":v": {"S": "a"}, ":b": {"S": "b"}}
    used = lambda f: {k: x for k, x in values.items() if k in f}
    scan = lambda f: client.scan(TableName=t, FilterExpression=f, ExpressionAttributeValues=used(f))["Count"]
    assert scan("(a) = :v") == 1
    assert scan("a = (:v)") == 1
    assert scan("(a) BETWEEN (:v) AND :b") == 1
    assert scan("(a) IN ((:v), :b)") == 1
    assert scan("begins_with((m).b, :b) AND NOT ((a) <> :v)") == 1
    assert scan("(a) = :b") == 0
    client.put_item(TableName=t, Item={"pk": {"S": "k"}, "a": {"S": "a2"}}, ConditionExpression="(a) = :v",
                    ExpressionAttributeValues={":v": {"S": "a"}})
    redundant = "Invalid FilterExpression: The expression has redundant parentheses;"
    for f in ("((a)) = :v", "a = ((:v))", "((a = :v))", "begins_with(((a)), :b)"):
        assert fails(client.scan, TableName=t, FilterExpression=f, ExpressionAttributeValues=used(f)) == redundant, f
    assert fails(client.put_item, TableName=t, Item={"pk": {"S": "k"}}, ConditionExpression="((a)) = :v",
                 ExpressionAttributeValues={":v": {"S": "a"}}) == (
        "Invalid ConditionExpression: The expression has redundant parentheses;")
