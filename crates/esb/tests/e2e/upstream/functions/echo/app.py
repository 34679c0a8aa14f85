"""Upstream ESB's echo function: who called, through the authorizer's claims; then a
chained invoke and a CloudWatch Logs write, both with boto3 and the box's endpoints."""
import json
import logging
import os
import time

import boto3

logger = logging.getLogger()


def handler(event, context):
    authorizer = event["requestContext"]["authorizer"]
    # Upstream functions read the user from the authorizer's top level.
    user = authorizer["cognito:username"]
    logger.debug("debug line from echo %s", context.aws_request_id)
    print(f"echo served {user} in {context.aws_request_id}")
    chained = boto3.client("lambda").invoke(
        FunctionName=os.environ["CHAIN_FUNCTION"],
        Payload=json.dumps({"from": context.aws_request_id}).encode(),
    )
    chain = json.loads(chained["Payload"].read())
    logs = boto3.client("logs")
    group = "/esb/upstream-test"
    try:
        logs.create_log_group(logGroupName=group)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    try:
        logs.create_log_stream(logGroupName=group, logStreamName=context.aws_request_id)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    logs.put_log_events(
        logGroupName=group,
        logStreamName=context.aws_request_id,
        logEvents=[{"timestamp": int(time.time() * 1000),
                    "message": f"cloudwatch line from {context.aws_request_id}"}],
    )
    env = {k: os.environ.get(k) for k in (
        "LOG_LEVEL", "AWS_LAMBDA_LOG_LEVEL", "AWS_LAMBDA_LOG_FORMAT", "GATEWAY_INTERNAL_URL",
        "AWS_ENDPOINT_URL_LOGS", "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME")}
    body = {
        "user": user,
        "claims": authorizer.get("claims"),
        "request_id": context.aws_request_id,
        "chain": chain,
        "env": env,
        "log_stream": context.log_stream_name,
    }
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps(body)}
