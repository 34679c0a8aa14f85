"""Fixtures shared by the esb-s3 client tests.

The Rust test harness (tests/clients.rs) starts a server and passes its address, the
credentials and its data directory through the environment.
"""

import os
import uuid

import boto3
import pytest
from botocore.config import Config

ENDPOINT = os.environ["ESB_S3_ENDPOINT"]
ACCESS_KEY = os.environ["ESB_S3_ACCESS_KEY"]
SECRET_KEY = os.environ["ESB_S3_SECRET_KEY"]
REGION = os.environ.get("ESB_S3_REGION", "ap-northeast-1")
DATA_DIR = os.environ["ESB_S3_DATA_DIR"]


def make_client(access_key=ACCESS_KEY, secret_key=SECRET_KEY, **config):
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=REGION,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, **config),
    )


@pytest.fixture(scope="session")
def s3():
    return make_client()


@pytest.fixture
def bucket(s3):
    name = "t-" + uuid.uuid4().hex[:20]
    s3.create_bucket(Bucket=name)
    yield name
    # Best-effort cleanup so that DeleteBucket is exercised on populated buckets too.
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=name, Delete={"Objects": keys})
        for up in s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
            s3.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
        s3.delete_bucket(Bucket=name)
    except Exception:
        pass
