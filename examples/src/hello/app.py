"""GET /hello?name=NAME (public): a Python function calling a Rust one.

The greeter (provided.al2023, lambda_runtime) is invoked synchronously through the Lambda
Invoke API, exactly as on AWS: boto3's lambda client, AWS_ENDPOINT_URL_LAMBDA in the env.
"""

import json
import os

from notes_common import HttpError, api, client, log, response

MAX_NAME = 64


@api
def handler(event, context):
    name = (event.get("queryStringParameters") or {}).get("name", "world")
    if len(name) > MAX_NAME:
        raise HttpError(400, f"name is longer than {MAX_NAME} characters")
    answer = client("lambda").invoke(
        FunctionName=os.environ["GREETER_FUNCTION"],
        InvocationType="RequestResponse",
        Payload=json.dumps({"name": name}).encode(),
    )
    payload = json.loads(answer["Payload"].read())
    if answer.get("FunctionError"):
        log("greeter failed", level="ERROR", error=payload)
        raise HttpError(502, "the greeter failed")
    log("said hello", name=name)
    return response(200, {"message": payload["greeting"], "greeter": payload})
