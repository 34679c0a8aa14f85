"""The AWS CLI (aws dynamodb ...) against the store."""
import json
import os
import subprocess
import sys

from conftest import unique

AWS = os.path.join(os.path.dirname(sys.executable), "aws")


def aws(*args, check=True):
    p = subprocess.run([AWS, "dynamodb", *args, "--endpoint-url", os.environ["DDB_ENDPOINT"], "--output", "json"],
                       capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout) if p.stdout.strip() else {}
    return p


def test_cli_roundtrip():
    t = unique("cli")
    aws("create-table", "--table-name", t,
        "--attribute-definitions", "AttributeName=pk,AttributeType=S", "AttributeName=sk,AttributeType=N",
        "--key-schema", "AttributeName=pk,KeyType=HASH", "AttributeName=sk,KeyType=RANGE",
        "--billing-mode", "PAY_PER_REQUEST")
    aws("wait", "table-exists", "--table-name", t)
    assert t in aws("list-tables")["TableNames"]
    for i in range(2):
        aws("put-item", "--table-name", t, "--item", json.dumps({"pk": {"S": "k"}, "sk": {"N": str(i)}, "v": {"S": f"v{i}"}}))
    aws("batch-write-item", "--request-items", json.dumps({t: [
        {"PutRequest": {"Item": {"pk": {"S": "k"}, "sk": {"N": str(i)}, "v": {"S": f"v{i}"}}}} for i in range(2, 12)]}))
    got = aws("get-item", "--table-name", t, "--key", json.dumps({"pk": {"S": "k"}, "sk": {"N": "3"}}))
    assert got["Item"]["v"] == {"S": "v3"}
    out = aws("update-item", "--table-name", t, "--key", json.dumps({"pk": {"S": "k"}, "sk": {"N": "3"}}),
              "--update-expression", "SET v = :v", "--expression-attribute-values", json.dumps({":v": {"S": "new"}}),
              "--return-values", "ALL_NEW")
    assert out["Attributes"]["v"] == {"S": "new"}
    # The CLI paginates automatically with a page size.
    out = aws("query", "--table-name", t, "--key-condition-expression", "pk = :p AND sk >= :s",
              "--expression-attribute-values", json.dumps({":p": {"S": "k"}, ":s": {"N": "2"}}), "--page-size", "3")
    assert out["Count"] == 10
    out = aws("scan", "--table-name", t, "--page-size", "5")
    assert out["Count"] == 12
    p = aws("put-item", "--table-name", t, "--item", json.dumps({"pk": {"S": "k"}, "sk": {"N": "1"}}),
            "--condition-expression", "attribute_not_exists(pk)", check=False)
    assert p.returncode != 0 and "ConditionalCheckFailedException" in p.stderr
    aws("delete-item", "--table-name", t, "--key", json.dumps({"pk": {"S": "k"}, "sk": {"N": "1"}}))
    aws("batch-write-item", "--request-items", json.dumps({t: [{"DeleteRequest": {"Key": {"pk": {"S": "k"}, "sk": {"N": "2"}}}}]}))
    assert aws("describe-table", "--table-name", t)["Table"]["ItemCount"] == 10
    out = aws("batch-get-item", "--request-items",
              json.dumps({t: {"Keys": [{"pk": {"S": "k"}, "sk": {"N": "3"}}, {"pk": {"S": "k"}, "sk": {"N": "4"}}]}}))
    assert len(out["Responses"][t]) == 2
    aws("transact-write-items", "--transact-items", json.dumps([
        {"Put": {"TableName": t, "Item": {"pk": {"S": "tx"}, "sk": {"N": "1"}, "g": {"S": "grp"}}}},
        {"Update": {"TableName": t, "Key": {"pk": {"S": "k"}, "sk": {"N": "3"}}, "UpdateExpression": "SET g = :g",
                    "ExpressionAttributeValues": {":g": {"S": "grp"}}}}]))
    p = aws("transact-write-items", "--transact-items", json.dumps([
        {"ConditionCheck": {"TableName": t, "Key": {"pk": {"S": "tx"}, "sk": {"N": "1"}},
                            "ConditionExpression": "attribute_not_exists(pk)"}},
        {"Delete": {"TableName": t, "Key": {"pk": {"S": "k"}, "sk": {"N": "3"}}}}]), check=False)
    assert p.returncode != 0 and "TransactionCanceledException" in p.stderr
    out = aws("transact-get-items", "--transact-items", json.dumps([
        {"Get": {"TableName": t, "Key": {"pk": {"S": "k"}, "sk": {"N": "3"}}}}]))
    assert out["Responses"][0]["Item"]["g"] == {"S": "grp"}
    aws("update-table", "--table-name", t, "--attribute-definitions", "AttributeName=g,AttributeType=S",
        "--global-secondary-index-updates",
        json.dumps([{"Create": {"IndexName": "by-g", "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                                "Projection": {"ProjectionType": "ALL"}}}]))
    out = aws("query", "--table-name", t, "--index-name", "by-g", "--key-condition-expression", "g = :g",
              "--expression-attribute-values", json.dumps({":g": {"S": "grp"}}))
    assert out["Count"] == 2
    aws("update-time-to-live", "--table-name", t, "--time-to-live-specification", "Enabled=true,AttributeName=exp")
    assert aws("describe-time-to-live", "--table-name", t)["TimeToLiveDescription"]["TimeToLiveStatus"] == "ENABLED"
    aws("delete-table", "--table-name", t)
    p = aws("describe-table", "--table-name", t, check=False)
    assert p.returncode != 0 and "ResourceNotFoundException" in p.stderr
