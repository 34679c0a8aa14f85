#!/usr/bin/env bash
# The whole box (`esb up`): warm request latency and throughput of a Python echo through
# HTTPS with auth, and the memory of the idle box (every process, no workers).
#
# One real box, started with `esb up` from the release build, serving the end-to-end fixture
# app (crates/esb/tests/e2e/template.yaml) on loopback ports of its own and a node namespace
# of its own (esbt-bench-PID). Client: wrk (Debian), HTTPS keep-alive, `GET /echo` with
# `Authorization: Bearer <IdToken>` from the box's auth endpoint.
#
#  1. memory of the fresh idle box (after `up`, before any request: no workers);
#  2. warm-up (concurrency 4, so that 4 warm workers exist), then ROUNDS rounds of:
#     /echo at concurrency 1 (sequential requests on one connection) for DURATION s,
#     /echo at concurrency 4 for DURATION s, the worker alone (the same kind of event
#     POSTed straight to one warm echo worker from inside the box's node namespace: a
#     breakdown, not a peer) for 5 s, and /health at concurrency 1 for 5 s (context: TLS +
#     gateway without auth or function); CPU time of every box process around each run;
#  3. memory of the idle box after the load, once every worker has been reaped
#     (GATEWAY_IDLE_TIMEOUT_SECONDS=IDLE) — what a box that served traffic then idles holds.
# `esb down` always runs at the end (trap), also on failure.
#
# Usage: [ROUNDS=3] [DURATION=10] [IDLE=30] [OUT=FILE.json] bench/box/run.sh
# (root; loopback only). Prints a report; with OUT, also writes the raw figures as JSON.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
IDLE=${IDLE:-30}
# The direct run uses a worker the gateway sees idle for ~7 s: it must not be reaped meanwhile.
[ "$IDLE" -ge 20 ] || { echo "IDLE must be at least 20 (seconds)" >&2; exit 2; }

[ "$(id -u)" = 0 ] || { echo "bench/box/run.sh: run as root (esb up needs it)" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$2"; }; }
need wrk wrk
need curl curl
need python3 python3

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
echo "building esb (release) and the static esb-supervisor..." >&2
cargo build --release -q -p esb
# As esb_supervisor::build_static does: static, stripped, in a target dir of its own.
RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_DEBUG=false \
  CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_TARGET_DIR="$CARGO_TARGET_DIR/esb-supervisor-static" \
  cargo build --release -q -p esb-supervisor --target x86_64-unknown-linux-gnu
ESB=$CARGO_TARGET_DIR/release/esb
SUPERVISOR=$CARGO_TARGET_DIR/esb-supervisor-static/x86_64-unknown-linux-gnu/release/esb-supervisor

WORK=$(mktemp -d /tmp/esb-bench-box.XXXXXX)
STATE=$WORK/state
NETNS=esbt-bench-$$
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GW_PORT=$(free_port); S3_PORT=$(free_port); DDB_PORT=$(free_port); LOGS_PORT=$(free_port)
export ESB_SUPERVISOR_BIN=$SUPERVISOR ESB_NODE_NETNS=$NETNS \
  ESB_GATEWAY_LISTEN=127.0.0.1:$GW_PORT ESB_S3_LISTEN=127.0.0.1:$S3_PORT \
  ESB_DYNAMODB_LISTEN=127.0.0.1:$DDB_PORT ESB_LOGSTORE_LISTEN=127.0.0.1:$LOGS_PORT \
  GATEWAY_IDLE_TIMEOUT_SECONDS=$IDLE HEARTBEAT_INTERVAL=1
unset ESB_STATE_DIR ESB_TEMPLATE
esb() { "$ESB" --state-dir "$STATE" "$@"; }

BOX_PID=""
cleanup() {
  local rc=$?
  if [ -d "$STATE" ]; then
    esb down >/dev/null 2>&1 || echo "esb down failed" >&2
    # Our own box process only, by PID, if `down` could not stop it.
    if [ -n "$BOX_PID" ] && kill -0 "$BOX_PID" 2>/dev/null; then kill -TERM "$BOX_PID" 2>/dev/null || true; sleep 5; fi
    if [ "$rc" != 0 ]; then tail -n 30 "$STATE/logs/box.log" >&2 2>/dev/null || true; fi
    if [ -n "$BOX_PID" ] && kill -0 "$BOX_PID" 2>/dev/null; then
      echo "the box (pid $BOX_PID) is still running; its state is kept in $STATE" >&2
      return
    fi
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$WORK/app"
(cd crates/esb/tests/e2e && tar --exclude=.esb --exclude=__pycache__ -cf - .) | (cd "$WORK/app" && tar -xf -)
# No provisioned concurrency: the idle box must hold no worker (the fixture keeps one for
# `public`; its memory is a function's, not the box's).
sed -i '/ProvisionedConcurrencyConfig:/,+1d' "$WORK/app/template.yaml"
! grep -q ProvisionedConcurrent "$WORK/app/template.yaml" || { echo "could not remove provisioned concurrency" >&2; exit 1; }

echo "esb up (state $STATE, gateway 127.0.0.1:$GW_PORT, netns $NETNS)..." >&2
(cd "$WORK/app" && esb up -t template.yaml >"$WORK/up.out" 2>&1) || { cat "$WORK/up.out" >&2; exit 1; }
BOX_PID=$(cut -d' ' -f1 "$STATE/run/box.pid")

# Waits (bounded) until every component runs and no function has a worker.
workers() { esb status --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
down = [c["name"] for c in d["components"] if c["state"] != "running"]
print(sum(len(f["workers"]) for f in d["functions"]) + len(down))'; }
wait_idle() {
  local deadline=$((SECONDS + 180))
  until [ "$(workers)" = 0 ]; do
    [ $SECONDS -lt $deadline ] || { echo "the box did not go idle (no workers) within 180 s" >&2; exit 1; }
    sleep 1
  done
}

wait_idle
sleep 5 # let start-up settle (no request has been served yet)
python3 bench/box/mem.py "$STATE" "fresh idle box" >"$WORK/mem-fresh.json"

# Secrets and a token (the box's CA is verified here; wrk does not verify certificates).
read -r API_KEY USER PASS < <(python3 - "$STATE/secrets.toml" <<'PY'
import sys, tomllib
s = tomllib.load(open(sys.argv[1], "rb"))
print(s["X_API_KEY"], s["AUTH_USER"], s["AUTH_PASS"])
PY
)
URL=https://localhost:$GW_PORT
CA=$STATE/tls/ca.pem
TOKEN=$(curl -sS --cacert "$CA" -X POST "$URL/user/auth/ver1.0" -H "x-api-key: $API_KEY" \
  -d "{\"AuthParameters\":{\"USERNAME\":\"$USER\",\"PASSWORD\":\"$PASS\"}}" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["AuthenticationResult"]["IdToken"])')
# The route really needs the token, and answers with the token's user.
code=$(curl -sS --cacert "$CA" -o /dev/null -w '%{http_code}' "$URL/echo")
[ "$code" = 401 ] || { echo "GET /echo without a token answered $code, not 401" >&2; exit 1; }
body=$(curl -sS --cacert "$CA" --max-time 120 -H "Authorization: Bearer $TOKEN" "$URL/echo")
python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert d["username"]=="'"$USER"'" and d["method"]=="GET", d' "$body" ||
  { echo "unexpected /echo answer: $body" >&2; exit 1; }

# ms from wrk's "1.23ms" / "456.00us" / "1.01s".
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/, "", v); print v/1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v); print v+0 } else { sub(/s$/, "", v); print v*1000 } }'; }
run_wrk() { # path conns seconds [auth] -> "rps p50 p99 requests failed"
  local args=(-t"$(($2 < 2 ? $2 : 2))" -c"$2" -d"$3s" --latency) out
  [ "${4:-}" = auth ] && args+=(-H "Authorization: Bearer $TOKEN")
  out=$(wrk "${args[@]}" "$URL$1")
  wrk_fields "$out"
}
wrk_fields() { # wrk's report -> "rps p50 p99 requests failed"
  local out=$1 rps p50 p99 n bad errs
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  errs=$(awk -F'[ ,]+' '/Socket errors/ {print $4+$6+$8+$10}' <<<"$out")
  echo "$rps $p50 $p99 $n $((${bad:-0} + ${errs:-0}))"
}

# The worker alone (breakdown, not a peer): the same kind of REST v1 event POSTed by wrk
# straight to one warm echo worker's invoke endpoint (supervisor -> awslambdaric -> handler),
# from inside the box's own node namespace, where the gateway reaches its workers.
python3 - "$TOKEN" "$USER" >"$WORK/direct.lua" <<'PY'
import json, sys, time
token, user = sys.argv[1], sys.argv[2]
headers = {"host": "localhost", "authorization": "Bearer " + token}
event = {
    "resource": "/echo", "path": "/echo", "httpMethod": "GET", "headers": headers,
    "multiValueHeaders": {k: [v] for k, v in headers.items()},
    "queryStringParameters": None, "multiValueQueryStringParameters": None,
    "pathParameters": None, "stageVariables": None,
    "requestContext": {
        "accountId": "000000000000", "apiId": "esb", "authorizer": {"claims": {"cognito:username": user}},
        "domainName": "localhost", "domainPrefix": "localhost", "httpMethod": "GET",
        "identity": {"sourceIp": "127.0.0.1", "userAgent": None}, "path": "/dev/echo",
        "protocol": "HTTP/1.1", "requestId": "00000000-0000-0000-0000-000000000000",
        "requestTimeEpoch": int(time.time() * 1000), "resourcePath": "/echo", "stage": "dev",
    },
    "body": None, "isBase64Encoded": False,
}
print('wrk.method = "POST"')
print('wrk.headers["Content-Type"] = "application/json"')
print("wrk.body = " + json.dumps(json.dumps(event)))
PY
worker_ip() { # the address of one idle echo worker (its CNI attachment record)
  esb status --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
echo = next(f for f in d["functions"] if f["name"] == "echo")
idle = sorted(w["id"] for w in echo["workers"] if w["state"] == "idle")
print(json.load(open(sys.argv[1] + "/" + idle[0] + ".json"))["ip"])' "$STATE/node/$NETNS/attachments"
}
run_direct() { # seconds -> "rps p50 p99 requests failed"
  local ip out
  sleep 2 # a worker whose request wrk abandoned at the end of the last run is being replaced
  ip=$(worker_ip) || { echo "no idle echo worker found" >&2; return 1; }
  out=$(ip netns exec "$NETNS" wrk -t1 -c1 -d"$1s" --latency -s "$WORK/direct.lua" \
    "http://$ip:8080/2015-03-31/functions/function/invocations")
  wrk_fields "$out"
}

echo "warm-up: /echo at concurrency 4 for 5 s..." >&2
run_wrk /echo 4 5 auth >"$WORK/warmup.txt"
: >"$WORK/rounds.txt"
# Cold starts so far (the gateway's access log marks them).
colds() { grep -c '"cold":true' "$STATE/logs/gateway.log" || true; }
measure() { # name command... -> a line of rounds.txt: name rps p50 p99 requests failed cold
  local name=$1 before line
  shift
  before=$(colds)
  python3 bench/box/cpu.py "$STATE" >"$WORK/cpu-before.json"
  line=$("$@")
  python3 bench/box/cpu.py "$STATE" "$WORK/cpu-before.json" >"$WORK/cpu-$name-$r.json"
  echo "$name $line $(($(colds) - before))" >>"$WORK/rounds.txt"
}
for r in $(seq "$ROUNDS"); do
  echo "round $r/$ROUNDS..." >&2
  measure echo_c1 run_wrk /echo 1 "$DURATION" auth
  measure echo_c4 run_wrk /echo 4 "$DURATION" auth
  measure worker_c1 run_direct 5
  measure health_c1 run_wrk /health 1 5
done

echo "waiting for the workers to be reaped (idle timeout ${IDLE} s)..." >&2
wait_idle
sleep 5
python3 bench/box/mem.py "$STATE" "idle box after the load" >"$WORK/mem-after.json"
# What the runs left on disk: the components' log files (STATE/logs, not rotated) and the
# log store's data.
{
  echo "gateway_log_bytes $(stat -c %s "$STATE/logs/gateway.log")"
  echo "gateway_log_lines $(wc -l <"$STATE/logs/gateway.log")"
  echo "logs_dir_bytes $(du -sb "$STATE/logs" | cut -f1)"
  echo "logstore_bytes $(du -sb "$STATE/logstore" | cut -f1)"
  echo "warmup_requests $(cut -d' ' -f4 "$WORK/warmup.txt")"
} >"$WORK/disk.txt"

python3 - "$WORK" "$ROUNDS" "$DURATION" "${OUT:-}" <<'PY'
import json, statistics, sys
work, rounds, duration, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
runs = {}
for line in open(f"{work}/rounds.txt"):
    name, rps, p50, p99, n, failed, cold = line.split()
    runs.setdefault(name, []).append(
        {"rps": float(rps), "p50_ms": float(p50), "p99_ms": float(p99), "requests": int(n),
         "failed": int(failed), "cold_starts": int(cold)}
    )
med = lambda xs, k: statistics.median(x[k] for x in xs)
print(f"\n== the whole box: GET /echo (Python 3.11, awslambdaric) through HTTPS + Bearer JWT; "
      f"medians of {rounds} rounds of {duration} s ==")
print(f"{'case':<34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9} {'failed':>7} {'cold':>5}")
label = {"echo_c1": "/echo, concurrency 1", "echo_c4": "/echo, concurrency 4",
         "worker_c1": "worker alone, concurrency 1 (*)", "health_c1": "/health, concurrency 1 (**)"}
summary = {}
for name, xs in runs.items():
    s = {k: med(xs, k) for k in ("rps", "p50_ms", "p99_ms")}
    s["requests"] = sum(x["requests"] for x in xs)
    s["failed"] = sum(x["failed"] for x in xs)
    s["cold_starts"] = sum(x["cold_starts"] for x in xs)
    s["rounds"] = xs
    summary[name] = s
    print(f"{label[name]:<34} {s['rps']:>9.0f} {s['p50_ms']:>8.3f} {s['p99_ms']:>8.2f} {s['requests']:>9} {s['failed']:>7} {s['cold_starts']:>5}")
print("(*) the same kind of event POSTed straight to one warm echo worker, from the node namespace")
print("(**) TLS + gateway, no auth, no function")
print("cold = cold starts during the runs (the gateway's access log); requests, failed and cold are totals")
e, w, h = (summary[k]["p50_ms"] for k in ("echo_c1", "worker_c1", "health_c1"))
print(f"p50 breakdown at concurrency 1: the box {e:.3f} ms = worker alone {w:.3f} ms + the box's front path "
      f"{e - w:.3f} ms (box / worker alone {e / w:.2f}x); /health alone {h:.3f} ms")
# CPU time of the box's processes per request, from /proc/PID/stat around each run.
print("\n== CPU time per request by process (us; all rounds; workers = shim + supervisor + python) ==")
cpu = {}
for name, xs in runs.items():
    acc = {}
    for r in range(1, rounds + 1):
        d = json.load(open(f"{work}/cpu-{name}-{r}.json"))
        for proc, t in d["ticks"].items():
            acc[proc] = acc.get(proc, 0) + t * 1e6 / d["clk_tck"]
    n = sum(x["requests"] for x in xs)
    cpu[name] = {proc: us / n for proc, us in acc.items()}
    summary[name]["cpu_us_per_request"] = cpu[name]
procs = sorted({p for c in cpu.values() for p in c}, key=lambda p: -max(c.get(p, 0) for c in cpu.values()))
print(f"{'process':<26}" + "".join(f"{n:>12}" for n in cpu))
for p in procs:
    if max(c.get(p, 0) for c in cpu.values()) >= 1:
        print(f"{p:<26}" + "".join(f"{c.get(p, 0):>12.0f}" for c in cpu.values()))
print(f"{'total':<26}" + "".join(f"{sum(c.values()):>12.0f}" for c in cpu.values()))
mem = [json.load(open(f"{work}/mem-fresh.json")), json.load(open(f"{work}/mem-after.json"))]
mib = lambda k: k / 1024
print("\n== memory of the idle box (no workers) ==")
for m in mem:
    t = m["total"]
    print(f"{m['label']:<26} summed RSS {mib(t['rss_kib']):6.1f} MiB   summed PSS {mib(t['pss_kib']):6.1f} MiB   "
          f"distinct pages {mib(m['distinct_kib']):6.1f} MiB   ({len(m['processes'])} processes)")
disk = {k: int(v) for k, v in (l.split() for l in open(f"{work}/disk.txt"))}
through_gateway = disk["warmup_requests"] + sum(
    summary[k]["requests"] for k in ("echo_c1", "echo_c4", "health_c1"))
print(f"\n== disk after {through_gateway} requests through the gateway (plus {summary['worker_c1']['requests']} to the worker alone) ==")
print(f"STATE/logs (component logs, not rotated): {disk['logs_dir_bytes'] / 2**20:.1f} MiB; gateway.log "
      f"{disk['gateway_log_lines']} lines, {disk['gateway_log_bytes'] / through_gateway:.0f} bytes per request")
print(f"log store data: {disk['logstore_bytes'] / 2**20:.1f} MiB, "
      f"{disk['logstore_bytes'] / through_gateway:.0f} bytes per request")
p50 = summary["echo_c1"]["p50_ms"]
rss = mem[0]["total"]["rss_kib"] / 1024
print("\n== against the issue's goals (no peer: see bench/RESULTS.md) ==")
print(f"warm p50 at concurrency 1: {p50:.3f} ms vs goal 2 ms -> {p50 / 2:.2f}x of the goal ({'met' if p50 < 2 else 'NOT met'})")
for m in mem:
    r = m["total"]["rss_kib"] / 1024
    print(f"{m['label']}: summed RSS {r:.1f} MiB vs goal 100 MiB -> {r / 100:.2f}x ({'met' if r < 100 else 'NOT met'}); "
          f"distinct pages {mib(m['distinct_kib']):.1f} MiB -> {mib(m['distinct_kib']) / 100:.2f}x")
failed = sum(s["failed"] for s in summary.values())
if out:
    json.dump({"latency": summary, "memory": mem, "disk": disk}, open(out, "w"), indent=1)
if failed:
    print(f"\n{failed} requests failed (non-2xx or socket errors)")
    sys.exit(1)
PY
