"""Small real-client steps for the Rust harness (worker_loss.rs), one per call, printing
JSON on stdout. Configured by the environment of test_box.py (README.md).

  client.py invoke FUNCTION PAYLOAD   boto3 lambda.invoke (RequestResponse, no retries):
                                      {"status", "function_error", "payload"}
  client.py runs ID                   how many times `crasher` ran for ID (DynamoDB)
"""

import json
import os
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


def _client(service, endpoint):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=os.environ["AWS_REGION"],
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        verify=os.environ["E2E_CA"] if endpoint.startswith("https") else None,
        # One attempt: a retried 5xx would hide what the box answered and run the function
        # again (botocore's `max_attempts` counts retries, `total_max_attempts` attempts).
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=120),
    )


def invoke(function, payload):
    lam = _client("lambda", os.environ["E2E_URL"])
    try:
        r = lam.invoke(FunctionName=function, Payload=payload.encode())
    except ClientError as e:
        meta = e.response.get("ResponseMetadata", {})
        return {"status": meta.get("HTTPStatusCode"), "error": str(e)}
    return {
        "status": r["StatusCode"],
        "function_error": r.get("FunctionError"),
        "payload": r["Payload"].read().decode(),
    }


def runs(ident):
    ddb = _client("dynamodb", os.environ["E2E_DDB"])
    item = ddb.get_item(
        TableName="e2e-table", Key={"pk": {"S": "crasher"}, "sk": {"S": ident}}
    ).get("Item")
    return {"runs": int(item["runs"]["N"]) if item else 0}


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    out = invoke(*args) if cmd == "invoke" else runs(*args)
    print(json.dumps(out))
