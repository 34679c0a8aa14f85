"""bench/pause client (boto3 through the box's Invoke API, the box's key and CA).

usage:
  client.py latency STATE URL ESB COLD N
      cold: the first invocation of each of cold-1..cold-COLD (a new worker each);
      then N pairs on `pz`: wait until its worker is paused (esb status), invoke (the
      gateway resumes it: "resumed"), invoke again at once (same worker: "warm").
  client.py cpu STATE URL ESB NETNS COUNT WINDOW PAUSED
      starts COUNT workers of `idle50` (COUNT invocations held until a common instant),
      waits until they are idle (PAUSED=1: until all are paused), then sums the CPU time
      their cgroups used over WINDOW seconds (cpu.stat usage_usec, or v1's cpuacct.usage), and the host's
      (/proc/stat) over the same window.
prints one JSON document.
"""

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import tomllib

import boto3
from botocore.config import Config

mode, state, url, esb = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
secrets = tomllib.load(open(f"{state}/secrets.toml", "rb"))


def client():
    return boto3.client(
        "lambda",
        endpoint_url=url,
        region_name="ap-northeast-1",
        aws_access_key_id=secrets["ESB_ACCESS_KEY_ID"],
        aws_secret_access_key=secrets["ESB_SECRET_ACCESS_KEY"],
        verify=f"{state}/tls/ca.pem",
        config=Config(retries={"total_max_attempts": 1}, read_timeout=600, connect_timeout=60,
                      max_pool_connections=100),
    )


lam = client()


def invoke(name, event=None, c=None):
    payload = json.dumps(event or {"hello": "world", "items": [1, 2, 3]})
    t = time.perf_counter()
    r = (c or lam).invoke(FunctionName=name, Payload=payload)
    body = r["Payload"].read()
    ms = (time.perf_counter() - t) * 1000
    if r.get("FunctionError") or b'"echo"' not in body:
        sys.exit(f"{name}: {r.get('FunctionError')} {body[:300]!r}")
    return ms


def workers(name):
    out = subprocess.run([esb, "--state-dir", state, "status", "--json"], capture_output=True, check=True)
    for f in json.loads(out.stdout)["functions"]:
        if f["name"] == name:
            return f["workers"]
    return []


def wait(what, pred, limit=600):
    deadline = time.time() + limit
    while not pred():
        if time.time() > deadline:
            sys.exit(f"gave up waiting for {what}")
        time.sleep(0.1)


def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def summary(xs):
    return {"p50_ms": statistics.median(xs), "p90_ms": q(xs, 0.9), "min_ms": min(xs), "samples": len(xs)}


if mode == "latency":
    cold_n, n = int(sys.argv[5]), int(sys.argv[6])
    cold = [invoke(f"cold-{i + 1}") for i in range(cold_n)]
    invoke("pz")
    resumed, warm = [], []
    for _ in range(n):
        wait("pz paused", lambda: [w["state"] for w in workers("pz")] == ["paused"])
        resumed.append(invoke("pz"))
        warm.append(invoke("pz"))
    print(json.dumps({
        "cold": summary(cold),
        "resumed": summary(resumed),
        "warm": summary(warm),
        # Paired: each resumed sample minus the warm one right after it, same worker.
        "resume_overhead_p50_ms": statistics.median(r - w for r, w in zip(resumed, warm)),
    }))
elif mode == "cpu":
    netns, count, window, paused = sys.argv[5], int(sys.argv[6]), float(sys.argv[7]), sys.argv[8] == "1"
    # Ramp: one new invocation a second (creations do not pile up on a small machine),
    # all held until the same instant.
    ramp = 1.0
    until = time.time() + count * ramp + 30
    errors = []

    def hold(c):
        try:
            invoke("idle50", {"until": until, "echo": 1}, c)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = []
    for i in range(count):
        t = threading.Thread(target=hold, args=(client(),))
        t.start()
        threads.append(t)
        time.sleep(ramp)
    for t in threads:
        t.join()
    if errors:
        sys.exit(f"{len(errors)} invocations failed: {errors[:3]}")
    want = "paused" if paused else "idle"
    wait(f"{count} {want} workers", lambda: [w["state"] for w in workers("idle50")] == [want] * count)
    ids = [w["id"] for w in workers("idle50")]
    time.sleep(2)

    v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")

    def cpu_usec():
        total = 0
        for i in ids:
            if v2:
                with open(f"/sys/fs/cgroup/esb-runtime/{netns}/{i}/cpu.stat") as f:
                    for line in f:
                        k, v = line.split()
                        if k == "usage_usec":
                            total += int(v)
            else:
                with open(f"/sys/fs/cgroup/cpuacct/esb-runtime/{netns}/{i}/cpuacct.usage") as f:
                    total += int(f.read()) // 1000
        return total

    def host():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v) - idle, sum(v)

    c0, (b0, t0) = cpu_usec(), host()
    time.sleep(window)
    c1, (b1, t1) = cpu_usec(), host()
    states = [w["state"] for w in workers("idle50")]
    if states != [want] * count:
        sys.exit(f"workers changed state during the window: {states}")
    print(json.dumps({
        "workers": count,
        "paused": paused,
        "window_s": window,
        "workers_cpu_ms": (c1 - c0) / 1000,
        "host_busy_pct": 100 * (b1 - b0) / max(1, t1 - t0),
    }))
else:
    sys.exit(f"unknown mode {mode}")
