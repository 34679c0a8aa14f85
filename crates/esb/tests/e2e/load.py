"""A bounded load generator for the e2e harness.

    python load.py --url https://localhost:PORT --ca CA --token TOKEN \
        --path /echo --seconds N --concurrency C

Sends authenticated GET requests to URL+PATH from C threads for N seconds (N <= 60,
C <= 8: this runs on shared CI machines against loopback) and prints one JSON line:

    {"ok": n, "failed": n, "statuses": {"200": n, ...}, "versions": {"1": n, ...},
     "errors": {"ConnectionError": n}, "latency_ms": {"p50": x, "p99": y, "max": z}}

`versions` counts the "version" field of the echo function's answers. The exit status is
0 whatever the answers were (the harness judges); only bad usage exits 2.
"""

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter

import requests

MAX_SECONDS = 60
MAX_CONCURRENCY = 8
REQUEST_TIMEOUT = 60


def worker(args, deadline, lock, totals, latencies):
    session = requests.Session()
    session.verify = args.ca
    session.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise replace `verify`
    headers = {"Authorization": "Bearer " + args.token} if args.token else {}
    target = args.url.rstrip("/") + args.path
    statuses, versions, errors, lat = Counter(), Counter(), Counter(), []
    ok = failed = 0
    while time.monotonic() < deadline:
        start = time.perf_counter()
        try:
            r = session.get(target, headers=headers, timeout=REQUEST_TIMEOUT)
        except Exception as e:  # noqa: BLE001 - every failure is counted, none ends the run
            failed += 1
            errors[type(e).__name__] += 1
            # A refused connection fails at once: do not spin on it.
            time.sleep(0.05)
            continue
        lat.append((time.perf_counter() - start) * 1000.0)
        statuses[str(r.status_code)] += 1
        if r.status_code == 200:
            ok += 1
            try:
                version = r.json().get("version")
            except ValueError:
                version = None
            if version is not None:
                versions[str(version)] += 1
        else:
            failed += 1
    with lock:
        totals["ok"] += ok
        totals["failed"] += failed
        totals["statuses"].update(statuses)
        totals["versions"].update(versions)
        totals["errors"].update(errors)
        latencies.extend(lat)


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, int(round(p / 100.0 * (len(sorted_values) - 1))))
    return round(sorted_values[i], 3)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="https://localhost:PORT")
    ap.add_argument("--ca", required=True, help="the box's CA file")
    ap.add_argument("--token", default="", help="IdToken for Authorization: Bearer")
    ap.add_argument("--path", default="/echo")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args(argv)
    if not os.path.isfile(args.ca):
        ap.error(f"--ca {args.ca}: no such file")
    if not args.path.startswith("/"):
        ap.error("--path must start with /")
    if not 0 < args.seconds <= MAX_SECONDS:
        ap.error(f"--seconds must be in (0, {MAX_SECONDS}]")
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        ap.error(f"--concurrency must be in [1, {MAX_CONCURRENCY}]")

    totals = {"ok": 0, "failed": 0, "statuses": Counter(), "versions": Counter(),
              "errors": Counter()}
    latencies = []
    lock = threading.Lock()
    deadline = time.monotonic() + args.seconds
    threads = [
        threading.Thread(target=worker, args=(args, deadline, lock, totals, latencies),
                         daemon=True)
        for _ in range(args.concurrency)
    ]
    for t in threads:
        t.start()
    for t in threads:
        # Each thread stops at the deadline plus at most one request's timeout.
        t.join(args.seconds + REQUEST_TIMEOUT + 5)
    with lock:
        latencies.sort()
        out = {
            "ok": totals["ok"],
            "failed": totals["failed"],
            "statuses": dict(totals["statuses"]),
            "versions": dict(totals["versions"]),
            "errors": dict(totals["errors"]),
            "latency_ms": {
                "p50": percentile(latencies, 50),
                "p99": percentile(latencies, 99),
                "max": round(latencies[-1], 3) if latencies else None,
            },
        }
    print(json.dumps(out, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
