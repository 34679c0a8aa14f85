"""Shared helpers of the example application's Python functions (a Lambda layer).

The layer's content lands in /opt, so this module is /opt/python/notes_common.py and every
function that lists the layer can `import notes_common`.
"""

import base64
import functools
import json
import os
import traceback
from decimal import Decimal

import boto3


class HttpError(Exception):
    """An error that becomes an HTTP answer: `raise HttpError(404, "note not found")`."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def _json_default(value):
    # DynamoDB numbers come back as Decimal.
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def response(status, body, headers=None):
    """An API Gateway (REST, proxy integration) answer with a JSON body."""
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json", **(headers or {})},
        "body": json.dumps(body, default=_json_default),
    }


def log(message, level="INFO", **fields):
    """One structured log line: esb's log store keeps every field (query them with LogsQL)."""
    print(json.dumps({"level": level, "message": message, **fields}, default=str), flush=True)


def json_body(event):
    """The request body as a JSON object, or HttpError(400)."""
    raw = event.get("body") or ""
    if event.get("isBase64Encoded"):
        raw = base64.b64decode(raw).decode("utf-8", errors="replace")
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        raise HttpError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object")
    return body


def username(event):
    """The caller's user name, from the token's claims (the gateway verified the token)."""
    claims = ((event.get("requestContext") or {}).get("authorizer") or {}).get("claims") or {}
    user = claims.get("cognito:username") or claims.get("sub")
    if not user:
        raise HttpError(401, "no user in the request's claims")
    return user


def api(handler):
    """Decorator: HttpError becomes its answer, anything else a logged 500."""

    @functools.wraps(handler)
    def wrapper(event, context):
        try:
            return handler(event, context)
        except HttpError as e:
            return response(e.status, {"message": e.message})
        except Exception as e:  # noqa: BLE001 - the client gets a 500, the log the details
            log("unhandled error", level="ERROR", error=repr(e), trace=traceback.format_exc())
            return response(500, {"message": "internal error"})

    return wrapper


# Clients are created once per worker and reused. In esb (as on AWS) the endpoints, region
# and credentials come from the environment: no endpoint_url in application code.
@functools.lru_cache(maxsize=None)
def client(service):
    return boto3.client(service)


@functools.lru_cache(maxsize=None)
def table():
    return boto3.resource("dynamodb").Table(os.environ["NOTES_TABLE"])


def bucket_name():
    return os.environ["NOTES_BUCKET"]
