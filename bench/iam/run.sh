#!/usr/bin/env bash
# Benchmark (issue 16): what per-function policies cost.
#   1. DynamoDB GetItem at 1 and 16 clients, signed with a function's key, the store with
#      ESB_IAM=enforce against the same store with ESB_IAM=off (the key is looked up and
#      verified in both; only the policy evaluation differs), and against the box's own key
#      (no lookup at all). Same release build, same load generator, same run, order
#      rotated each repetition; medians. At 1 client ops/s is 1 / latency.
#   2. Policy evaluation time per request (a 7-statement policy as SAM writes it).
#
#   bench/iam/run.sh                    # REPS=5 SECONDS_PER_RUN=3
# Everything listens on 127.0.0.1.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${ESB_CACHE_DIR:-/var/cache/esb}/target}
secs=${SECONDS_PER_RUN:-3}
reps=${REPS:-5}
items=2000
work=$(mktemp -d /tmp/esb-iam-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

(cd "$root" && cargo build -q --release -p esb-dynamodb --example serve --example loadgen \
  && cargo build -q --release -p esb-iam --example iam_eval)
serve=$CARGO_TARGET_DIR/release/examples/serve
loadgen=$CARGO_TARGET_DIR/release/examples/loadgen
eval_bin=$CARGO_TARGET_DIR/release/examples/iam_eval

box_key=AKIDBOXBENCH box_secret=box-bench-secret
fn_key=ESBFBENCHBENCHBENCH1 fn_secret=function-bench-secret-0123456789abcdefghij
write_iam() { # MODE FILE: one function key with DynamoDBCrudPolicy on table bench
  cat >"$2" <<JSON
{"mode": "$1", "account": "000000000000", "principals": [{
  "access_key": "$fn_key", "secret_key": "$fn_secret", "function": "bench",
  "revision": "r1", "has_policy": true, "expires_at": null,
  "policy": {"statements": [
    {"effect": "Allow", "actions": ["dynamodb:GetItem", "dynamodb:DeleteItem", "dynamodb:PutItem",
      "dynamodb:Scan", "dynamodb:Query", "dynamodb:UpdateItem", "dynamodb:BatchWriteItem",
      "dynamodb:BatchGetItem", "dynamodb:DescribeTable", "dynamodb:ConditionCheckItem"],
     "resources": ["arn:aws:dynamodb:ap-northeast-1:000000000000:table/bench",
                   "arn:aws:dynamodb:ap-northeast-1:000000000000:table/bench/index/*"]},
    {"effect": "Allow", "actions": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
     "resources": ["*"]}]}}]}
JSON
}
write_iam enforce "$work/enforce.json"
write_iam off "$work/off.json"

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on 127.0.0.1:$1" >&2; exit 1
}
start() { # PORT IAM_FILE
  mkdir -p "$work/data-$1"
  ESB_ACCESS_KEY_ID=$box_key ESB_SECRET_ACCESS_KEY=$box_secret ESB_IAM_FILE=$2 \
    "$serve" "127.0.0.1:$1" "$work/data-$1" 2>"$work/serve-$1.log" &
  pids+=($!)
  wait_port "$1"
}
start 18201 "$work/enforce.json"
start 18202 "$work/off.json"
start 18203 "$work/none.json"
declare -A name=([18201]="function key, enforce" [18202]="function key, off" [18203]="box key")
declare -A key=([18201]=$fn_key [18202]=$fn_key [18203]=$box_key)
declare -A secret=([18201]=$fn_secret [18202]=$fn_secret [18203]=$box_secret)
for port in 18201 18202 18203; do
  AWS_ACCESS_KEY_ID=$box_key AWS_SECRET_ACCESS_KEY=$box_secret "$loadgen" "127.0.0.1:$port" setup bench
  AWS_ACCESS_KEY_ID=$box_key AWS_SECRET_ACCESS_KEY=$box_secret "$loadgen" "127.0.0.1:$port" load bench "$items" 200 >/dev/null
done

results=$work/results.jsonl
for clients in 1 16; do
  for rep in $(seq 1 "$reps"); do
    order=(18201 18202 18203)
    [ $((rep % 3)) -eq 1 ] && order=(18202 18203 18201)
    [ $((rep % 3)) -eq 2 ] && order=(18203 18201 18202)
    for port in "${order[@]}"; do
      line=$(AWS_ACCESS_KEY_ID=${key[$port]} AWS_SECRET_ACCESS_KEY=${secret[$port]} \
        "$loadgen" "127.0.0.1:$port" get bench "$clients" "$secs" "$items")
      echo "{\"server\": \"${name[$port]}\", \"r\": $line}" >>"$results"
    done
  done
done
evals=$("$eval_bin" 2000000)

python3 - "$results" "$evals" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
evals = json.loads(sys.argv[2])
med = {}
for r in rows:
    med.setdefault((r["server"], r["r"]["clients"]), []).append(r["r"]["ops_per_sec"])
med = {k: statistics.median(v) for k, v in med.items()}
print("| GetItem clients | function key, enforce ops/s | function key, off ops/s | box key ops/s | enforce / off (latency) | enforce / box key (latency) |")
print("|---|---|---|---|---|---|")
for c in (1, 16):
    e, o, b = (med[(n, c)] for n in ("function key, enforce", "function key, off", "box key"))
    print(f"| {c} | {e:.0f} | {o:.0f} | {b:.0f} | {o / e:.3f}x | {b / e:.3f}x |")
print()
print(f"Policy evaluation ({evals['statements']} statements, {evals['evaluations']} evaluations each): "
      f"allowed GetItem {evals['allowed_getitem']} ns, denied GetItem {evals['denied_getitem']} ns")
PY
