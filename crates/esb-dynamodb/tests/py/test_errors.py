"""Limits and exact error names/messages SDKs rely on, and request signing."""
import os

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import ENDPOINT, error_code, error_message


def test_item_size_limit(client, make_table):
    t = make_table()
    client.put_item(TableName=t, Item={"pk": {"S": "ok"}, "v": {"S": "x" * (400 * 1024 - 100)}})
    with pytest.raises(ClientError) as e:
        client.put_item(TableName=t, Item={"pk": {"S": "big"}, "v": {"S": "x" * (400 * 1024 + 1)}})
    assert error_code(e) == "ValidationException" and "maximum allowed size" in error_message(e)
    with pytest.raises(ClientError) as e:
        client.update_item(TableName=t, Key={"pk": {"S": "ok"}}, UpdateExpression="SET w = :w",
                           ExpressionAttributeValues={":w": {"S": "y" * 1000}})
    assert "maximum allowed size" in error_message(e)


def test_key_validation(client, make_table):
    t = make_table(range=("sk", "N"))

    def fails(**kw):
        with pytest.raises(ClientError) as e:
            client.put_item(TableName=t, **kw)
        assert error_code(e) == "ValidationException"
        return error_message(e)

    assert "Missing the key sk" in fails(Item={"pk": {"S": "a"}})
    assert "Type mismatch" in fails(Item={"pk": {"S": "a"}, "sk": {"S": "x"}})
    assert "empty string" in fails(Item={"pk": {"S": ""}, "sk": {"N": "1"}})
    assert "2048" in fails(Item={"pk": {"S": "x" * 2049}, "sk": {"N": "1"}})
    with pytest.raises(ClientError) as e:
        client.get_item(TableName=t, Key={"pk": {"S": "a"}})
    assert error_message(e) == "The provided key element does not match the schema"
    with pytest.raises(ClientError) as e:
        client.get_item(TableName=t, Key={"pk": {"S": "a"}, "sk": {"N": "1"}, "x": {"S": "y"}})
    assert error_code(e) == "ValidationException"


def test_attribute_value_validation(client, make_table):
    t = make_table()
    for bad in [{"SS": []}, {"SS": ["a", "a"]}, {"NS": ["1", "1.0"]}, {"N": "abc"}, {"N": "1e200"}, {"BS": []}]:
        with pytest.raises(ClientError) as e:
            client.put_item(TableName=t, Item={"pk": {"S": "a"}, "v": bad})
        assert error_code(e) == "ValidationException", bad


def test_resource_not_found(client):
    with pytest.raises(client.exceptions.ResourceNotFoundException) as e:
        client.get_item(TableName="does-not-exist", Key={"pk": {"S": "a"}})
    assert error_message(e) == "Requested resource not found"
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.query(TableName="does-not-exist", KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "a"}})


def test_expression_errors(client, make_table):
    t = make_table()

    def fails(**kw):
        with pytest.raises(ClientError) as e:
            client.put_item(TableName=t, Item={"pk": {"S": "a"}}, **kw)
        assert error_code(e) == "ValidationException"
        return error_message(e)

    assert fails(ConditionExpression="a =") .startswith("Invalid ConditionExpression: Syntax error")
    assert "attribute value: :x" in fails(ConditionExpression="a = :x")
    assert "attribute name: #x" in fails(ConditionExpression="#x = a")
    assert "unused in expressions: keys: {:y}" in fails(ConditionExpression="attribute_exists(a)", ExpressionAttributeValues={":y": {"S": "1"}})
    assert "Invalid function name" in fails(ConditionExpression="nope(a)")
    assert "Invalid attribute type name" in fails(ConditionExpression="attribute_type(a, :t)", ExpressionAttributeValues={":t": {"S": "X"}})


def test_bad_signature_and_unknown_key():
    bad_secret = boto3.client("dynamodb", endpoint_url=ENDPOINT, aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key="wrong",
                              config=Config(retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as e:
        bad_secret.list_tables()
    assert error_code(e) == "InvalidSignatureException"
    unknown = boto3.client("dynamodb", endpoint_url=ENDPOINT, aws_access_key_id="SOMEONEELSE",
                           aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                           config=Config(retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as e:
        unknown.list_tables()
    assert error_code(e) == "UnrecognizedClientException"


def test_unsigned_and_unknown_operation():
    import json
    import urllib.request
    req = urllib.request.Request(ENDPOINT, data=b"{}", method="POST",
                                 headers={"X-Amz-Target": "DynamoDB_20120810.ListTables",
                                          "Content-Type": "application/x-amz-json-1.0"})
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("unsigned request accepted")
    except urllib.error.HTTPError as e:
        body = json.loads(e.read())
        assert e.code == 400
        assert body["__type"].endswith("#MissingAuthenticationTokenException")


def test_reserved_words(client, make_table):
    t = make_table()
    with pytest.raises(ClientError) as e:
        client.update_item(TableName=t, Key={"pk": {"S": "a"}}, UpdateExpression="SET status = :s",
                           ExpressionAttributeValues={":s": {"S": "x"}})
    assert error_message(e) == "Invalid UpdateExpression: Attribute name is a reserved keyword; reserved keyword: status"
    client.update_item(TableName=t, Key={"pk": {"S": "a"}}, UpdateExpression="SET #s = :s",
                       ExpressionAttributeNames={"#s": "status"}, ExpressionAttributeValues={":s": {"S": "x"}})


def test_nesting_limit(client, make_table):
    t = make_table()
    v = {"S": "leaf"}
    for _ in range(32):
        v = {"M": {"x": v}}
    client.put_item(TableName=t, Item={"pk": {"S": "ok"}, "deep": v})
    with pytest.raises(ClientError) as e:
        client.put_item(TableName=t, Item={"pk": {"S": "no"}, "deep": {"L": [v]}})
    assert error_code(e) == "ValidationException" and "Nesting" in error_message(e)


def test_health_endpoint_answers_without_credentials():
    """GET /health (for the seed's troubleshooting and `esb doctor`); the API is POST /."""
    import json
    import urllib.request

    from conftest import ENDPOINT

    with urllib.request.urlopen(ENDPOINT.rstrip("/") + "/health", timeout=10) as r:
        assert r.status == 200
        assert json.loads(r.read()) == {"status": "ok", "service": "esb-dynamodb"}
