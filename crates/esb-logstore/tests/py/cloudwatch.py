"""Drives the log store's CloudWatch Logs API with real clients (boto3's `logs` client and
the stock AWS CLI v2, /usr/bin/aws), asserting exact results.

Usage: cloudwatch.py SCENARIO
Settings come from the environment: CW_URL (the main listener), CW_WORKER_URL (the
workers' listener), CW_AK/CW_SK (the box's key pair), CW_FN_AK/CW_FN_SK (a function's key
with only the basic execution role), CW_READER_AK/CW_READER_SK (a function allowed to read).
Each scenario raises (exit status 1) on the first mismatch.
"""

import json
import os
import subprocess
import sys
import threading
import time

import boto3
import botocore
import requests
from botocore.config import Config

URL = os.environ.get("CW_URL", "")
REGION = "eu-west-3"  # any region is accepted
AWS_CLI = "/usr/bin/aws"


def client(ak=None, sk=None, url=None, unsigned=False):
    cfg = Config(retries={"max_attempts": 1}, signature_version=botocore.UNSIGNED) if unsigned \
        else Config(retries={"max_attempts": 1})
    return boto3.client(
        "logs",
        endpoint_url=url or URL,
        region_name=REGION,
        aws_access_key_id=ak or os.environ["CW_AK"],
        aws_secret_access_key=sk or os.environ["CW_SK"],
        config=cfg,
    )


def now_ms():
    return int(time.time() * 1000)


def error_of(fn, *args, **kwargs):
    """The (code, message) of the ClientError `fn` raises; fails if it succeeds."""
    try:
        fn(*args, **kwargs)
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"], e.response["Error"]["Message"]
    raise AssertionError(f"{fn.__name__} {kwargs} succeeded; an error was expected")


def expect_error(code, fn, *args, message=None, **kwargs):
    got = error_of(fn, *args, **kwargs)
    assert got[0] == code, f"{fn.__name__}: got {got}, want {code}"
    if message is not None:
        assert got[1] == message, f"{fn.__name__}: message {got[1]!r}, want {message!r}"
    return got


def messages(events):
    return [e["message"] for e in events]


def scenario_api():
    logs = client()
    g = "/app/orders"
    logs.create_log_group(logGroupName=g)
    expect_error("ResourceAlreadyExistsException", logs.create_log_group, logGroupName=g,
                 message="The specified log group already exists")
    expect_error("InvalidParameterException", logs.create_log_group, logGroupName="bad name!")
    expect_error("ResourceNotFoundException", logs.create_log_stream,
                 logGroupName="/app/none", logStreamName="s",
                 message="The specified log group does not exist.")
    logs.create_log_stream(logGroupName=g, logStreamName="web-1")
    logs.create_log_stream(logGroupName=g, logStreamName="web-2")
    expect_error("ResourceAlreadyExistsException", logs.create_log_stream,
                 logGroupName=g, logStreamName="web-1",
                 message="The specified log stream already exists")
    expect_error("ResourceNotFoundException", logs.put_log_events, logGroupName=g,
                 logStreamName="web-9", logEvents=[{"timestamp": now_ms(), "message": "x"}],
                 message="The specified log stream does not exist.")
    expect_error("ResourceNotFoundException", logs.put_log_events, logGroupName="/app/none",
                 logStreamName="web-1", logEvents=[{"timestamp": now_ms(), "message": "x"}],
                 message="The specified log group does not exist.")

    t = now_ms() - 60_000
    lines = [
        "[INFO] order 1 created",
        "[ERROR] order 2 failed: card declined",
        "[WARN] order 3 slow payment",
        "[ERROR] order 4 failed: out of stock",
        "[INFO] order 5 created",
        "[INFO] order 6 created",
    ]
    r = logs.put_log_events(logGroupName=g, logStreamName="web-1",
                            logEvents=[{"timestamp": t + i, "message": m}
                                       for i, m in enumerate(lines)])
    assert "rejectedLogEventsInfo" not in r, r
    assert r["nextSequenceToken"], r
    # Equal timestamps keep the order they were sent in.
    logs.put_log_events(logGroupName=g, logStreamName="web-2",
                        logEvents=[{"timestamp": t + 10, "message": "same ms a"},
                                   {"timestamp": t + 10, "message": "same ms b"},
                                   {"timestamp": t + 10, "message": "same ms a"}])

    # Batch rules, as AWS.
    expect_error("InvalidParameterException", logs.put_log_events, logGroupName=g,
                 logStreamName="web-1",
                 logEvents=[{"timestamp": t + 5, "message": "b"}, {"timestamp": t, "message": "a"}],
                 message="Log events in a single PutLogEvents request must be in chronological order.")
    expect_error("InvalidParameterException", logs.put_log_events, logGroupName=g,
                 logStreamName="web-1",
                 logEvents=[{"timestamp": t - 90_000_000, "message": "a"},
                            {"timestamp": t, "message": "b"}],
                 message="The batch of log events in a single PutLogEvents request cannot span more than 24 hours.")
    big = "x" * (1_048_576 // 2)
    code, msg = expect_error("InvalidParameterException", logs.put_log_events, logGroupName=g,
                             logStreamName="web-1",
                             logEvents=[{"timestamp": t, "message": big},
                                        {"timestamp": t, "message": big}])
    assert msg == "Upload too large: 1048628 bytes exceeds limit of 1048576", msg
    expect_error("InvalidParameterException", logs.put_log_events, logGroupName=g,
                 logStreamName="web-1",
                 logEvents=[{"timestamp": t, "message": "m"}] * 10_001)
    # 10,000 events of exactly the byte limit are one valid batch.
    n = 10_000
    each = 1_048_576 // n - 26
    r = logs.put_log_events(logGroupName=g, logStreamName="web-2",
                            logEvents=[{"timestamp": t + 20, "message": "y" * each}] * n)
    assert "rejectedLogEventsInfo" not in r, r
    # Too old, too new: rejected by index, the rest stored.
    old = now_ms() - 14 * 86_400_000 - 12 * 3_600_000
    r = logs.put_log_events(logGroupName=g, logStreamName="web-1", logEvents=[
        {"timestamp": old, "message": "too old 1"},
        {"timestamp": old + 1, "message": "too old 2"},
        {"timestamp": old + 23 * 3_600_000, "message": "kept from the past"},
    ])
    assert r["rejectedLogEventsInfo"] == {"tooOldLogEventEndIndex": 2}, r
    soon = now_ms() + 3 * 3_600_000
    r = logs.put_log_events(logGroupName=g, logStreamName="web-1", logEvents=[
        {"timestamp": now_ms(), "message": "kept now"},
        {"timestamp": soon, "message": "too new"},
    ])
    assert r["rejectedLogEventsInfo"] == {"tooNewLogEventStartIndex": 1}, r

    # GetLogEvents: the newest page by default, tokens both ways, the same token at the ends.
    all_web1 = ["kept from the past"] + lines + ["kept now"]
    r = logs.get_log_events(logGroupName=g, logStreamName="web-1", limit=3)
    assert messages(r["events"]) == all_web1[-3:], r["events"]
    e = r["events"][0]
    assert set(e) == {"timestamp", "message", "ingestionTime"}, e
    assert e["timestamp"] == t + 4 and e["ingestionTime"] >= now_ms() - 60_000, e
    assert r["nextForwardToken"].startswith("f/") and r["nextBackwardToken"].startswith("b/"), r
    seen = messages(r["events"])
    token = r["nextBackwardToken"]
    while True:
        r = logs.get_log_events(logGroupName=g, logStreamName="web-1", limit=3, nextToken=token)
        if r["nextBackwardToken"] == token:
            assert r["events"] == [], r
            break
        seen = messages(r["events"]) + seen
        token = r["nextBackwardToken"]
    assert seen == all_web1, seen
    r = logs.get_log_events(logGroupName=g, logStreamName="web-1", limit=4, startFromHead=True)
    got = messages(r["events"])
    token = r["nextForwardToken"]
    while True:
        r = logs.get_log_events(logGroupName=g, logStreamName="web-1", limit=4, nextToken=token)
        if r["nextForwardToken"] == token:
            assert r["events"] == [], r
            break
        got += messages(r["events"])
        token = r["nextForwardToken"]
    assert got == all_web1, got
    # A new event shows up after the last forward token.
    logs.put_log_events(logGroupName=g, logStreamName="web-1",
                        logEvents=[{"timestamp": now_ms(), "message": "later"}])
    r = logs.get_log_events(logGroupName=g, logStreamName="web-1", nextToken=token)
    assert messages(r["events"]) == ["later"], r
    # startTime/endTime ([start, end)), logGroupIdentifier as an ARN.
    arn = f"arn:aws:logs:{REGION}:000000000000:log-group:{g}:*"
    r = logs.get_log_events(logGroupIdentifier=arn, logStreamName="web-1",
                            startTime=t + 1, endTime=t + 3, startFromHead=True)
    assert messages(r["events"]) == lines[1:3], r
    r = logs.get_log_events(logGroupName=g, logStreamName="web-2", startFromHead=True, limit=3)
    assert messages(r["events"]) == ["same ms a", "same ms b", "same ms a"], r
    expect_error("ResourceNotFoundException", logs.get_log_events, logGroupName=g,
                 logStreamName="web-9", message="The specified log stream does not exist.")

    # FilterLogEvents: terms (all, case-sensitive), phrases, ?terms, -terms.
    def flt(pattern, **kw):
        out = []
        args = dict(logGroupName=g, filterPattern=pattern, **kw)
        while True:
            r = logs.filter_log_events(**args)
            out += r["events"]
            if "nextToken" not in r:
                return out
            args["nextToken"] = r["nextToken"]

    assert messages(flt("ERROR")) == [lines[1], lines[3]]
    assert messages(flt("error")) == []
    assert messages(flt("ERROR stock")) == [lines[3]]
    assert messages(flt('"card declined"')) == [lines[1]]
    assert messages(flt('"declined card"')) == []
    assert messages(flt("?WARN ?stock")) == [lines[2], lines[3]]
    assert messages(flt("order -INFO")) == [lines[1], lines[2], lines[3]]
    assert messages(flt("created", logStreamNames=["web-2"])) == []
    assert messages(flt("same", logStreamNamePrefix="web-")) == ["same ms a", "same ms b", "same ms a"]
    assert messages(flt("order", startTime=t + 1, endTime=t + 4)) == lines[1:4]
    ev = flt('"order 2"')[0]
    assert ev["logStreamName"] == "web-1" and ev["timestamp"] == t + 1 and ev["eventId"].isdigit(), ev
    # Pagination by nextToken, limit 2: every event once, in time order.
    paged = messages(flt("order", limit=2))
    assert paged == lines, paged
    r = logs.filter_log_events(logGroupName=g, filterPattern="order", limit=2)
    assert len(r["events"]) == 2 and "nextToken" in r, r
    everything = flt("")
    assert len(everything) == len(all_web1) + 1 + 3 + 10_000, len(everything)
    expect_error("InvalidParameterException", logs.filter_log_events, logGroupName=g,
                 filterPattern='{ $.level = "ERROR" }')
    expect_error("ResourceNotFoundException", logs.filter_log_events, logGroupName="/app/none",
                 message="The specified log group does not exist.")

    # Describe: prefixes and pagination.
    for name in ["/app/a", "/app/b", "/other/c"]:
        logs.create_log_group(logGroupName=name)
    r = logs.describe_log_groups(logGroupNamePrefix="/app/")
    assert [x["logGroupName"] for x in r["logGroups"]] == ["/app/a", "/app/b", "/app/orders"], r
    grp = r["logGroups"][2]
    assert grp["arn"] == f"arn:aws:logs:{REGION}:000000000000:log-group:/app/orders:*", grp
    assert grp["creationTime"] > 0 and "retentionInDays" not in grp, grp
    names, token = [], None
    while True:
        kw = {"logGroupNamePrefix": "/", "limit": 2}
        if token:
            kw["nextToken"] = token
        r = logs.describe_log_groups(**kw)
        assert len(r["logGroups"]) <= 2
        names += [x["logGroupName"] for x in r["logGroups"]]
        token = r.get("nextToken")
        if not token:
            break
    assert names == ["/app/a", "/app/b", "/app/orders", "/other/c"], names
    pages = boto3_paginate(logs, "describe_log_groups", "logGroups", logGroupNamePrefix="/app")
    assert [x["logGroupName"] for x in pages] == ["/app/a", "/app/b", "/app/orders"], pages
    r = logs.describe_log_streams(logGroupName=g)
    streams = {s["logStreamName"]: s for s in r["logStreams"]}
    assert list(streams) == ["web-1", "web-2"], r
    s1 = streams["web-1"]
    assert s1["firstEventTimestamp"] == old + 23 * 3_600_000, s1
    assert s1["lastEventTimestamp"] >= t and s1["lastIngestionTime"] >= s1["creationTime"], s1
    assert s1["arn"].endswith(":log-group:/app/orders:log-stream:web-1"), s1
    logs.create_log_stream(logGroupName=g, logStreamName="idle")
    r = logs.describe_log_streams(logGroupName=g, logStreamNamePrefix="web-", limit=1)
    assert [s["logStreamName"] for s in r["logStreams"]] == ["web-1"] and r.get("nextToken"), r
    r = logs.describe_log_streams(logGroupName=g, logStreamNamePrefix="web-", limit=1,
                                  nextToken=r["nextToken"])
    assert [s["logStreamName"] for s in r["logStreams"]] == ["web-2"] and "nextToken" not in r, r
    r = logs.describe_log_streams(logGroupName=g, orderBy="LastEventTime", descending=True)
    assert [s["logStreamName"] for s in r["logStreams"]] == ["web-1", "web-2", "idle"], r
    idle = r["logStreams"][2]
    assert "firstEventTimestamp" not in idle and idle["creationTime"] > 0, idle
    expect_error("InvalidParameterException", logs.describe_log_streams, logGroupName=g,
                 orderBy="LastEventTime", logStreamNamePrefix="web")
    expect_error("ResourceNotFoundException", logs.describe_log_streams, logGroupName="/app/none")

    # Retention: AWS's set only; shown, and honoured when reading.
    code, msg = expect_error("InvalidParameterException", logs.put_retention_policy,
                             logGroupName=g, retentionInDays=2)
    assert "retentionInDays" in msg and "3653" in msg, msg
    expect_error("ResourceNotFoundException", logs.put_retention_policy,
                 logGroupName="/app/none", retentionInDays=1)
    logs.put_retention_policy(logGroupName=g, retentionInDays=1)
    r = logs.describe_log_groups(logGroupNamePrefix=g)
    assert r["logGroups"][0]["retentionInDays"] == 1, r
    got = messages(flt("kept"))
    assert got == ["kept now"], got  # "kept from the past" is older than one day
    r = logs.put_log_events(logGroupName=g, logStreamName="web-1",
                            logEvents=[{"timestamp": now_ms() - 25 * 3_600_000, "message": "expired"},
                                       {"timestamp": now_ms() - 2 * 3_600_000, "message": "fresh"}])
    assert r["rejectedLogEventsInfo"] == {"expiredLogEventEndIndex": 1}, r
    logs.delete_retention_policy(logGroupName=g)
    assert "retentionInDays" not in logs.describe_log_groups(logGroupNamePrefix=g)["logGroups"][0]
    assert messages(flt("kept")) == ["kept from the past", "kept now"]

    # DeleteLogStream, DeleteLogGroup; a group made again starts empty.
    logs.delete_log_stream(logGroupName=g, logStreamName="web-2")
    r = logs.describe_log_streams(logGroupName=g)
    assert [s["logStreamName"] for s in r["logStreams"]] == ["idle", "web-1"], r
    assert messages(flt("same")) == []
    expect_error("ResourceNotFoundException", logs.delete_log_stream, logGroupName=g,
                 logStreamName="web-2")
    logs.delete_log_group(logGroupName=g)
    expect_error("ResourceNotFoundException", logs.delete_log_group, logGroupName=g)
    r = logs.describe_log_groups(logGroupNamePrefix="/app/")
    assert [x["logGroupName"] for x in r["logGroups"]] == ["/app/a", "/app/b"], r
    expect_error("ResourceNotFoundException", logs.get_log_events, logGroupName=g,
                 logStreamName="web-1")
    logs.create_log_group(logGroupName=g)
    assert logs.describe_log_streams(logGroupName=g)["logStreams"] == []
    logs.create_log_stream(logGroupName=g, logStreamName="web-1")
    assert logs.get_log_events(logGroupName=g, logStreamName="web-1")["events"] == []
    logs.put_log_events(logGroupName=g, logStreamName="web-1",
                        logEvents=[{"timestamp": now_ms(), "message": "second life"}])
    assert messages(flt("")) == ["second life"]
    # The events are records of the store: LogsQL sees them with their fields.
    rows = logsql('log_group:="/other/c" OR _msg:"second life"')
    assert [(x["_msg"], x["log_stream"], x["container_name"], x["job"]) for x in rows] == \
        [("second life", "web-1", "/app/orders", "cloudwatch")], rows
    print("api ok")


def boto3_paginate(logs, op, key, **kw):
    out = []
    for page in logs.get_paginator(op).paginate(**kw, PaginationConfig={"PageSize": 1}):
        out += page[key]
    return out


def logsql(query):
    r = requests.post(f"{URL}/select/logsql/query", data={"query": query}, timeout=30)
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def scenario_auth():
    good = client()
    good.describe_log_groups()
    expect_error("UnrecognizedClientException", client(ak="AKIAWRONGWRONGWRONG0").describe_log_groups,
                 message="The security token included in the request is invalid.")
    expect_error("InvalidSignatureException", client(sk="wrong-secret").describe_log_groups)
    expect_error("MissingAuthenticationTokenException", client(unsigned=True).describe_log_groups)
    # A request with a bad signature is refused whatever it asks.
    expect_error("InvalidSignatureException", client(sk="wrong-secret").create_log_group,
                 logGroupName="/auth/never")
    assert "/auth/never" not in [g["logGroupName"] for g in good.describe_log_groups()["logGroups"]]
    # The VictoriaLogs API on the same port is untouched, and POST / without the target
    # header is not mistaken for it.
    assert requests.get(f"{URL}/health", timeout=10).text == "OK"
    r = requests.post(URL + "/", data="{}", timeout=10)
    assert r.status_code == 400 and r.json()["__type"] == "UnknownOperationException", r.text
    r = requests.post(URL + "/", data="{}", timeout=10,
                      headers={"X-Amz-Target": "Logs_20140328.DescribeLogGroups",
                               "Content-Type": "application/x-amz-json-1.1"})
    assert r.status_code == 400 and r.json()["__type"] == "MissingAuthenticationTokenException", r.text
    print("auth ok")


def scenario_no_box_key():
    """A store started without the box's key pair refuses every host client."""
    expect_error("UnrecognizedClientException", client().describe_log_groups)
    print("no box key ok")


def scenario_contract():
    """Records shaped as the supervisor and the gateway ship them (issue 18's contract),
    ingested through /insert/jsonline, appear as /aws/lambda/greeter with its streams."""
    t = now_ms() - 30_000
    s1 = time.strftime("%Y/%m/%d/", time.gmtime()) + "[$LATEST]" + "a" * 32
    s2 = time.strftime("%Y/%m/%d/", time.gmtime()) + "[$LATEST]" + "b" * 32

    def rec(i, stream, msg, level="INFO"):
        return {"_msg": msg, "_time": (t + i) * 1_000_000, "level": level,
                "container_name": "greeter", "job": "lambda", "aws_request_id": f"req-{i}",
                "trace_id": f"Root=1-abc-{i}", "function_name": "greeter",
                "log_group": "/aws/lambda/greeter", "log_stream": stream}

    records = [
        rec(0, s1, "START RequestId: req-0 Version: $LATEST"),
        rec(1, s1, "hello from greeter"),
        rec(2, s2, "hello again from greeter"),
        rec(3, s2, "something failed badly", "ERROR"),
        {"_msg": "GET /greet 200", "_time": (t + 4) * 1_000_000, "container_name": "esb-gateway",
         "job": "gateway", "level": "INFO"},
    ]
    r = requests.post(f"{URL}/insert/jsonline", params={"_stream_fields": "container_name,job"},
                      data="\n".join(json.dumps(x) for x in records) + "\n", timeout=30)
    assert r.status_code == 200 and r.json()["ingested"] == 5, r.text
    logs = client()
    groups = [g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]]
    assert "/aws/lambda/greeter" in groups and "esb-gateway" not in groups, groups
    r = logs.describe_log_groups(logGroupNamePrefix="/aws/lambda/")
    assert [g["logGroupName"] for g in r["logGroups"]] == ["/aws/lambda/greeter"], r
    assert r["logGroups"][0]["creationTime"] == t, r
    r = logs.describe_log_streams(logGroupName="/aws/lambda/greeter")
    got = [(s["logStreamName"], s["firstEventTimestamp"], s["lastEventTimestamp"]) for s in r["logStreams"]]
    assert got == [(s1, t, t + 1), (s2, t + 2, t + 3)], got
    r = logs.filter_log_events(logGroupName="/aws/lambda/greeter", filterPattern="hello")
    assert [(e["logStreamName"], e["message"]) for e in r["events"]] == [
        (s1, "hello from greeter"), (s2, "hello again from greeter")], r
    r = logs.filter_log_events(logGroupName="/aws/lambda/greeter", filterPattern="failed",
                               logStreamNames=[s2])
    assert messages(r["events"]) == ["something failed badly"], r
    r = logs.get_log_events(logGroupName="/aws/lambda/greeter", logStreamName=s1, startFromHead=True)
    assert messages(r["events"]) == ["START RequestId: req-0 Version: $LATEST", "hello from greeter"], r
    # A function logging with boto3 into its own group (created by Lambda on AWS) works
    # without creating anything.
    logs.put_log_events(logGroupName="/aws/lambda/greeter", logStreamName=s1,
                        logEvents=[{"timestamp": now_ms(), "message": "put by boto3"}])
    r = logs.filter_log_events(logGroupName="/aws/lambda/greeter", filterPattern='"put by"')
    assert [(e["logStreamName"], e["message"]) for e in r["events"]] == [(s1, "put by boto3")], r
    rows = logsql('"put by boto3"')
    assert [(x["container_name"], x["function_name"], x["job"]) for x in rows] == \
        [("greeter", "greeter", "cloudwatch")], rows
    print("contract ok")


def scenario_workers():
    """On the workers' listener, with functions' keys: the basic execution role's actions
    for everyone, reading only with a policy that grants it."""
    wurl = os.environ["CW_WORKER_URL"]
    fn = client(os.environ["CW_FN_AK"], os.environ["CW_FN_SK"], url=wurl)
    fn.create_log_group(logGroupName="/custom/greeter")
    fn.create_log_stream(logGroupName="/custom/greeter", logStreamName="s")
    fn.put_log_events(logGroupName="/custom/greeter", logStreamName="s",
                      logEvents=[{"timestamp": now_ms(), "message": "from the function"}])
    code, msg = expect_error("AccessDeniedException", fn.filter_log_events,
                             logGroupName="/custom/greeter")
    assert "logs:FilterLogEvents" in msg and "greeter" in msg, msg
    expect_error("AccessDeniedException", fn.describe_log_groups)
    expect_error("UnrecognizedClientException", client(url=wurl).describe_log_groups)
    reader = client(os.environ["CW_READER_AK"], os.environ["CW_READER_SK"], url=wurl)
    r = reader.filter_log_events(logGroupName="/custom/greeter")
    assert messages(r["events"]) == ["from the function"], r
    # The box's key does not work here, nor a function's key on the main listener.
    expect_error("UnrecognizedClientException",
                 client(os.environ["CW_FN_AK"], os.environ["CW_FN_SK"]).describe_log_groups)
    rows = logsql('"from the function"')
    assert [(x["function_name"], x["container_name"]) for x in rows] == \
        [("greeter", "/custom/greeter")], rows
    print("workers ok")


def scenario_restart_before():
    logs = client()
    logs.create_log_group(logGroupName="/kept/explicit")
    logs.create_log_stream(logGroupName="/kept/explicit", logStreamName="empty")
    logs.put_retention_policy(logGroupName="/kept/explicit", retentionInDays=30)
    logs.create_log_group(logGroupName="/kept/gone")
    logs.create_log_stream(logGroupName="/kept/gone", logStreamName="s")
    logs.put_log_events(logGroupName="/kept/gone", logStreamName="s",
                        logEvents=[{"timestamp": now_ms(), "message": "deleted with its group"}])
    logs.delete_log_group(logGroupName="/kept/gone")
    r = requests.post(f"{URL}/insert/jsonline", data=json.dumps(
        {"_msg": "shipped", "log_group": "/aws/lambda/f", "log_stream": "w1"}) + "\n", timeout=30)
    assert r.status_code == 200, r.text


def scenario_restart_after():
    logs = client()
    r = logs.describe_log_groups()
    got = [(g["logGroupName"], g.get("retentionInDays")) for g in r["logGroups"]]
    assert got == [("/aws/lambda/f", None), ("/kept/explicit", 30)], got
    r = logs.describe_log_streams(logGroupName="/kept/explicit")
    assert [s["logStreamName"] for s in r["logStreams"]] == ["empty"], r
    r = logs.describe_log_streams(logGroupName="/aws/lambda/f")
    assert [s["logStreamName"] for s in r["logStreams"]] == ["w1"], r
    assert messages(logs.filter_log_events(logGroupName="/aws/lambda/f")["events"]) == ["shipped"]
    logs.create_log_group(logGroupName="/kept/gone")
    assert logs.filter_log_events(logGroupName="/kept/gone")["events"] == []
    print("restart ok")


def aws_env():
    if not os.path.exists(AWS_CLI):
        raise AssertionError(f"{AWS_CLI} (AWS CLI v2, Debian's awscli) is missing: run scripts/prereqs.sh")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "AWS_ACCESS_KEY_ID": os.environ["CW_AK"],
        "AWS_SECRET_ACCESS_KEY": os.environ["CW_SK"],
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_PAGER": "",
    })
    return env


def scenario_cli_tail():
    """The stock AWS CLI v2: `aws logs tail GROUP --since 1h`, then `--follow`."""
    logs = client()
    g = "/aws/lambda/tailed"
    logs.create_log_group(logGroupName=g)
    logs.create_log_stream(logGroupName=g, logStreamName="2024/05/01/[$LATEST]" + "c" * 32)
    stream = "2024/05/01/[$LATEST]" + "c" * 32
    logs.put_log_events(logGroupName=g, logStreamName=stream, logEvents=[
        {"timestamp": now_ms() - 2 * 3_600_000, "message": "two hours ago"},
        {"timestamp": now_ms() - 60_000, "message": "a minute ago"},
        {"timestamp": now_ms() - 1_000, "message": "a second ago"},
    ])
    version = subprocess.run([AWS_CLI, "--version"], capture_output=True, text=True, env=aws_env())
    assert version.stdout.startswith("aws-cli/2."), (version.stdout, version.stderr)
    out = subprocess.run([AWS_CLI, "logs", "tail", g, "--endpoint-url", URL, "--since", "1h",
                          "--no-cli-pager"],
                         capture_output=True, text=True, timeout=60, env=aws_env())
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout
    assert lines[0].endswith(f" {stream} a minute ago"), lines
    assert lines[1].endswith(f" {stream} a second ago"), lines
    out = subprocess.run([AWS_CLI, "logs", "tail", g, "--endpoint-url", URL, "--since", "1h",
                          "--format", "short", "--filter-pattern", "second"],
                         capture_output=True, text=True, timeout=60, env=aws_env())
    assert out.returncode == 0 and out.stdout.splitlines()[0].endswith(" a second ago") \
        and len(out.stdout.splitlines()) == 1, (out.stdout, out.stderr)

    # --follow: started, then an event is put; it must show up. The CLI is killed by PID.
    proc = subprocess.Popen([AWS_CLI, "logs", "tail", g, "--endpoint-url", URL, "--since", "1h",
                             "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=aws_env())
    got = []
    done = threading.Event()

    def reader():
        for line in proc.stdout:
            got.append(line.rstrip("\n"))
            if line.rstrip("\n").endswith("put while following"):
                done.set()

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    try:
        deadline = time.time() + 90
        while len(got) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert len(got) >= 2, (got, proc.poll())
        logs.put_log_events(logGroupName=g, logStreamName=stream,
                            logEvents=[{"timestamp": now_ms(), "message": "put while following"}])
        assert done.wait(90), f"the followed event did not arrive: {got}"
    finally:
        os.kill(proc.pid, 9)
        proc.wait(10)
    assert got[0].endswith("a minute ago") and got[1].endswith("a second ago"), got
    assert sum(1 for x in got if x.endswith("put while following")) == 1, got
    print("cli ok")


if __name__ == "__main__":
    globals()["scenario_" + sys.argv[1]]()
