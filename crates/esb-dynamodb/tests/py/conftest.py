"""Fixtures shared by the client suites: boto3 client/resource pointed at the server under
test (DDB_ENDPOINT, credentials from the environment set by the Rust harness)."""
import os
import uuid

import boto3
import pytest
from botocore.config import Config

ENDPOINT = os.environ["DDB_ENDPOINT"]
CFG = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=10, read_timeout=60)


@pytest.fixture(scope="session")
def client():
    return boto3.client("dynamodb", endpoint_url=ENDPOINT, config=CFG)


@pytest.fixture(scope="session")
def resource():
    return boto3.resource("dynamodb", endpoint_url=ENDPOINT, config=CFG)


def unique(prefix="t"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_table(client):
    """make_table(hash=("pk", "S"), range=None, **extra) -> name; deleted afterwards."""
    created = []

    def make(hash=("pk", "S"), range=None, attrs=(), **extra):
        name = unique()
        defs = {hash[0]: hash[1]}
        schema = [{"AttributeName": hash[0], "KeyType": "HASH"}]
        if range:
            defs[range[0]] = range[1]
            schema.append({"AttributeName": range[0], "KeyType": "RANGE"})
        for a, t in attrs:
            defs[a] = t
        client.create_table(
            TableName=name,
            KeySchema=schema,
            AttributeDefinitions=[{"AttributeName": a, "AttributeType": t} for a, t in defs.items()],
            BillingMode="PAY_PER_REQUEST",
            **extra,
        )
        created.append(name)
        return name

    yield make
    for name in created:
        try:
            client.delete_table(TableName=name)
        except client.exceptions.ResourceNotFoundException:
            pass


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def error_message(excinfo):
    return excinfo.value.response["Error"]["Message"]
