"""Client side of the crash-safety test (driven by tests/crash.rs).

  seed    STATE   create a bucket and objects; record what was acknowledged in STATE
  partial STATE   start uploads (a new key, an overwrite, a multipart part) and stop
                  mid-body; prints "midway" and waits to be killed with the server
  verify  STATE   after a restart: every acknowledged object is intact, nothing partial
                  is visible; then delete everything
"""

import hashlib
import io
import json
import os
import socket
import sys
import time
import urllib.parse

import botocore.auth
import botocore.awsrequest

from conftest import DATA_DIR, ENDPOINT, REGION, make_client

BUCKET = "crash-test"
MiB = 1024 * 1024


def seed(state):
    s3 = make_client()
    s3.create_bucket(Bucket=BUCKET)
    acked = {}
    for i in range(40):
        body = os.urandom([0, 10, 5000, 40000, 300000][i % 5])
        s3.put_object(Bucket=BUCKET, Key="ack/%d" % i, Body=body)
        acked["ack/%d" % i] = hashlib.md5(body).hexdigest()
    big = os.urandom(12 * MiB)
    s3.upload_fileobj(io.BytesIO(big), BUCKET, "ack/multipart")
    acked["ack/multipart"] = hashlib.md5(big).hexdigest()
    up = s3.create_multipart_upload(Bucket=BUCKET, Key="pending")
    s3.upload_part(Bucket=BUCKET, Key="pending", UploadId=up["UploadId"], PartNumber=1, Body=b"p" * 1000)
    with open(state, "w") as f:
        json.dump({"acked": acked, "upload_id": up["UploadId"]}, f)


class UnsignedPayloadAuth(botocore.auth.S3SigV4Auth):
    def _should_sha256_sign_payload(self, request):
        return False


def start_put(path, total, sent, query=""):
    """Opens a signed PUT of `total` bytes and sends only `sent` of them."""
    s3 = make_client()
    url = ENDPOINT + path + (("?" + query) if query else "")
    req = botocore.awsrequest.AWSRequest(method="PUT", url=url, headers={"Content-Length": str(total)})
    UnsignedPayloadAuth(s3._request_signer._credentials, "s3", REGION).add_auth(req)
    host, port = urllib.parse.urlsplit(ENDPOINT).netloc.split(":")
    sock = socket.create_connection((host, int(port)))
    target = urllib.parse.urlsplit(url)
    head = "PUT %s%s HTTP/1.1\r\nHost: %s\r\n" % (target.path, ("?" + target.query) if target.query else "", target.netloc)
    for k, v in req.headers.items():
        head += "%s: %s\r\n" % (k, v)
    sock.sendall(head.encode() + b"\r\n")
    chunk = os.urandom(MiB)
    for _ in range(sent // MiB):
        sock.sendall(chunk)
    return sock


def partial(state):
    with open(state) as f:
        st = json.load(f)
    socks = [
        start_put("/%s/partial-new" % BUCKET, 200 * MiB, 24 * MiB),
        start_put("/%s/ack/3" % BUCKET, 200 * MiB, 24 * MiB),
        start_put("/%s/pending" % BUCKET, 50 * MiB, 8 * MiB, "partNumber=2&uploadId=" + st["upload_id"]),
    ]
    time.sleep(1.0)  # let the server write what it received
    print("midway", flush=True)
    time.sleep(600)
    del socks


def verify(state):
    with open(state) as f:
        st = json.load(f)
    s3 = make_client()
    listed = {o["Key"]: o for p in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET) for o in p.get("Contents", [])}
    assert sorted(listed) == sorted(st["acked"]), sorted(set(listed) ^ set(st["acked"]))
    for key, md5 in st["acked"].items():
        data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert hashlib.md5(data).hexdigest() == md5, key
    parts = s3.list_parts(Bucket=BUCKET, Key="pending", UploadId=st["upload_id"])["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 1000)], parts
    # Clean up; afterwards no data file may remain (the partial writes were collected).
    s3.abort_multipart_upload(Bucket=BUCKET, Key="pending", UploadId=st["upload_id"])
    for key in listed:
        s3.delete_object(Bucket=BUCKET, Key=key)
    s3.delete_bucket(Bucket=BUCKET)
    leftovers = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(DATA_DIR, "data")) for f in fs]
    assert leftovers == [], leftovers
    print("verified %d objects" % len(st["acked"]))


if __name__ == "__main__":
    {"seed": seed, "partial": partial, "verify": verify}[sys.argv[1]](sys.argv[2])
