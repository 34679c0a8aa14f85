#!/usr/bin/env bash
# A warm echo served by a compute node over WireGuard vs by the control node's own workers
# (issue 15: "p50 over WireGuard within 1.5x of local").
#
# Hosts are namespaces made for the run, as in crates/esb/tests/cluster.rs: a LAN bridge in
# a namespace of its own, a control host (192.168.77.11) and a compute host (.12). One
# control box (`esb up`, release build, the e2e fixture app) is measured twice, with the
# same gateway, app, client and token:
#   local      its own workers (the default);
#   wireguard  `esb up` again with ESB_LOCAL_WORKERS=0 and one compute node joined
#              (`esb node join`): every echo worker on the compute node, reached from the
#              gateway through the control namespace's wg0 (userspace WireGuard), the LAN
#              veths and the node's wg0.
# Client: wrk in the control host's namespace, HTTPS keep-alive to the gateway on
# 127.0.0.1, `GET /echo` with a bearer token: concurrency 1 (latency) and 4 (throughput),
# ROUNDS rounds of DURATION s each after a warm-up. Private addresses exist only inside the
# namespaces made here; everything is removed at the end (trap), also on failure.
#
# Usage: [ROUNDS=3] [DURATION=10] bench/cluster/run.sh   (root)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}

[ "$(id -u)" = 0 ] || { echo "bench/cluster/run.sh: run as root" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$2"; }; }
need wrk wrk
need curl curl
need python3 python3
need nsenter util-linux

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${ESB_CACHE_DIR:-/var/cache/esb}/target}
echo "building esb (release) and the static esb-supervisor..." >&2
cargo build --release -q -p esb
RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_DEBUG=false \
  CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_TARGET_DIR="$CARGO_TARGET_DIR/esb-supervisor-static" \
  cargo build --release -q -p esb-supervisor --target x86_64-unknown-linux-gnu
ESB=$CARGO_TARGET_DIR/release/esb
SUPERVISOR=$CARGO_TARGET_DIR/esb-supervisor-static/x86_64-unknown-linux-gnu/release/esb-supervisor

ID=$$
LAN=esbt-blan-$ID
HC=esbt-bhc-$ID # control host
HN=esbt-bhn-$ID # compute host
WORK=$(mktemp -d /tmp/esb-bench-cluster.XXXXXX)
STATE=$WORK/control
NSTATE=$WORK/node
GW_PORT=8443
# Every port below is in the control host's own namespace: nothing on this host's.
export ESB_SUPERVISOR_BIN=$SUPERVISOR ESB_NODE_NETNS=esbt-bn-$ID ESB_CONTROL_NETNS=esbt-bc-$ID \
  ESB_GATEWAY_LISTEN=0.0.0.0:$GW_PORT ESB_S3_LISTEN=127.0.0.1:29000 \
  ESB_DYNAMODB_LISTEN=127.0.0.1:28001 ESB_LOGSTORE_LISTEN=127.0.0.1:29428 \
  ESB_REGISTRY_LISTEN=127.0.0.1:25010 ESB_WG_PORT=51820 \
  GATEWAY_IDLE_TIMEOUT_SECONDS=900 HEARTBEAT_INTERVAL=5
unset ESB_STATE_DIR ESB_TEMPLATE ESB_LOCAL_WORKERS
in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" -- "$@"; }
esbc() { in_ns "$HC" "$ESB" --state-dir "$STATE" "$@"; }
# The compute host's esb sees none of the control box's settings.
esbn() { in_ns "$HN" env -i PATH="$PATH" ESB_NODE_NETNS="esbt-bnn-$ID" "$ESB" --state-dir "$NSTATE" "$@"; }

cleanup() {
  local rc=$?
  [ -f "$NSTATE/cluster/node.json" ] && { esbn node leave >/dev/null 2>&1 || echo "node leave failed" >&2; }
  if [ -d "$STATE" ]; then
    [ "$rc" = 0 ] || tail -n 30 "$STATE/logs/box.log" >&2 2>/dev/null || true
    esbc down >/dev/null 2>&1 || echo "esb down failed" >&2
  fi
  for ns in "$HN" "$HC" "$LAN"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The LAN and its two hosts.
ip netns add "$LAN"
ip -n "$LAN" link add br0 type bridge
ip -n "$LAN" link set br0 up
ip -n "$LAN" link set lo up
host() { # name octet
  ip netns add "$1"
  ip -n "$1" link set lo up
  ip link add eth0 netns "$1" type veth peer name "v$2-$ID" netns "$LAN"
  ip -n "$LAN" link set "v$2-$ID" master br0 up
  ip -n "$1" addr add "192.168.77.$2/24" dev eth0
  ip -n "$1" link set eth0 up
}
host "$HC" 11
host "$HN" 12

mkdir -p "$WORK/app"
(cd crates/esb/tests/e2e && tar --exclude=.esb --exclude=__pycache__ -cf - .) | (cd "$WORK/app" && tar -xf -)

URL=https://127.0.0.1:$GW_PORT
token() {
  read -r API_KEY USER PASS < <(python3 - "$STATE/secrets.toml" <<'PY'
import sys, tomllib
s = tomllib.load(open(sys.argv[1], "rb"))
print(s["X_API_KEY"], s["AUTH_USER"], s["AUTH_PASS"])
PY
)
  in_ns "$HC" curl -sS --cacert "$STATE/tls/ca.pem" -X POST "$URL/user/auth/ver1.0" \
    -H "x-api-key: $API_KEY" \
    -d "{\"AuthParameters\":{\"USERNAME\":\"$USER\",\"PASSWORD\":\"$PASS\"}}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["AuthenticationResult"]["IdToken"])'
}
# ms from wrk's "1.23ms" / "456.00us" / "1.01s".
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/, "", v); print v/1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v); print v+0 } else { sub(/s$/, "", v); print v*1000 } }'; }
run_wrk() { # conns seconds -> "rps p50 p99 failed"
  local out rps p50 p99 bad errs
  out=$(in_ns "$HC" wrk -t"$(($1 < 2 ? $1 : 2))" -c"$1" -d"$2s" --latency \
    -H "Authorization: Bearer $TOKEN" "$URL/echo")
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
  bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  errs=$(awk -F'[ ,]+' '/Socket errors/ {print $4+$6+$8+$10}' <<<"$out")
  echo "$rps $p50 $p99 $((${bad:-0} + ${errs:-0}))"
}
echo_nodes() { # the nodes echo's workers are on
  esbc status --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(" ".join(sorted({w["node"] for f in d["functions"] if f["name"] == "echo" for w in f["workers"]})))'
}
measure() { # label
  echo "warm-up ($1): /echo at concurrency 4 for 5 s..." >&2
  run_wrk 4 5 >/dev/null
  for r in $(seq "$ROUNDS"); do
    echo "$1 c1 $(run_wrk 1 "$DURATION")" >>"$WORK/rounds.txt"
    echo "$1 c4 $(run_wrk 4 "$DURATION")" >>"$WORK/rounds.txt"
    echo "  round $r done" >&2
  done
  echo "$1: echo workers on: $(echo_nodes)" >&2
}
: >"$WORK/rounds.txt"

echo "local: esb up in the control host (its own workers)..." >&2
(cd "$WORK/app" && esbc up -t template.yaml >"$WORK/up1.out" 2>&1) || { cat "$WORK/up1.out" >&2; exit 1; }
TOKEN=$(token)
measure local
esbc down >/dev/null

echo "wireguard: esb up with ESB_LOCAL_WORKERS=0, one compute node joined..." >&2
(cd "$WORK/app" && ESB_LOCAL_WORKERS=0 esbc up -t template.yaml >"$WORK/up2.out" 2>&1) || { cat "$WORK/up2.out" >&2; exit 1; }
JOIN=$(esbc node token --endpoint "192.168.77.11:$GW_PORT")
esbn node join "$JOIN" --node-id bench-node --wg-port 51821 >&2
deadline=$((SECONDS + 120))
until esbc status --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if any(a["node"] == "bench-node" and a["up"] for a in d.get("agents", [])) else 1)'; do
  [ $SECONDS -lt $deadline ] || { echo "the compute node's agent is not up after 120 s" >&2; exit 1; }
  sleep 1
done
TOKEN=$(token)
measure wireguard
[ "$(echo_nodes)" = bench-node ] || { echo "echo ran elsewhere than the compute node: $(echo_nodes)" >&2; exit 1; }

python3 - "$WORK/rounds.txt" "$ROUNDS" "$DURATION" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
def med(label, conc, i):
    return statistics.median(float(r[i]) for r in rows if r[0] == label and r[1] == conc)
fails = sum(int(r[5]) for r in rows)
print(f"# rounds={sys.argv[2]} duration={sys.argv[3]}s, medians of the rounds; failed requests: {fails}")
print("| figure | local workers | compute node over WireGuard | ratio (wg/local) |")
print("|---|---:|---:|---:|")
for name, conc, i, unit in [("p50, concurrency 1", "c1", 3, "ms"), ("p99, concurrency 1", "c1", 4, "ms"),
                            ("requests/s, concurrency 1", "c1", 2, ""), ("p50, concurrency 4", "c4", 3, "ms"),
                            ("requests/s, concurrency 4", "c4", 2, "")]:
    a, b = med("local", conc, i), med("wireguard", conc, i)
    print(f"| {name} | {a:.3f} {unit} | {b:.3f} {unit} | {b / a:.2f}x |")
p50 = med("wireguard", "c1", 3) / med("local", "c1", 3)
print(f"goal (p50 over WireGuard within 1.5x of local): {'met' if p50 <= 1.5 else 'NOT met'} ({p50:.2f}x)")
PY
