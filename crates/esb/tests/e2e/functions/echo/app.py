"""`echo`: answers an API Gateway (REST v1) event with what it saw.

The answer carries the function's VERSION (version.txt beside this file, read once when the
worker starts: a rebuilt image means new workers with the new value) and the worker's
identity, so tests can tell which code and which worker served a request.
"""

import json
import logging
import os
import uuid

logger = logging.getLogger()
logger.setLevel(logging.INFO)

_HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(_HERE, "version.txt"), encoding="utf-8") as f:
    VERSION = f.read().strip()

# One id per runtime process (a worker runs one): tells workers apart even when every
# worker has the same host name.
INSTANCE = uuid.uuid4().hex


def handler(event, context):
    ctx = event.get("requestContext") or {}
    claims = (ctx.get("authorizer") or {}).get("claims") or {}
    logger.info("echo %s %s", event.get("httpMethod"), event.get("path"))
    answer = {
        "method": event.get("httpMethod"),
        "path": event.get("path"),
        "body": event.get("body"),
        "isBase64Encoded": event.get("isBase64Encoded", False),
        "query": event.get("queryStringParameters"),
        "username": claims.get("cognito:username"),
        "version": VERSION,
        "worker": os.uname().nodename,
        "instance": INSTANCE,
        "request_id": context.aws_request_id,
        "trace_id": os.environ.get("_X_AMZN_TRACE_ID"),
    }
    if "httpMethod" not in event:
        # Invoked directly (Invoke API or another function): the event is the payload.
        answer["payload"] = event
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(answer),
    }
