"""Benchmark floor: the echo handler called in a loop inside its own process.

Usage: python floor.py N EVENT_JSON  -> prints p50 and p99 in microseconds as JSON.
Each call includes what the runtime client does per event around the handler:
decode the JSON event, call the handler, encode the result.
"""

import json
import sys
import time

import handlers


def main():
    n = int(sys.argv[1])
    body = sys.argv[2].encode()
    samples = []
    for _ in range(1000):
        json.dumps(handlers.echo(json.loads(body), None)).encode()
    for _ in range(n):
        t0 = time.perf_counter_ns()
        json.dumps(handlers.echo(json.loads(body), None)).encode()
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    print(json.dumps({
        "n": n,
        "p50_us": samples[n // 2] / 1000,
        "p99_us": samples[(n * 99) // 100] / 1000,
        "mean_us": sum(samples) / n / 1000,
    }))


if __name__ == "__main__":
    main()
