"""Query and Scan through the boto3 client: key conditions, filters, projections, order,
Limit, pagination across pages (including the 1 MB page limit), Select COUNT, segments."""
import pytest
from botocore.exceptions import ClientError

from conftest import error_code, error_message


@pytest.fixture
def table(client, make_table):
    t = make_table(range=("sk", "S"))
    with_batches(client, t, [
        {"pk": {"S": "a"}, "sk": {"S": f"item#{i:03d}"}, "n": {"N": str(i)}, "odd": {"BOOL": i % 2 == 1}}
        for i in range(120)
    ] + [{"pk": {"S": "b"}, "sk": {"S": f"x{i}"}, "n": {"N": str(i)}} for i in range(5)])
    return t


def with_batches(client, t, items):
    for i in range(0, len(items), 25):
        client.batch_write_item(RequestItems={t: [{"PutRequest": {"Item": it}} for it in items[i:i + 25]]})


def q(client, t, expr, values, **kw):
    return client.query(TableName=t, KeyConditionExpression=expr, ExpressionAttributeValues=values, **kw)


def test_key_conditions(client, table):
    a = {":p": {"S": "a"}}
    assert q(client, table, "pk = :p", a)["Count"] == 120
    assert q(client, table, "pk = :p AND sk = :s", {**a, ":s": {"S": "item#005"}})["Count"] == 1
    assert q(client, table, "pk = :p AND sk < :s", {**a, ":s": {"S": "item#005"}})["Count"] == 5
    assert q(client, table, "pk = :p AND sk <= :s", {**a, ":s": {"S": "item#005"}})["Count"] == 6
    assert q(client, table, "pk = :p AND sk > :s", {**a, ":s": {"S": "item#115"}})["Count"] == 4
    assert q(client, table, "pk = :p AND sk >= :s", {**a, ":s": {"S": "item#115"}})["Count"] == 5
    out = q(client, table, "pk = :p AND sk BETWEEN :x AND :y", {**a, ":x": {"S": "item#010"}, ":y": {"S": "item#019"}})
    assert [i["sk"]["S"] for i in out["Items"]] == [f"item#{i:03d}" for i in range(10, 20)]
    assert q(client, table, "pk = :p AND begins_with(sk, :b)", {**a, ":b": {"S": "item#01"}})["Count"] == 10
    assert q(client, table, "#k = :p", a, ExpressionAttributeNames={"#k": "pk"})["Count"] == 120
    assert q(client, table, "pk = :p", {":p": {"S": "nope"}})["Items"] == []


def test_order_limit_and_pagination(client, table):
    a = {":p": {"S": "a"}}
    out = q(client, table, "pk = :p", a, ScanIndexForward=False, Limit=3)
    assert [i["sk"]["S"] for i in out["Items"]] == ["item#119", "item#118", "item#117"]
    assert out["LastEvaluatedKey"] == {"pk": {"S": "a"}, "sk": {"S": "item#117"}}
    out2 = q(client, table, "pk = :p", a, ScanIndexForward=False, Limit=3, ExclusiveStartKey=out["LastEvaluatedKey"])
    assert out2["Items"][0]["sk"]["S"] == "item#116"
    seen = []
    start = None
    pages = 0
    while True:
        kw = {"Limit": 7}
        if start:
            kw["ExclusiveStartKey"] = start
        out = q(client, table, "pk = :p", a, **kw)
        seen += [i["sk"]["S"] for i in out["Items"]]
        pages += 1
        start = out.get("LastEvaluatedKey")
        if not start:
            break
    assert seen == [f"item#{i:03d}" for i in range(120)]
    assert pages == 18
    paginator = client.get_paginator("query")
    items = [i for p in paginator.paginate(TableName=table, KeyConditionExpression="pk = :p",
                                           ExpressionAttributeValues=a, PaginationConfig={"PageSize": 50})
             for i in p["Items"]]
    assert len(items) == 120


def test_filter_projection_select(client, table):
    a = {":p": {"S": "a"}, ":t": {"BOOL": True}}
    out = q(client, table, "pk = :p", a, FilterExpression="odd = :t", Limit=10)
    assert out["Count"] == 5 and out["ScannedCount"] == 10
    out = q(client, table, "pk = :p", a, FilterExpression="odd = :t", ProjectionExpression="n")
    assert out["Count"] == 60 and all(set(i) == {"n"} for i in out["Items"])
    out = q(client, table, "pk = :p", a, FilterExpression="odd = :t", Select="COUNT")
    assert out["Count"] == 60 and "Items" not in out
    with pytest.raises(ClientError) as e:
        q(client, table, "pk = :p AND sk > :s", {":p": {"S": "a"}, ":s": {"S": "x"}, ":t": {"BOOL": True}},
          FilterExpression="sk = :t")
    assert "primary key attribute" in error_message(e).lower()


def test_one_megabyte_pages(client, make_table):
    t = make_table(range=("sk", "N"))
    blob = "x" * 100_000
    with_batches(client, t, [{"pk": {"S": "big"}, "sk": {"N": str(i)}, "v": {"S": blob}} for i in range(25)])
    out = q(client, t, "pk = :p", {":p": {"S": "big"}})
    assert 9 <= out["Count"] <= 11 and "LastEvaluatedKey" in out
    total = 0
    for page in client.get_paginator("query").paginate(TableName=t, KeyConditionExpression="pk = :p",
                                                        ExpressionAttributeValues={":p": {"S": "big"}}):
        total += page["Count"]
    assert total == 25
    scanned = sum(p["Count"] for p in client.get_paginator("scan").paginate(TableName=t))
    assert scanned == 25


def test_scan_segments_and_pagination(client, table):
    out = client.scan(TableName=table)
    assert out["Count"] == 125
    all_keys = set()
    for seg in range(4):
        start = None
        while True:
            kw = {"Segment": seg, "TotalSegments": 4, "Limit": 13}
            if start:
                kw["ExclusiveStartKey"] = start
            out = client.scan(TableName=table, **kw)
            for i in out["Items"]:
                k = (i["pk"]["S"], i["sk"]["S"])
                assert k not in all_keys
                all_keys.add(k)
            start = out.get("LastEvaluatedKey")
            if not start:
                break
    assert len(all_keys) == 125
    out = client.scan(TableName=table, FilterExpression="n >= :n", ExpressionAttributeValues={":n": {"N": "100"}}, Select="COUNT")
    assert out["Count"] == 20 and out["ScannedCount"] == 125
    with pytest.raises(ClientError) as e:
        client.scan(TableName=table, Segment=4, TotalSegments=4)
    assert error_code(e) == "ValidationException"


def test_query_errors(client, table):
    def fails(expr, values, **kw):
        with pytest.raises(ClientError) as e:
            q(client, table, expr, values, **kw)
        assert error_code(e) == "ValidationException", e.value
        return error_message(e)

    assert "missed key schema element" in fails("sk = :s", {":s": {"S": "x"}})
    assert "OR" in fails("pk = :p OR sk = :s", {":p": {"S": "a"}, ":s": {"S": "x"}})
    assert "type does not match" in fails("pk = :p", {":p": {"N": "1"}})
    assert "not supported" in fails("pk < :p", {":p": {"S": "a"}})
    assert "index" in fails("pk = :p", {":p": {"S": "a"}}, IndexName="nope")
