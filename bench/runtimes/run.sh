#!/usr/bin/env bash
# Benchmark (issue 20): the Node.js runtime against the Python one, in one box, one run.
#   1. cold start: Lambda Invoke round trip (boto3 -> the box's Invoke API -> a new worker:
#      container, supervisor, runtime client init, handler) of a Node.js 20 echo vs the
#      same echo in Python 3.11, COLD rounds, each after the gateway reaped every worker
#      (GATEWAY_IDLE_TIMEOUT_SECONDS=IDLE), the two functions alternating first;
#   2. warm: WARM sequential invocations of each, interleaved; p50 and p99;
#   3. with BASES=1, the time to build each base image from nothing (debootstrap from the
#      apt mirror, pip / npm), in a cache directory of its own.
#
#   bench/runtimes/run.sh                  # COLD=10 WARM=500 IDLE=3
#   BASES=1 bench/runtimes/run.sh
#
# Root; loopback ports and a node namespace of its own (esbt-bench-PID); `esb down` at the
# end, also on failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
COLD=${COLD:-10}
WARM=${WARM:-500}
IDLE=${IDLE:-3}
[ "$(id -u)" = 0 ] || { echo "bench/runtimes/run.sh: run as root (esb up needs it)" >&2; exit 1; }
venv=$(scripts/prereqs.sh)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${ESB_CACHE_DIR:-/var/cache/esb}/target}
echo "building esb (release) and the static esb-supervisor..." >&2
cargo build --release -q -p esb
RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_DEBUG=false \
  CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_TARGET_DIR="$CARGO_TARGET_DIR/esb-supervisor-static" \
  cargo build --release -q -p esb-supervisor --target x86_64-unknown-linux-gnu
ESB=$CARGO_TARGET_DIR/release/esb
SUPERVISOR=$CARGO_TARGET_DIR/esb-supervisor-static/x86_64-unknown-linux-gnu/release/esb-supervisor

WORK=$(mktemp -d /tmp/esb-bench-runtimes.XXXXXX)
STATE=$WORK/state
NETNS=esbt-bench-$$
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GW_PORT=$(free_port)
export ESB_SUPERVISOR_BIN=$SUPERVISOR ESB_NODE_NETNS=$NETNS ESB_CONTROL_NETNS=esbt-benchc-$$ \
  ESB_GATEWAY_LISTEN=127.0.0.1:$GW_PORT ESB_S3_LISTEN=127.0.0.1:$(free_port) \
  ESB_DYNAMODB_LISTEN=127.0.0.1:$(free_port) ESB_LOGSTORE_LISTEN=127.0.0.1:$(free_port) \
  ESB_LOGSTORE_WORKER_LISTEN=127.0.0.1:$(free_port) ESB_REGISTRY_LISTEN=127.0.0.1:$(free_port) \
  ESB_WG_PORT=$(free_port) GATEWAY_IDLE_TIMEOUT_SECONDS=$IDLE HEARTBEAT_INTERVAL=1
unset ESB_STATE_DIR ESB_TEMPLATE
esb() { "$ESB" --state-dir "$STATE" "$@"; }
cleanup() {
  [ -d "$STATE" ] && { esb down >/dev/null 2>&1 || echo "esb down failed" >&2; }
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cp -r bench/runtimes/app "$WORK/app"
echo "esb up (gateway 127.0.0.1:$GW_PORT, netns $NETNS)..." >&2
(cd "$WORK/app" && esb up >"$WORK/up.out" 2>&1) || { cat "$WORK/up.out" >&2; exit 1; }
echo "cold rounds: $COLD, warm invocations: $WARM per function..." >&2
"$venv/bin/python" bench/runtimes/client.py "$STATE" "https://localhost:$GW_PORT" "$COLD" "$WARM" "$IDLE" "$ESB" \
  >"$WORK/result.json"
python3 - "$WORK/result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
n, p = r["node-echo"], r["py-echo"]
print(f"{'function':<12} {'cold p50 ms':>12} {'warm p50 ms':>12} {'warm p99 ms':>12}")
for name, x in r.items():
    print(f"{name:<12} {x['cold_p50_ms']:>12.1f} {x['warm_p50_ms']:>12.2f} {x['warm_p99_ms']:>12.2f}")
print(f"node / python: cold {n['cold_p50_ms'] / p['cold_p50_ms']:.2f}x, warm p50 {n['warm_p50_ms'] / p['warm_p50_ms']:.2f}x "
      f"({n['cold_samples']} cold, {n['warm_samples']} warm samples each)")
PY

if [ "${BASES:-0}" = 1 ]; then
  echo "base images from nothing (ESB_CACHE_DIR=$WORK/cache):" >&2
  for rt in python3.11 python3.13 nodejs18.x nodejs20.x; do
    d=$WORK/base-$rt
    mkdir -p "$d/f"
    case $rt in
      python*) echo 'def handler(e, c): return e' >"$d/f/app.py" ;;
      *) echo 'export const handler = async (e) => e;' >"$d/f/app.mjs" ;;
    esac
    printf 'Transform: AWS::Serverless-2016-10-31\nResources:\n  F:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: f/\n      Handler: app.handler\n      Runtime: %s\n' "$rt" >"$d/template.yaml"
    start=$(date +%s.%N)
    (cd "$d" && ESB_CACHE_DIR=$WORK/cache "$ESB" --state-dir "$d/state" build >/dev/null 2>"$d/build.err") ||
      { cat "$d/build.err" >&2; exit 1; }
    end=$(date +%s.%N)
    size=$(du -b "$WORK"/cache/base-images/*/layer.tar.gz | cut -f1)
    awk -v rt="$rt" -v s="$start" -v e="$end" -v b="$size" \
      'BEGIN { printf "%-11s base built in %6.1f s, %5.1f MB compressed\n", rt, e - s, b / 1e6 }'
    rm -rf "$WORK/cache/base-images"
  done
fi
