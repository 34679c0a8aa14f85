"""Write load for the crash-loop tests (crates/esb/tests/crash_loops.rs).

  write  KIND ENDPOINT ACKS STOP   write until the file STOP exists, from 4 threads; every
                                   acknowledged write is appended to ACKS, one line each
  verify KIND ENDPOINT ACKS        every acknowledged write is readable, whole

KIND is s3, dynamodb or logstore. Failed writes (the server was killed) are not retried: the
next write uses a new key, so the acknowledged ones are exactly those listed in ACKS.
Besides new keys, each thread overwrites one key of its own with increasing versions: after
the crashes it must hold a version at least as new as the last one acknowledged, whole.
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
"""

import json
import os
import sys
import threading
import time
import urllib.parse
import urllib.request

import boto3
from botocore.config import Config

BUCKET = "crash-loop"
TABLE = "crash-loop"
THREADS = 4
LOG_LINES = 10
SIZES = [100, 20_000, 70_000]


def client(kind, endpoint):
    return boto3.client(
        kind,
        endpoint_url=endpoint,
        region_name="ap-northeast-1",
        config=Config(
            retries={"total_max_attempts": 1},
            connect_timeout=2,
            read_timeout=15,
            signature_version="s3v4" if kind == "s3" else None,
        ),
    )


def body_of(key, size):
    seed = (key + "|").encode()
    return (seed * (size // len(seed) + 1))[:size]


def overwrite_body(key, version):
    return body_of("%s@%d" % (key, version), 20_000)


class Acks:
    def __init__(self, path):
        self.f = open(path, "a")
        self.lock = threading.Lock()

    def add(self, *fields):
        with self.lock:
            self.f.write(" ".join(str(x) for x in fields) + "\n")
            self.f.flush()


def until_ok(what, f):
    deadline = time.time() + 120
    while True:
        try:
            return f()
        except Exception as e:  # noqa: BLE001 - the server may be down for a moment
            if time.time() > deadline:
                raise SystemExit("%s: %s" % (what, e))
            time.sleep(0.1)


def setup(kind, endpoint):
    if kind == "s3":
        s3 = client("s3", endpoint)

        def create():
            try:
                s3.create_bucket(Bucket=BUCKET)
            except s3.exceptions.BucketAlreadyOwnedByYou:
                pass

        until_ok("create the bucket", create)
    elif kind == "dynamodb":
        db = client("dynamodb", endpoint)

        def create():
            try:
                db.create_table(
                    TableName=TABLE,
                    AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                    BillingMode="PAY_PER_REQUEST",
                )
            except db.exceptions.ResourceInUseException:
                pass

        until_ok("create the table", create)


def write_one(kind, c, endpoint, tid, n):
    """One write; returns the ack line's fields."""
    if n % 5 == 4:
        key = "ow%d" % tid
        if kind == "s3":
            c.put_object(Bucket=BUCKET, Key=key, Body=overwrite_body(key, n))
        elif kind == "dynamodb":
            c.put_item(TableName=TABLE, Item={"pk": {"S": key}, "v": {"N": str(n)}, "data": {"S": overwrite_body(key, n).decode()}})
        else:
            return None
        return ("ow", key, n)
    key = "t%d/%d" % (tid, n)
    size = SIZES[n % len(SIZES)]
    if kind == "s3":
        c.put_object(Bucket=BUCKET, Key=key, Body=body_of(key, size))
    elif kind == "dynamodb":
        c.put_item(TableName=TABLE, Item={"pk": {"S": key}, "data": {"S": body_of(key, min(size, 20_000)).decode()}})
    else:
        lines = "".join(
            json.dumps({"_msg": "crash loop %s line %d" % (key, i), "batch": key.replace("/", "-"), "run": "crashloop"}) + "\n"
            for i in range(LOG_LINES)
        )
        req = urllib.request.Request(endpoint + "/insert/jsonline", data=lines.encode(), method="POST")
        with urllib.request.urlopen(req, timeout=15) as r:
            if r.status // 100 != 2:
                raise RuntimeError("status %d" % r.status)
        return ("batch", key.replace("/", "-"), LOG_LINES)
    return ("put", key, size)


def write(kind, endpoint, acks_path, stop):
    setup(kind, endpoint)
    acks = Acks(acks_path)

    def worker(tid):
        c = client(kind, endpoint) if kind != "logstore" else None
        n = 0
        while not os.path.exists(stop):
            n += 1
            try:
                ack = write_one(kind, c, endpoint, tid, n)
            except Exception:  # noqa: BLE001 - killed server: not acknowledged
                time.sleep(0.05)
                if kind != "logstore":
                    c = client(kind, endpoint)
                continue
            if ack:
                acks.add(*ack)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def read_acks(path):
    puts, overwrites = [], {}
    for line in open(path):
        kind, key, n = line.split()
        if kind == "ow":
            overwrites[key] = max(overwrites.get(key, 0), int(n))
        else:
            puts.append((kind, key, int(n)))
    return puts, overwrites


def verify(kind, endpoint, acks_path):
    puts, overwrites = read_acks(acks_path)
    bad = []
    if kind == "s3":
        s3 = client("s3", endpoint)
        for _, key, size in puts:
            got = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            if got != body_of(key, size):
                bad.append("%s: %d bytes, not the %d written" % (key, len(got), size))
        for key, acked in overwrites.items():
            got = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            head = got.split(b"|", 1)[0].decode(errors="replace")
            v = int(head.rsplit("@", 1)[1]) if "@" in head and head.rsplit("@", 1)[1].isdigit() else -1
            if v < acked or got != overwrite_body(key, v):
                bad.append("%s: version %d (whole: %s), acknowledged %d" % (key, v, got == overwrite_body(key, v), acked))
    elif kind == "dynamodb":
        db = client("dynamodb", endpoint)
        for _, key, size in puts:
            item = db.get_item(TableName=TABLE, Key={"pk": {"S": key}}, ConsistentRead=True).get("Item")
            if not item or item["data"]["S"].encode() != body_of(key, min(size, 20_000)):
                bad.append("%s: missing or not as written" % key)
        for key, acked in overwrites.items():
            item = db.get_item(TableName=TABLE, Key={"pk": {"S": key}}, ConsistentRead=True).get("Item")
            v = int(item["v"]["N"]) if item else -1
            if v < acked or item["data"]["S"].encode() != overwrite_body(key, v):
                bad.append("%s: version %d, acknowledged %d" % (key, v, acked))
    else:
        q = urllib.parse.urlencode({"query": "run:crashloop"})
        with urllib.request.urlopen(endpoint + "/select/logsql/query?" + q, timeout=120) as r:
            counts = {}
            for line in r:
                rec = json.loads(line)
                counts[rec["batch"]] = counts.get(rec["batch"], 0) + 1
        for _, batch, n in puts:
            if counts.get(batch, 0) != n:
                bad.append("batch %s: %d records of %d" % (batch, counts.get(batch, 0), n))
        partial = [b for b, c in counts.items() if c != LOG_LINES]
        bad.extend("batch %s stored in part (%d records)" % (b, counts[b]) for b in partial)
    print(json.dumps({"acknowledged": len(puts) + len(overwrites), "bad": bad[:20], "bad_count": len(bad)}))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    cmd, kind, endpoint, acks = sys.argv[1:5]
    if cmd == "write":
        write(kind, endpoint, acks, sys.argv[5])
    else:
        verify(kind, endpoint, acks)
