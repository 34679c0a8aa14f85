"""The legacy (pre-expression) parameters through boto3: Expected, AttributeUpdates,
KeyConditions, QueryFilter, ScanFilter, ConditionalOperator, AttributesToGet."""
import pytest
from botocore.exceptions import ClientError

from conftest import error_code, error_message


def test_legacy_parameters(client, make_table):
    t = make_table(range=("sk", "N"))
    client.put_item(TableName=t, Item={"pk": {"S": "a"}, "sk": {"N": "1"}, "v": {"N": "1"}},
                    Expected={"pk": {"Exists": False}})
    with pytest.raises(client.exceptions.ConditionalCheckFailedException):
        client.put_item(TableName=t, Item={"pk": {"S": "a"}, "sk": {"N": "1"}}, Expected={"pk": {"Exists": False}})
    client.put_item(TableName=t, Item={"pk": {"S": "a"}, "sk": {"N": "1"}, "v": {"N": "2"}},
                    Expected={"v": {"Value": {"N": "1"}}})
    for i in range(2, 10):
        client.put_item(TableName=t, Item={"pk": {"S": "a"}, "sk": {"N": str(i)}, "v": {"N": str(i)}, "tag": {"S": f"t{i % 2}"}})
    out = client.update_item(
        TableName=t, Key={"pk": {"S": "a"}, "sk": {"N": "1"}},
        AttributeUpdates={"v": {"Action": "ADD", "Value": {"N": "5"}}, "s": {"Action": "PUT", "Value": {"SS": ["x"]}},
                          "tag": {"Action": "DELETE"}},
        Expected={"v": {"ComparisonOperator": "GE", "AttributeValueList": [{"N": "2"}]}},
        ReturnValues="ALL_NEW")
    assert out["Attributes"]["v"] == {"N": "7"} and out["Attributes"]["s"] == {"SS": ["x"]}
    out = client.query(TableName=t, KeyConditions={
        "pk": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "a"}]},
        "sk": {"ComparisonOperator": "BETWEEN", "AttributeValueList": [{"N": "3"}, {"N": "8"}]}},
        QueryFilter={"tag": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "t1"}]}},
        AttributesToGet=["sk"])
    assert [i["sk"]["N"] for i in out["Items"]] == ["3", "5", "7"] and all(set(i) == {"sk"} for i in out["Items"])
    out = client.scan(TableName=t, ScanFilter={
        "v": {"ComparisonOperator": "GT", "AttributeValueList": [{"N": "6"}]},
        "tag": {"ComparisonOperator": "NULL"}}, ConditionalOperator="OR")
    assert sorted(i["sk"]["N"] for i in out["Items"]) == ["1", "7", "8", "9"]
    got = client.get_item(TableName=t, Key={"pk": {"S": "a"}, "sk": {"N": "2"}}, AttributesToGet=["v", "nope"])
    assert got["Item"] == {"v": {"N": "2"}}
    with pytest.raises(ClientError) as e:
        client.put_item(TableName=t, Item={"pk": {"S": "a"}, "sk": {"N": "1"}}, Expected={"pk": {"Exists": False}},
                        ConditionExpression="attribute_not_exists(pk)")
    assert error_code(e) == "ValidationException" and "Can not use both" in error_message(e)
