"""Python Lambda handlers for the gateway's integration tests (run by awslambdaric)."""

import base64
import json
import os
import time

import boto3


def echo(event, context):
    """Answers an API Gateway event with the event itself (as JSON) and the function's view."""
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json", "x-echo": "1"},
        "multiValueHeaders": {"x-multi": ["a", "b"]},
        "body": json.dumps(
            {
                "event": event,
                "trace_env": os.environ.get("_X_AMZN_TRACE_ID"),
                "request_id": context.aws_request_id,
            }
        ),
    }


def binary(event, context):
    """Sends the request body back unchanged, base64-encoded."""
    body = event.get("body") or ""
    raw = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/octet-stream"},
        "isBase64Encoded": True,
        "body": base64.b64encode(raw).decode(),
    }


def malformed(event, context):
    return {"statusCode": "not a status", "body": 5}


def invoked(event, context):
    """A target of direct invokes: reports what it saw; may record it in a file."""
    out = {
        "trace_env": os.environ.get("_X_AMZN_TRACE_ID"),
        "event": event,
        "client_context": (context.client_context.custom if context.client_context else None),
    }
    if isinstance(event, dict) and event.get("record"):
        with open(event["record"] + ".tmp", "w") as f:
            json.dump(out, f)
        os.rename(event["record"] + ".tmp", event["record"])
    if isinstance(event, dict) and event.get("fail"):
        raise RuntimeError("failing on purpose")
    if isinstance(event, dict) and event.get("sleep"):
        time.sleep(event["sleep"])
    return out


def chain(event, context):
    """Invokes another function through the gateway with boto3, sync and async."""
    body = json.loads(event.get("body") or "{}") if "httpMethod" in event else event
    client = boto3.client("lambda")
    sync = client.invoke(
        FunctionName=body["target"],
        Payload=json.dumps({"from": "chain"}).encode(),
    )
    sync_payload = json.loads(sync["Payload"].read())
    async_resp = client.invoke(
        FunctionName=body["target"],
        InvocationType="Event",
        Payload=json.dumps({"record": body["record"]}).encode(),
    )
    result = {
        "trace_env": os.environ.get("_X_AMZN_TRACE_ID"),
        "sync": sync_payload,
        "sync_status": sync["StatusCode"],
        "async_status": async_resp["StatusCode"],
    }
    if "httpMethod" in event:
        return {"statusCode": 200, "body": json.dumps(result)}
    return result


def sleepy(event, context):
    """Sleeps for ?s= seconds, then answers."""
    seconds = float((event.get("queryStringParameters") or {}).get("s", "0"))
    time.sleep(seconds)
    return {"statusCode": 200, "body": "slept"}


def version(event, context):
    """Reports the worker's code version (ESB_TEST_REV) and process, after an optional
    delay (ESB_TEST_SLEEP seconds, or the event's "sleep") or once the file the event's
    "wait_for" names exists (at most 25 s); may record it in a file."""
    ev = event if isinstance(event, dict) else {}
    delay = ev.get("sleep") or float(os.environ.get("ESB_TEST_SLEEP", "0"))
    if delay:
        time.sleep(delay)
    if ev.get("wait_for"):
        deadline = time.time() + 25
        while not os.path.exists(ev["wait_for"]) and time.time() < deadline:
            time.sleep(0.02)
    out = {"rev": os.environ.get("ESB_TEST_REV"), "pid": os.getpid()}
    if ev.get("record"):
        with open(ev["record"] + ".tmp", "w") as f:
            json.dump(out, f)
        os.rename(ev["record"] + ".tmp", ev["record"])
    if "httpMethod" in ev or "routeKey" in ev:
        return {
            "statusCode": 200,
            "headers": {"content-type": "application/json"},
            "body": json.dumps(out),
        }
    return out


def counted(event, context):
    """Appends a line to the file event["count"] names (one per run), then waits (at most
    25 s) for the file event["wait_for"] names; answers how many runs the file holds."""
    with open(event["count"], "a") as f:
        f.write("run\n")
    deadline = time.time() + 25
    while not os.path.exists(event["wait_for"]) and time.time() < deadline:
        time.sleep(0.02)
    with open(event["count"]) as f:
        return {"runs": len(f.read().splitlines())}
