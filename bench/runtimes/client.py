"""bench/runtimes client: cold and warm Lambda Invoke round trips of node-echo and
py-echo through the box's Invoke API (boto3, the box's key, its CA), alternating the two
functions so that both see the same machine.

usage: client.py STATE GATEWAY_URL COLD_ROUNDS WARM_N IDLE_SECONDS
prints one JSON document with the samples' medians.
"""

import json
import statistics
import subprocess
import sys
import time
import tomllib

import boto3
from botocore.config import Config

state, url, cold_rounds, warm_n, idle = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
esb = sys.argv[6]
secrets = tomllib.load(open(f"{state}/secrets.toml", "rb"))
lam = boto3.client(
    "lambda",
    endpoint_url=url,
    region_name="ap-northeast-1",
    aws_access_key_id=secrets["ESB_ACCESS_KEY_ID"],
    aws_secret_access_key=secrets["ESB_SECRET_ACCESS_KEY"],
    verify=f"{state}/tls/ca.pem",
    config=Config(retries={"max_attempts": 1}, read_timeout=120, connect_timeout=30),
)
FUNCTIONS = ["node-echo", "py-echo"]
payload = json.dumps({"hello": "world", "items": [1, 2, 3], "nested": {"k": "v"}})


def invoke(name):
    t = time.perf_counter()
    r = lam.invoke(FunctionName=name, Payload=payload)
    body = r["Payload"].read()
    ms = (time.perf_counter() - t) * 1000
    if r.get("FunctionError") or b'"echo"' not in body:
        sys.exit(f"{name}: {r.get('FunctionError')} {body[:300]!r}")
    return ms


def workers():
    out = subprocess.run([esb, "--state-dir", state, "status", "--json"], capture_output=True, check=True)
    d = json.loads(out.stdout)
    return sum(len(f["workers"]) for f in d["functions"])


def wait_no_workers():
    deadline = time.time() + idle + 120
    while workers() != 0:
        if time.time() > deadline:
            sys.exit("workers were not reaped")
        time.sleep(0.5)


cold = {f: [] for f in FUNCTIONS}
for i in range(cold_rounds):
    wait_no_workers()
    order = FUNCTIONS if i % 2 == 0 else FUNCTIONS[::-1]
    for f in order:
        cold[f].append(invoke(f))

warm = {f: [] for f in FUNCTIONS}
for f in FUNCTIONS:
    for _ in range(20):
        invoke(f)
for i in range(warm_n):
    for f in FUNCTIONS if i % 2 == 0 else FUNCTIONS[::-1]:
        warm[f].append(invoke(f))


def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


print(json.dumps({
    f: {
        "cold_p50_ms": statistics.median(cold[f]),
        "cold_samples": len(cold[f]),
        "warm_p50_ms": statistics.median(warm[f]),
        "warm_p99_ms": q(warm[f], 0.99),
        "warm_samples": len(warm[f]),
    }
    for f in FUNCTIONS
}))
