"""Calls what its policy allows and what it does not, and reports each outcome."""
import json
import os

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

_cfg = Config(retries={"max_attempts": 1})
_ddb = boto3.client("dynamodb", config=_cfg)
_s3 = boto3.client("s3", config=_cfg)
_lambda = boto3.client("lambda", config=_cfg)


def _try(call):
    try:
        call()
        return {"ok": True}
    except ClientError as e:
        err = e.response.get("Error", {})
        return {"ok": False, "code": err.get("Code"), "message": err.get("Message")}


def _environ_of_pid1():
    try:
        with open("/proc/1/environ", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError as e:
        return f"unreadable: {e}"


def _logstore():
    """What a worker may do with the log store at 10.88.0.1:9428: ingest its own records."""
    import urllib.error
    import urllib.request

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    base = os.environ["VICTORIALOGS_URL"].rstrip("/")

    def status(req):
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    query = status(urllib.request.Request(f"{base}/select/logsql/query?query=*"))
    forged = json.dumps({"_msg": "forged-by-reader", "function_name": "target", "job": "gateway",
                         "container_name": "esb-gateway"}).encode()
    url = f"{base}/insert/jsonline?_stream_fields=function_name"
    unsigned = status(urllib.request.Request(url, data=forged, method="POST"))
    aws = AWSRequest(method="POST", url=url, data=forged)
    creds = boto3.Session().get_credentials()
    SigV4Auth(creds, "logs", os.environ.get("AWS_REGION", "ap-northeast-1")).add_auth(aws)
    signed = status(urllib.request.Request(url, data=forged, headers=dict(aws.headers), method="POST"))
    return {"query": query, "unsigned_insert": unsigned, "signed_insert": signed}


def reader(event, context):
    print("reader-was-here")
    a, b, x = os.environ["TABLE_A"], os.environ["TABLE_B"], os.environ["BUCKET_X"]
    key = {"pk": {"S": "k"}}
    return {
        "ddb_get_a": _try(lambda: _ddb.get_item(TableName=a, Key=key)),
        "ddb_put_a": _try(lambda: _ddb.put_item(TableName=a, Item=key)),
        "ddb_get_b": _try(lambda: _ddb.get_item(TableName=b, Key=key)),
        "s3_list_x": _try(lambda: _s3.list_objects_v2(Bucket=x)),
        "s3_get_x": _try(lambda: _s3.get_object(Bucket=x, Key="seeded")),
        "s3_put_x": _try(lambda: _s3.put_object(Bucket=x, Key="k", Body=b"v")),
        "invoke_target": _try(lambda: _lambda.invoke(FunctionName=os.environ["TARGET"], Payload=b"{}")),
        "invoke_other": _try(lambda: _lambda.invoke(FunctionName=os.environ["OTHER"], Payload=b"{}")),
        "access_key": os.environ.get("AWS_ACCESS_KEY_ID"),
        "environ": json.dumps(dict(os.environ)),
        "pid1_environ": _environ_of_pid1(),
        "logstore": _logstore(),
    }


def loose(event, context):
    return {"s3_list_x": _try(lambda: _s3.list_objects_v2(Bucket=os.environ["BUCKET_X"]))}


def answer(event, context):
    return {"answered": True}
