#!/usr/bin/env bash
# Benchmark (issue 18): idle pause (ESB_CONTAINER_PAUSE), on this machine, in one run.
#   1. latency, one box with pause on (ESB_PAUSE_IDLE_SECONDS=1): Lambda Invoke round trip
#      (boto3 -> the box's Invoke API -> worker) of a Python echo
#        - cold: the first call of each of COLD identical functions (a new worker each);
#        - resumed: a call to a worker that is paused (the gateway resumes it first);
#        - warm: the next call right after, same worker;
#      N resumed/warm pairs; the resume overhead is the median of (resumed - warm);
#   2. idle CPU: COUNT workers held busy together then left idle, over WINDOW seconds: the
#      CPU time their cgroups used (cpu.stat) and the host's busy share (/proc/stat), once
#      paused (the same box) and once not (a second box with pause off).
#
#   bench/pause/run.sh                     # COLD=8 N=30 COUNT=50 WINDOW=30
#
# Root; loopback ports and node namespaces of their own (esbt-bp*-PID); `esb down` at the
# end, also on failure. Noisy: the machine is shared (other builds run): compare the
# figures of one run, not across runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
COLD=${COLD:-8}
N=${N:-30}
COUNT=${COUNT:-50}
WINDOW=${WINDOW:-30}
[ "$(id -u)" = 0 ] || { echo "bench/pause/run.sh: run as root (esb up needs it)" >&2; exit 1; }
venv=$(scripts/prereqs.sh)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${ESB_CACHE_DIR:-/var/cache/esb}/target}
echo "building esb (release) and the static esb-supervisor..." >&2
cargo build --release -q -p esb
RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_DEBUG=false \
  CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_TARGET_DIR="$CARGO_TARGET_DIR/esb-supervisor-static" \
  cargo build --release -q -p esb-supervisor --target x86_64-unknown-linux-gnu
ESB=$CARGO_TARGET_DIR/release/esb
export ESB_SUPERVISOR_BIN=$CARGO_TARGET_DIR/esb-supervisor-static/x86_64-unknown-linux-gnu/release/esb-supervisor

WORK=$(mktemp -d /tmp/esb-bench-pause.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
unset ESB_STATE_DIR ESB_TEMPLATE
STATES=()
cleanup() {
  for s in "${STATES[@]}"; do
    [ -d "$s" ] && { "$ESB" --state-dir "$s" down >/dev/null 2>&1 || echo "esb down ($s) failed" >&2; }
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The app: COLD identical cold-N functions, pz, and idle50 (room for COUNT workers).
mkdir -p "$WORK/app"
cp -r bench/pause/app/python "$WORK/app/python"
{
  printf "AWSTemplateFormatVersion: '2010-09-09'\nTransform: AWS::Serverless-2016-10-31\n"
  printf "Globals:\n  Function:\n    Runtime: python3.11\n    CodeUri: python/\n    Handler: app.handler\n    MemorySize: 128\n    Timeout: 600\n"
  printf "Resources:\n"
  for i in $(seq 1 "$COLD"); do printf "  Cold%s:\n    Type: AWS::Serverless::Function\n    Properties:\n      FunctionName: cold-%s\n" "$i" "$i"; done
  printf "  Pz:\n    Type: AWS::Serverless::Function\n    Properties:\n      FunctionName: pz\n"
  printf "  Idle:\n    Type: AWS::Serverless::Function\n    Properties:\n      FunctionName: idle50\n      ReservedConcurrentExecutions: %s\n" "$COUNT"
} >"$WORK/app/template.yaml"

# box NAME PAUSE: starts a box (pause on or off); sets STATE, URL, NETNS.
box() {
  STATE=$WORK/state-$1
  NETNS=esbt-bp$1-$$
  local gw
  gw=$(free_port)
  URL=https://localhost:$gw
  STATES+=("$STATE")
  echo "esb up ($1: pause=$2, gateway 127.0.0.1:$gw, netns $NETNS)..." >&2
  (cd "$WORK/app" && env ESB_NODE_NETNS="$NETNS" ESB_CONTROL_NETNS="esbt-bc$1-$$" \
    ESB_GATEWAY_LISTEN=127.0.0.1:$gw ESB_S3_LISTEN=127.0.0.1:$(free_port) \
    ESB_DYNAMODB_LISTEN=127.0.0.1:$(free_port) ESB_LOGSTORE_LISTEN=127.0.0.1:$(free_port) \
    ESB_LOGSTORE_WORKER_LISTEN=127.0.0.1:$(free_port) ESB_REGISTRY_LISTEN=127.0.0.1:$(free_port) \
    ESB_WG_PORT=$(free_port) ESB_CONTAINER_PAUSE="$2" ESB_PAUSE_IDLE_SECONDS=1 \
    GATEWAY_IDLE_TIMEOUT_SECONDS=3600 HEARTBEAT_INTERVAL=5 POOL_ACQUIRE_TIMEOUT=120 \
    "$ESB" --state-dir "$STATE" up >"$WORK/up-$1.out" 2>&1) || { cat "$WORK/up-$1.out" >&2; exit 1; }
}
client() { "$venv/bin/python" bench/pause/client.py "$@"; }

box on 1
echo "latency: $COLD cold, $N resumed/warm pairs..." >&2
client latency "$STATE" "$URL" "$ESB" "$COLD" "$N" >"$WORK/latency.json"
echo "idle CPU: $COUNT paused workers, ${WINDOW}s..." >&2
client cpu "$STATE" "$URL" "$ESB" "$NETNS" "$COUNT" "$WINDOW" 1 >"$WORK/cpu-paused.json"
"$ESB" --state-dir "$STATE" down >/dev/null
box off 0
echo "idle CPU: $COUNT unpaused workers, ${WINDOW}s..." >&2
client cpu "$STATE" "$URL" "$ESB" "$NETNS" "$COUNT" "$WINDOW" 0 >"$WORK/cpu-idle.json"

python3 - "$WORK" <<'PY'
import json, sys
w = sys.argv[1]
lat = json.load(open(f"{w}/latency.json"))
p, u = json.load(open(f"{w}/cpu-paused.json")), json.load(open(f"{w}/cpu-idle.json"))
print(f"{'invoke':<10} {'p50 ms':>8} {'p90 ms':>8} {'min ms':>8} {'samples':>8}")
for k in ("warm", "resumed", "cold"):
    x = lat[k]
    print(f"{k:<10} {x['p50_ms']:>8.2f} {x['p90_ms']:>8.2f} {x['min_ms']:>8.2f} {x['samples']:>8}")
print(f"resume overhead (median of resumed - warm, paired): {lat['resume_overhead_p50_ms']:.2f} ms; "
      f"resumed/warm p50 {lat['resumed']['p50_ms'] / lat['warm']['p50_ms']:.2f}x, "
      f"cold/resumed p50 {lat['cold']['p50_ms'] / lat['resumed']['p50_ms']:.1f}x")
print(f"{p['workers']} idle workers over {p['window_s']:.0f} s: paused {p['workers_cpu_ms']:.1f} ms CPU "
      f"(host busy {p['host_busy_pct']:.1f}%), unpaused {u['workers_cpu_ms']:.1f} ms CPU (host busy {u['host_busy_pct']:.1f}%)")
PY
