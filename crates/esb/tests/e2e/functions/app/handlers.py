"""Handlers of the e2e fixture app (all but `echo`), run by awslambdaric in esb workers.

Workers get AWS_ENDPOINT_URL_S3 / _DYNAMODB / _LAMBDA, AWS_CA_BUNDLE, credentials and
region in their environment, so plain boto3 clients reach the box's services.
"""

import json
import logging
import os
import time
import uuid

import boto3
from botocore.config import Config

logger = logging.getLogger()
logger.setLevel(logging.INFO)

INSTANCE = uuid.uuid4().hex
BUCKET = os.environ.get("BUCKET", "e2e-bucket")
TABLE = os.environ.get("TABLE", "e2e-table")

# Clients are made once per worker (at import) and reused by every invocation.
_no_retry = Config(retries={"max_attempts": 1, "mode": "standard"}, read_timeout=60)
_lambda = boto3.client("lambda", config=_no_retry)
_s3 = boto3.client("s3")
_ddb = boto3.client("dynamodb")


def _json(status, body):
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(body, default=str),
    }


def _body(event):
    raw = event.get("body") if "httpMethod" in event else None
    if raw is None:
        return event if "httpMethod" not in event else {}
    return json.loads(raw) if raw else {}


def _worker():
    return {"worker": os.uname().nodename, "instance": INSTANCE}


def public(event, context):
    """GET /public, no auth."""
    return _json(200, {"public": True, "path": event.get("path"), **_worker()})


def chain(event, context):
    """POST /chain: echo synchronously, then recorder asynchronously (Event)."""
    trace = os.environ.get("_X_AMZN_TRACE_ID")
    body = _body(event)
    logger.info("chain: start, trace %s", trace)
    sync = _lambda.invoke(
        FunctionName=os.environ.get("ECHO_FUNCTION", "echo"),
        InvocationType="RequestResponse",
        Payload=json.dumps({"from": "chain", "note": body.get("note")}).encode(),
    )
    sync_payload = json.loads(sync["Payload"].read())
    logger.info("chain: echo answered %s", sync["StatusCode"])
    event_resp = _lambda.invoke(
        FunctionName=os.environ.get("RECORDER_FUNCTION", "recorder"),
        InvocationType="Event",
        Payload=json.dumps({"from": "chain", "note": body.get("note")}).encode(),
    )
    logger.info("chain: recorder queued %s", event_resp["StatusCode"])
    return _json(
        200,
        {
            "trace_id": trace,
            "sync_status": sync["StatusCode"],
            "sync_function_error": sync.get("FunctionError"),
            "sync_payload": sync_payload,
            "event_status": event_resp["StatusCode"],
        },
    )


def recorder(event, context):
    """Logs the event it got (the Event leg of the chain)."""
    logger.info("recorder: got %s", json.dumps(event, sort_keys=True))
    return {"recorded": True}


def _s3_op(req):
    key = req["key"]
    out = {}
    if "put" in req:
        r = _s3.put_object(Bucket=BUCKET, Key=key, Body=req["put"].encode())
        out["put_etag"] = r["ETag"]
    if req.get("get", True):
        try:
            out["get"] = _s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
        except _s3.exceptions.NoSuchKey:
            out["get"] = None
    listing = _s3.list_objects_v2(Bucket=BUCKET, Prefix=req.get("prefix", key))
    out["list"] = [o["Key"] for o in listing.get("Contents", [])]
    if req.get("delete"):
        _s3.delete_object(Bucket=BUCKET, Key=key)
        after = _s3.list_objects_v2(Bucket=BUCKET, Prefix=key)
        out["after_delete"] = [o["Key"] for o in after.get("Contents", [])]
    return out


def _ddb_op(req):
    pk = req["pk"]
    out = {}
    if "put" in req:
        item = {"pk": {"S": pk}, "sk": {"S": req["sk"]}, "value": {"S": req["put"]}}
        _ddb.put_item(TableName=TABLE, Item=item)
    if "sk" in req:
        got = _ddb.get_item(TableName=TABLE, Key={"pk": {"S": pk}, "sk": {"S": req["sk"]}})
        item = got.get("Item")
        out["get"] = item["value"]["S"] if item else None
    q = _ddb.query(
        TableName=TABLE,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": pk}},
    )
    out["query"] = [{"sk": i["sk"]["S"], "value": i["value"]["S"]} for i in q["Items"]]
    return out


def storage(event, context):
    """POST /storage with {"op": "s3", "key", ["put"], ["get"], ["prefix"], ["delete"]}
    or {"op": "ddb", "pk", ["sk"], ["put"]}: the calls run inside the function."""
    try:
        req = _body(event)
    except ValueError:
        return _json(400, {"message": "body is not JSON"})
    op = req.get("op")
    if op == "s3":
        return _json(200, {"op": "s3", **_s3_op(req)})
    if op == "ddb":
        return _json(200, {"op": "ddb", **_ddb_op(req)})
    return _json(400, {"message": "op must be \"s3\" or \"ddb\""})


def limited(event, context):
    """ReservedConcurrentExecutions: 2 — takes a second, says which worker served."""
    time.sleep(1)
    return _json(200, _worker())


def failing(event, context):
    raise RuntimeError("failing on purpose")


def slow(event, context):
    """Sleeps 10 s; its Timeout is 2 s."""
    time.sleep(10)
    return _json(200, {"woke": True})


def crasher(event, context):
    """Counts its run (DynamoDB: pk "crasher", sk the event's id, ADD runs 1), then
    crashes as the event says: "exit" ends the runtime process; "hang" waits (at most
    `sleep` seconds) for the test to kill the worker."""
    _ddb.update_item(
        TableName=TABLE,
        Key={"pk": {"S": "crasher"}, "sk": {"S": event["id"]}},
        UpdateExpression="ADD runs :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )
    if event.get("mode") == "exit":
        os._exit(3)
    time.sleep(float(event.get("sleep", 25)))
    return {"survived": True, **_worker()}
