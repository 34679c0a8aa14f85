"""Differential test: one scripted sequence of DynamoDB operations, run against two
servers (or one server and a recorded golden file), results compared step by step.

    python differential.py --record dynalite_golden.json --endpoint http://127.0.0.1:4567
    python differential.py --compare dynalite_golden.json --endpoint http://127.0.0.1:8000
    python differential.py --endpoint A --against B          # both live

Results are normalised before comparison: response metadata, capacity and dates are
dropped, sets and Scan results (whose order is hash order, different in every
implementation) are sorted, errors compare by error code only (messages are reported, not
compared). Steps listed in KNOWN_DIFFERENCES are places where dynalite is known to differ
from DynamoDB; they are reported and do not fail the comparison.
"""
import argparse
import json
import os
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

T = "diff-main"     # hash + range (S, N)
H = "diff-hash"     # hash only (N)
G = "diff-gsi"      # with a GSI and an LSI


def S(v):
    return {"S": v}


def N(v):
    return {"N": str(v)}


def steps():
    yield "create T", "create_table", dict(
        TableName=T, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "N"}])
    yield "create H", "create_table", dict(
        TableName=H, ProvisionedThroughput={"ReadCapacityUnits": 1, "WriteCapacityUnits": 1},
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "N"}])
    yield "create G", "create_table", dict(
        TableName=G, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": t} for a, t in
                              [("pk", "S"), ("sk", "S"), ("email", "S"), ("rank", "N")]],
        GlobalSecondaryIndexes=[{"IndexName": "by-email", "Projection": {"ProjectionType": "ALL"},
                                 "KeySchema": [{"AttributeName": "email", "KeyType": "HASH"},
                                               {"AttributeName": "rank", "KeyType": "RANGE"}]}],
        LocalSecondaryIndexes=[{"IndexName": "by-rank", "Projection": {"ProjectionType": "KEYS_ONLY"},
                                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"},
                                              {"AttributeName": "rank", "KeyType": "RANGE"}]}])
    yield "create duplicate", "create_table", dict(
        TableName=H, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "N"}])
    yield "create bad attrs", "create_table", dict(
        TableName="diff-bad", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "N"}, {"AttributeName": "x", "AttributeType": "S"}])
    yield "list tables", "list_tables", {}
    yield "list tables limit", "list_tables", dict(Limit=2)
    yield "list tables start", "list_tables", dict(ExclusiveStartTableName="diff-hash")
    yield "describe missing", "describe_table", dict(TableName="diff-missing")

    # Items of every type
    full = {"pk": S("a"), "sk": N(1), "s": S("hello"), "n": N("-12.50"), "b": {"B": b"\x01\x02"},
            "bool": {"BOOL": False}, "null": {"NULL": True}, "ss": {"SS": ["z", "y"]}, "ns": {"NS": ["3", "1.5"]},
            "bs": {"BS": [b"a", b"b"]}, "l": {"L": [S("x"), N(2), {"M": {"k": S("v")}}]},
            "m": {"M": {"inner": {"M": {"deep": N(1)}}, "list": {"L": []}}}}
    yield "put full", "put_item", dict(TableName=T, Item=full)
    yield "get full", "get_item", dict(TableName=T, Key={"pk": S("a"), "sk": N(1)})
    yield "get projection", "get_item", dict(TableName=T, Key={"pk": S("a"), "sk": N(1)},
                                              ProjectionExpression="s, l[2].k, m.inner, #n",
                                              ExpressionAttributeNames={"#n": "n"})
    yield "get missing", "get_item", dict(TableName=T, Key={"pk": S("nope"), "sk": N(1)})
    yield "get bad key", "get_item", dict(TableName=T, Key={"pk": S("a")})
    yield "get wrong type", "get_item", dict(TableName=T, Key={"pk": S("a"), "sk": S("1")})
    yield "put return old", "put_item", dict(TableName=T, Item={"pk": S("a"), "sk": N(1), "v": N(1)}, ReturnValues="ALL_OLD")
    for i in range(2, 30):
        yield f"put {i}", "put_item", dict(TableName=T, Item={"pk": S("a"), "sk": N(i), "v": N(i % 7), "even": {"BOOL": i % 2 == 0},
                                                             "tag": S(f"t{i % 3}")})
    for i, sk in enumerate(["-5", "0.5", "1e3", "-0.001", "12345678901234567890"]):
        yield f"put num {sk}", "put_item", dict(TableName=T, Item={"pk": S("nums"), "sk": N(sk), "i": N(i)})
    yield "query nums order", "query", dict(TableName=T, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": S("nums")})
    yield "query nums desc", "query", dict(TableName=T, KeyConditionExpression="pk = :p", ScanIndexForward=False,
                                           ExpressionAttributeValues={":p": S("nums")})

    # Conditions
    cond = [
        ("attribute_not_exists(pk)", None),
        ("attribute_exists(pk)", None),
        ("v = :one", {":one": N(1)}),
        ("v <> :one", {":one": N(1)}),
        ("v BETWEEN :a AND :b", {":a": N(0), ":b": N(5)}),
        ("v IN (:a, :b)", {":a": N(1), ":b": N(9)}),
        ("missing <> :a", {":a": N(1)}),  # "missing" is a reserved word
        ("nothere <> :a", {":a": N(1)}),
        ("nothere = :a", {":a": N(1)}),
        ("NOT nothere = :a", {":a": N(1)}),
        ("nothere < :a OR NOT nothere >= :a", {":a": N(1)}),
        ("NOT v = :a", {":a": N(1)}),
        ("v < :s", {":s": S("x")}),
        ("size(v) = :one", {":one": N(1)}),
        ("attribute_type(v, :t)", {":t": S("N")}),
        ("begins_with(v, :s)", {":s": S("1")}),
        ("contains(v, :one)", {":one": N(1)}),
        ("v = :one AND (attribute_exists(x) OR NOT attribute_exists(y))", {":one": N(1)}),
    ]
    for expr, values in cond:
        kw = {"ExpressionAttributeValues": values} if values else {}
        yield f"cond put {expr}", "put_item", dict(TableName=T, Item={"pk": S("a"), "sk": N(1), "v": N(1)},
                                                     ConditionExpression=expr, **kw)
    yield "cond delete fails", "delete_item", dict(TableName=T, Key={"pk": S("a"), "sk": N(1)},
                                                   ConditionExpression="v = :two", ExpressionAttributeValues={":two": N(2)})
    yield "cond bad syntax", "put_item", dict(TableName=T, Item={"pk": S("a"), "sk": N(1)}, ConditionExpression="v = = :a",
                                              ExpressionAttributeValues={":a": N(1)})
    yield "cond undefined value", "put_item", dict(TableName=T, Item={"pk": S("a"), "sk": N(1)}, ConditionExpression="v = :zz")
    yield "cond unused value", "put_item", dict(TableName=T, Item={"pk": S("a"), "sk": N(1)}, ConditionExpression="attribute_exists(v)",
                                                ExpressionAttributeValues={":a": N(1)})
    yield "cond unused name", "put_item", dict(TableName=T, Item={"pk": S("a"), "sk": N(1)}, ConditionExpression="attribute_exists(v)",
                                               ExpressionAttributeNames={"#a": "a"})

    # Updates
    k = {"pk": S("u"), "sk": N(1)}
    yield "update create", "update_item", dict(
        TableName=T, Key=k, ReturnValues="ALL_NEW",
        UpdateExpression="SET c = if_not_exists(c, :z) + :one, l = list_append(if_not_exists(l, :e), :l), m = :m ADD s :ss, n :five",
        ExpressionAttributeValues={":z": N(0), ":one": N(1), ":e": {"L": []}, ":l": {"L": [S("a")]}, ":m": {"M": {"x": N(1)}},
                                   ":ss": {"SS": ["p", "q"]}, ":five": N(5)})
    yield "update nested", "update_item", dict(
        TableName=T, Key=k, ReturnValues="UPDATED_NEW",
        UpdateExpression="SET m.y = :two, c = c - :one, l[0] = :b REMOVE m.x DELETE s :p ADD n :neg",
        ExpressionAttributeValues={":two": N(2), ":one": N(1), ":b": S("b"), ":p": {"SS": ["p"]}, ":neg": N("-5.5")})
    yield "update old", "update_item", dict(TableName=T, Key=k, ReturnValues="UPDATED_OLD", UpdateExpression="REMOVE l[0], n")
    yield "update all old", "update_item", dict(TableName=T, Key=k, ReturnValues="ALL_OLD", UpdateExpression="SET z = :z",
                                                ExpressionAttributeValues={":z": {"NULL": True}})
    yield "update get", "get_item", dict(TableName=T, Key=k)
    yield "update key attr", "update_item", dict(TableName=T, Key=k, UpdateExpression="SET pk = :v", ExpressionAttributeValues={":v": S("x")})
    yield "update type err", "update_item", dict(TableName=T, Key=k, UpdateExpression="SET m = m + :one", ExpressionAttributeValues={":one": N(1)})
    yield "update missing operand", "update_item", dict(TableName=T, Key=k, UpdateExpression="SET q = nothing + :one",
                                                        ExpressionAttributeValues={":one": N(1)})
    yield "update bad path", "update_item", dict(TableName=T, Key=k, UpdateExpression="SET nope.deeper = :one", ExpressionAttributeValues={":one": N(1)})
    yield "update overlap", "update_item", dict(TableName=T, Key=k, UpdateExpression="SET m = :one, m.y = :one", ExpressionAttributeValues={":one": N(1)})
    yield "update twice set", "update_item", dict(TableName=T, Key=k, UpdateExpression="SET a = :one SET b = :one", ExpressionAttributeValues={":one": N(1)})
    yield "update add string", "update_item", dict(TableName=T, Key=k, UpdateExpression="ADD a :s", ExpressionAttributeValues={":s": S("x")})
    yield "update cond fail", "update_item", dict(TableName=T, Key={"pk": S("nope"), "sk": N(1)}, UpdateExpression="SET a = :s",
                                                  ConditionExpression="attribute_exists(pk)", ExpressionAttributeValues={":s": S("x")})
    yield "update key only", "update_item", dict(TableName=T, Key={"pk": S("bare"), "sk": N(1)}, ReturnValues="ALL_NEW")
    yield "delete return", "delete_item", dict(TableName=T, Key={"pk": S("bare"), "sk": N(1)}, ReturnValues="ALL_OLD")
    yield "delete again", "delete_item", dict(TableName=T, Key={"pk": S("bare"), "sk": N(1)}, ReturnValues="ALL_OLD")

    # Queries
    a = {":p": S("a")}
    yield "q all", "query", dict(TableName=T, KeyConditionExpression="pk = :p", ExpressionAttributeValues=a)
    yield "q between", "query", dict(TableName=T, KeyConditionExpression="pk = :p AND sk BETWEEN :x AND :y",
                                     ExpressionAttributeValues={**a, ":x": N(5), ":y": N(9)})
    yield "q lt desc limit", "query", dict(TableName=T, KeyConditionExpression="pk = :p AND sk < :x", ScanIndexForward=False, Limit=3,
                                           ExpressionAttributeValues={**a, ":x": N(20)})
    yield "q page 2", "query", dict(TableName=T, KeyConditionExpression="pk = :p AND sk < :x", ScanIndexForward=False, Limit=3,
                                    ExclusiveStartKey={"pk": S("a"), "sk": N(17)}, ExpressionAttributeValues={**a, ":x": N(20)})
    yield "q filter", "query", dict(TableName=T, KeyConditionExpression="pk = :p", FilterExpression="even = :t AND v > :two",
                                    ExpressionAttributeValues={**a, ":t": {"BOOL": True}, ":two": N(2)})
    yield "q filter limit", "query", dict(TableName=T, KeyConditionExpression="pk = :p", FilterExpression="tag = :t", Limit=5,
                                          ExpressionAttributeValues={**a, ":t": S("t1")})
    yield "q count", "query", dict(TableName=T, KeyConditionExpression="pk = :p", Select="COUNT", FilterExpression="v = :z",
                                   ExpressionAttributeValues={**a, ":z": N(0)})
    yield "q projection", "query", dict(TableName=T, KeyConditionExpression="pk = :p AND sk >= :x", ProjectionExpression="sk, tag",
                                        ExpressionAttributeValues={**a, ":x": N(25)})
    yield "q missing key", "query", dict(TableName=T, KeyConditionExpression="sk = :x", ExpressionAttributeValues={":x": N(1)})
    yield "q or", "query", dict(TableName=T, KeyConditionExpression="pk = :p OR sk = :x", ExpressionAttributeValues={**a, ":x": N(1)})
    yield "q type", "query", dict(TableName=T, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": N(1)})
    yield "q filter on key", "query", dict(TableName=T, KeyConditionExpression="pk = :p", FilterExpression="sk = :x",
                                           ExpressionAttributeValues={**a, ":x": N(1)})
    yield "q bad index", "query", dict(TableName=T, IndexName="nope", KeyConditionExpression="pk = :p", ExpressionAttributeValues=a)

    # Scans
    yield "scan all", "scan", dict(TableName=T)
    yield "scan filter", "scan", dict(TableName=T, FilterExpression="tag = :t OR contains(ss, :z)",
                                      ExpressionAttributeValues={":t": S("t2"), ":z": S("z")})
    yield "scan count", "scan", dict(TableName=T, Select="COUNT")
    yield "scan projection", "scan", dict(TableName=T, ProjectionExpression="pk", FilterExpression="begins_with(pk, :n)",
                                          ExpressionAttributeValues={":n": S("num")})
    yield "scan bad segment", "scan", dict(TableName=T, Segment=3, TotalSegments=2)

    # Indexes
    for i in range(12):
        yield f"put G {i}", "put_item", dict(TableName=G, Item={"pk": S(f"p{i % 2}"), "sk": S(f"s{i:02d}"),
                                                             "email": S(f"e{i % 3}"), "rank": N(100 - i), "x": S("y")})
    yield "put G sparse", "put_item", dict(TableName=G, Item={"pk": S("p0"), "sk": S("sparse")})
    yield "put G bad index type", "put_item", dict(TableName=G, Item={"pk": S("p0"), "sk": S("bad"), "rank": S("high")})
    yield "gsi query", "query", dict(TableName=G, IndexName="by-email", KeyConditionExpression="email = :e AND #r > :r",
                                     ExpressionAttributeNames={"#r": "rank"}, ExpressionAttributeValues={":e": S("e1"), ":r": N(90)})
    yield "gsi query limit", "query", dict(TableName=G, IndexName="by-email", KeyConditionExpression="email = :e", Limit=2,
                                           ExpressionAttributeValues={":e": S("e0")})
    yield "lsi query", "query", dict(TableName=G, IndexName="by-rank", KeyConditionExpression="pk = :p AND #r <= :r",
                                     ExpressionAttributeNames={"#r": "rank"}, ExpressionAttributeValues={":p": S("p1"), ":r": N(95)})
    yield "gsi scan count", "scan", dict(TableName=G, IndexName="by-email", Select="COUNT")
    yield "update G moves index", "update_item", dict(TableName=G, Key={"pk": S("p0"), "sk": S("s00")}, UpdateExpression="SET email = :e",
                                                      ExpressionAttributeValues={":e": S("e9")})
    yield "gsi after update", "query", dict(TableName=G, IndexName="by-email", KeyConditionExpression="email = :e",
                                            ExpressionAttributeValues={":e": S("e9")})

    # More expression semantics on one item
    e = {"pk": S("sem"), "sk": N(1)}
    sem_item = {
        **e, "l": {"L": [S("a"), N(1), {"L": [S("x")]}, {"M": {"k": S("v")}}]}, "bin": {"B": b"\x01\x02\x03"},
        "bs": {"BS": [b"\x01", b"\x02"]}, "ns": {"NS": ["1", "2", "3"]}, "mm": {"M": {"a": {"M": {"b": N(5)}}}},
        "str": S("hello world"), "e": S(""), "f": {"BOOL": True}, "z": {"NULL": True}}
    yield "sem put", "put_item", dict(TableName=T, Item=sem_item)
    for cond, values in [
        ("contains(l, :a)", {":a": S("a")}),
        ("contains(l, :one)", {":one": N(1)}),
        ("contains(l, :lx)", {":lx": {"L": [S("x")]}}),
        ("contains(bin, :b)", {":b": {"B": b"\x02"}}),
        ("contains(bs, :b)", {":b": {"B": b"\x02"}}),
        ("contains(ns, :n)", {":n": N(2)}),
        ("contains(ns, :s)", {":s": S("2")}),
        ("contains(str, :s)", {":s": S("o w")}),
        ("begins_with(bin, :b)", {":b": {"B": b"\x01"}}),
        ("begins_with(str, :s)", {":s": S("hello")}),
        ("size(l) = :n", {":n": N(4)}),
        ("size(bin) = :n", {":n": N(3)}),
        ("size(mm) = :n", {":n": N(1)}),
        ("size(ns) = :n", {":n": N(3)}),
        ("size(e) = :n", {":n": N(0)}),
        ("size(f) = :n", {":n": N(1)}),
        ("mm.a.b = :n", {":n": N(5)}),
        ("l[2][0] = :x", {":x": S("x")}),
        ("l[3].k = :v", {":v": S("v")}),
        ("l[9] = :v", {":v": S("v")}),
        ("attribute_type(z, :t)", {":t": S("NULL")}),
        ("attribute_type(ns, :t)", {":t": S("NS")}),
        ("f = :t AND z = :z", {":t": {"BOOL": True}, ":z": {"NULL": True}}),
        ("str > :a AND str < :z", {":a": S("a"), ":z": S("z")}),
        ("bin > :b", {":b": {"B": b"\x01"}}),
        ("ns = :ns", {":ns": {"NS": ["3", "2", "1"]}}),
        ("mm = :m", {":m": {"M": {"a": {"M": {"b": N(5)}}}}}),
        ("l IN (:l1, :l2)", {":l1": {"L": []}, ":l2": {"L": [S("a")]}}),
        ("str BETWEEN :a AND :b", {":a": S("hello"), ":b": S("hello world")}),
    ]:
        # Rewrites the same item when the condition holds: no side effect either way.
        yield f"sem {cond}", "put_item", dict(TableName=T, Item=sem_item, ConditionExpression=cond,
                                              ExpressionAttributeValues=values)
    yield "sem update list", "update_item", dict(
        TableName=T, Key=e, ReturnValues="ALL_NEW",
        UpdateExpression="SET l[1] = :n, l[8] = :x, mm.a.c = :n, mm.d = list_append(:l, :l) REMOVE l[0], l[2] ADD ns :ns DELETE bs :bs",
        ExpressionAttributeValues={":n": N(7), ":x": S("end"), ":l": {"L": [N(1)]}, ":ns": {"NS": ["4", "1"]},
                                   ":bs": {"BS": [b"\x01"]}})
    yield "sem updated old", "update_item", dict(
        TableName=T, Key=e, ReturnValues="UPDATED_OLD", UpdateExpression="SET mm.a.b = :n, str = :s",
        ExpressionAttributeValues={":n": N(6), ":s": S("bye")})
    yield "sem add new set", "update_item", dict(
        TableName=T, Key=e, ReturnValues="UPDATED_NEW", UpdateExpression="ADD newset :s, newnum :n",
        ExpressionAttributeValues={":s": {"SS": ["q"]}, ":n": N("-1.5")})
    yield "sem delete missing", "update_item", dict(
        TableName=T, Key=e, ReturnValues="UPDATED_NEW", UpdateExpression="DELETE nothing_here :s",
        ExpressionAttributeValues={":s": {"SS": ["q"]}})
    yield "sem add wrong set", "update_item", dict(
        TableName=T, Key=e, UpdateExpression="ADD newset :s", ExpressionAttributeValues={":s": {"NS": ["1"]}})
    yield "sem list index on map", "update_item", dict(
        TableName=T, Key=e, UpdateExpression="SET mm[0] = :s", ExpressionAttributeValues={":s": S("x")})
    yield "sem if_not_exists existing", "update_item", dict(
        TableName=T, Key=e, ReturnValues="UPDATED_NEW", UpdateExpression="SET str = if_not_exists(str, :s), g = if_not_exists(g, :s)",
        ExpressionAttributeValues={":s": S("default")})
    yield "sem get", "get_item", dict(TableName=T, Key=e)
    yield "sem projection list", "get_item", dict(TableName=T, Key=e, ProjectionExpression="l[0], l[1], mm.a, ns")

    # Index pagination and order
    yield "gsi desc page", "query", dict(TableName=G, IndexName="by-email", KeyConditionExpression="email = :e",
                                         ScanIndexForward=False, Limit=2, ExpressionAttributeValues={":e": S("e2")})
    yield "gsi desc page 2", "query", dict(TableName=G, IndexName="by-email", KeyConditionExpression="email = :e",
                                           ScanIndexForward=False, Limit=2, ExpressionAttributeValues={":e": S("e2")},
                                           ExclusiveStartKey={"pk": S("p1"), "sk": S("s05"), "email": S("e2"), "rank": N(95)})
    yield "lsi filter", "query", dict(TableName=G, IndexName="by-rank", KeyConditionExpression="pk = :p",
                                      FilterExpression="x = :y", ExpressionAttributeValues={":p": S("p0"), ":y": S("y")})
    yield "scan limit filter", "scan", dict(TableName=G, Limit=5, FilterExpression="email = :e",
                                            ExpressionAttributeValues={":e": S("e1")}, Select="COUNT")
    yield "query select specific", "query", dict(TableName=G, KeyConditionExpression="pk = :p", Select="SPECIFIC_ATTRIBUTES",
                                                 ProjectionExpression="sk", ExpressionAttributeValues={":p": S("p1")})
    yield "query count projection", "query", dict(TableName=G, KeyConditionExpression="pk = :p", Select="COUNT",
                                                  ProjectionExpression="sk", ExpressionAttributeValues={":p": S("p1")})

    # Batches
    yield "batch write", "batch_write_item", dict(RequestItems={H: [{"PutRequest": {"Item": {"id": N(i), "v": S("x" * i)}}} for i in range(10)]})
    yield "batch write delete", "batch_write_item", dict(RequestItems={H: [{"DeleteRequest": {"Key": {"id": N(3)}}}]})
    yield "batch get", "batch_get_item", dict(RequestItems={H: {"Keys": [{"id": N(i)} for i in (1, 3, 5)], "ProjectionExpression": "id"}})
    yield "batch dup", "batch_write_item", dict(RequestItems={H: [{"PutRequest": {"Item": {"id": N(1)}}}, {"PutRequest": {"Item": {"id": N(1)}}}]})
    yield "batch too many", "batch_write_item", dict(RequestItems={H: [{"PutRequest": {"Item": {"id": N(i)}}} for i in range(26)]})
    yield "batch get dup", "batch_get_item", dict(RequestItems={H: {"Keys": [{"id": N(1)}, {"id": N(1)}]}})
    yield "scan H", "scan", dict(TableName=H)

    # Validation of values
    for name, v in [("empty set", {"SS": []}), ("dup set", {"SS": ["a", "a"]}), ("bad number", N("1x")),
                    ("too precise", N("1" * 39)), ("too big", N("1e126")), ("empty string", S("")),
                    ("empty key", None)]:
        item = {"pk": S("v"), "sk": N(1), "x": v} if v is not None else {"pk": S(""), "sk": N(1)}
        yield f"value {name}", "put_item", dict(TableName=T, Item=item)
    yield "item too big", "put_item", dict(TableName=T, Item={"pk": S("big"), "sk": N(1), "x": S("x" * (400 * 1024 + 1))})

    # UpdateTable adds a GSI
    yield "update table gsi", "update_table", dict(
        TableName=H, AttributeDefinitions=[{"AttributeName": "v", "AttributeType": "S"}],
        GlobalSecondaryIndexUpdates=[{"Create": {"IndexName": "by-v", "KeySchema": [{"AttributeName": "v", "KeyType": "HASH"}],
                                                 "Projection": {"ProjectionType": "ALL"},
                                                 "ProvisionedThroughput": {"ReadCapacityUnits": 1, "WriteCapacityUnits": 1}}}])
    yield "describe H", "describe_table", dict(TableName=H)
    yield "delete T", "delete_table", dict(TableName=T)
    yield "get deleted", "get_item", dict(TableName=T, Key={"pk": S("a"), "sk": N(1)})


KNOWN_DIFFERENCES = {
    # dynalite ignores GlobalSecondaryIndexUpdates (Create): DynamoDB adds the index and
    # backfills it, as the box does, so the box reports the new index and dynalite does not.
    "update table gsi": "dynalite ignores GlobalSecondaryIndexUpdates.Create; DynamoDB and the box add the index",
    "describe H": "dynalite ignores GlobalSecondaryIndexUpdates.Create; DynamoDB and the box add the index",
    # DynamoDB documents that with a ProjectionExpression, Select can only be
    # SPECIFIC_ATTRIBUTES; dynalite accepts COUNT.
    "query count projection": "dynalite accepts Select=COUNT with a ProjectionExpression; DynamoDB and the box refuse it",
    # dynalite applies REMOVE of several list elements one after the other, so later
    # indexes shift; DynamoDB's documented example (REMOVE RelatedItems[1], RelatedItems[2])
    # removes the elements at those indexes of the item before the update, as the box does.
    "sem update list": "REMOVE l[0], l[2]: dynalite shifts indexes between removals; the box uses the original indexes",
    "sem get": "consequence of 'sem update list'",
    "sem projection list": "consequence of 'sem update list'",
    # dynalite treats an empty string as having no size (a JavaScript falsy value);
    # size("") is 0.
    "sem size(e) = :n": "dynalite gives no size for an empty string; the box gives 0",
    # dynalite compares maps (and lists) for equality as never equal; the box compares
    # them by value.
    "sem mm = :m": "dynalite never finds two maps equal; the box compares them by value",
    # dynalite's contains() on a list only looks for scalar elements; the box finds any
    # element equal to the operand. Not checked against DynamoDB.
    "sem contains(l, :lx)": "contains(list, list-operand): dynalite only matches scalar elements; the box matches any equal element",
}

DROP = {"ResponseMetadata", "ConsumedCapacity", "CreationDateTime", "TableArn", "TableId", "TableSizeBytes",
        "IndexSizeBytes", "IndexArn", "LastIncreaseDateTime", "LastDecreaseDateTime", "LastUpdateToPayPerRequestDateTime",
        "NumberOfDecreasesToday", "TableStatus", "DeletionProtectionEnabled", "TableThroughputModeSummary",
        "WarmThroughput", "ItemCount", "IndexStatus", "Backfilling"}


def normalise(v, op=None):
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if k in DROP:
                continue
            if k in ("SS", "NS", "BS") and isinstance(x, list):
                out[k] = sorted((normalise(e) for e in x), key=lambda e: json.dumps(e, sort_keys=True))
                continue
            out[k] = normalise(x)
        if "Responses" in out and isinstance(out["Responses"], dict):
            # BatchGetItem returns each table's items in no particular order.
            out["Responses"] = {t: sorted(v, key=lambda i: json.dumps(i, sort_keys=True)) for t, v in out["Responses"].items()}
        if op == "scan" and "Items" in out:
            out["Items"] = sorted(out["Items"], key=lambda i: json.dumps(i, sort_keys=True, default=repr))
            out.pop("LastEvaluatedKey", None)
        for key in ("AttributeDefinitions", "GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
            if key in out and isinstance(out[key], list):
                out[key] = sorted(out[key], key=lambda e: json.dumps(e, sort_keys=True))
        return out
    if isinstance(v, list):
        return [normalise(x) for x in v]
    if isinstance(v, (bytes, bytearray)):
        return {"bytes": v.hex()}
    return v


def run(endpoint):
    c = boto3.client("dynamodb", endpoint_url=endpoint, region_name="ap-northeast-1",
                     aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "AKIDDIFF"),
                     aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "secret"),
                     config=Config(retries={"max_attempts": 1}, parameter_validation=False))
    results = []
    for name, op, params in steps():
        try:
            out = {"ok": normalise(getattr(c, op)(**params), op)}
        except ClientError as e:
            out = {"error": e.response["Error"]["Code"], "message": e.response["Error"].get("Message", "")}
        results.append({"step": name, "op": op, **out})
    return results


def compare(mine, theirs):
    """Returns (unexpected differences, known differences, message differences)."""
    bad, known, messages = [], [], []
    for a, b in zip(mine, theirs):
        assert a["step"] == b["step"], (a["step"], b["step"])
        sa = {k: v for k, v in a.items() if k != "message"}
        sb = {k: v for k, v in b.items() if k != "message"}
        if sa != sb:
            entry = (a["step"], sa, sb)
            (known if a["step"] in KNOWN_DIFFERENCES else bad).append(entry)
        elif "error" in a and a.get("message") != b.get("message"):
            messages.append((a["step"], a["error"], a.get("message"), b.get("message")))
    if len(mine) != len(theirs):
        bad.append(("<length>", len(mine), len(theirs)))
    return bad, known, messages


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--against")
    p.add_argument("--record")
    p.add_argument("--compare")
    args = p.parse_args()
    mine = run(args.endpoint)
    if args.record:
        with open(args.record, "w") as f:
            json.dump(mine, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"recorded {len(mine)} steps to {args.record}")
        return 0
    if args.compare:
        with open(args.compare) as f:
            theirs = json.load(f)
    else:
        theirs = run(args.against)
    bad, known, messages = compare(mine, theirs)
    for step, a, b in known:
        print(f"KNOWN  {step}: {KNOWN_DIFFERENCES[step]}")
    for step, code, ma, mb in messages:
        print(f"MSG    {step} ({code}):\n         ours:  {ma}\n         other: {mb}")
    for entry in bad:
        print(f"DIFF   {entry[0]}:\n         ours:  {json.dumps(entry[1], default=repr)[:600]}\n         other: {json.dumps(entry[2], default=repr)[:600]}")
    print(f"{len(mine)} steps, {len(bad)} unexpected differences, {len(known)} known, {len(messages)} message differences")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
