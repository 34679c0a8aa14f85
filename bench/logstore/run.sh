#!/usr/bin/env bash
# Log store benchmark (issue 9). Prints one line per figure; see bench/RESULTS.md.
#   1. ingest rate: 1 KiB records as gzip JSON lines over HTTP, vs appending the same bytes
#      to a file (the floor; two variants: the gzip bodies as received, and gunzip + append)
#   2. peak RSS of the store process while ingesting
#   3. trace_id lookup over LOOKUP_N records (default 10 million) vs `grep -F` on the same
#      JSON lines (page cache warm for both)
# Environment: INGEST_N (200000), LOOKUP_N (10000000), WORK (a temp dir), CONC (2),
# ROUNDS (3: ingest rounds alternating floor and esb; medians reported).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
INGEST_N=${INGEST_N:-200000}
LOOKUP_N=${LOOKUP_N:-10000000}
CONC=${CONC:-2}
WORK=${WORK:-$(mktemp -d /tmp/esb-logstore-bench.XXXXXX)}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
cd "$root"
cargo build -q --release -p esb-logstore --example logstore_bench
bin=$CARGO_TARGET_DIR/release/examples/logstore_bench
mkdir -p "$WORK"
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill -INT "$server_pid" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

start_server() { # $1 = data dir
  rm -rf "$1" "$WORK/addr"; mkdir -p "$1"
  "$bin" serve "$1" "$WORK/addr" & server_pid=$!
  for _ in $(seq 1 600); do [ -s "$WORK/addr" ] && break; sleep 0.1; done
  url="http://$(cat "$WORK/addr")"
}
stop_server() {
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$server_pid/status")
  kill -INT "$server_pid"; wait "$server_pid" || true; server_pid=""
}

echo "== ingest: $INGEST_N records of 1 KiB"
"$bin" gen "$WORK/ingest.jsonl" "$INGEST_N" 1024
start_server "$WORK/data-ingest"
"$bin" ingest "$url" "$WORK/ingest.jsonl" 1000 "$CONC"
stop_server
echo "rss peak_MiB=$((hwm / 1024)) (ingest run)"

echo "== lookup: $LOOKUP_N records"
"$bin" gen "$WORK/lookup.jsonl" "$LOOKUP_N" 200
start_server "$WORK/data-lookup"
ROUNDS=1 "$bin" ingest "$url" "$WORK/lookup.jsonl" 5000 "$CONC"
ids=()
for i in 17 $((LOOKUP_N / 10)) $((LOOKUP_N / 2)) $((LOOKUP_N * 9 / 10)) $((LOOKUP_N - 100)); do ids+=("$("$bin" trace "$i")"); done
"$bin" lookup "$url" "${ids[@]}"
grep_ms=()
for id in "${ids[@]}"; do
  grep -cF "$id" "$WORK/lookup.jsonl" >/dev/null   # warm the page cache
  s=$(date +%s%N); grep -F "$id" "$WORK/lookup.jsonl" >/dev/null; e=$(date +%s%N)
  grep_ms+=($(( (e - s) / 1000000 )))
done
sorted=($(printf '%s\n' "${grep_ms[@]}" | sort -n))
echo "grep median_ms=${sorted[2]}"
stop_server
echo "rss peak_MiB=$((hwm / 1024)) (10M-record run, ingest + lookups)"
du -sh "$WORK/data-lookup" "$WORK/lookup.jsonl"
rm -rf "$WORK"
