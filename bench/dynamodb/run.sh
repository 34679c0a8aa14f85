#!/usr/bin/env bash
# Benchmark: PutItem, GetItem and Query (100 items per page) ops/s at 1 and 16 clients,
# the box's DynamoDB store against dynalite, same load generator, same run; then the
# store's RSS while serving a 1 GiB table.
#
#   bench/dynamodb/run.sh                 # full run (a few minutes)
#   SECONDS_PER_RUN=3 REPS=3 BIG_MB=1024 bench/dynamodb/run.sh
#
# Everything listens on 127.0.0.1. dynalite (npm) is installed under $ESB_CACHE_DIR/bench.
source "$(dirname "$0")/common.sh"
secs=${SECONDS_PER_RUN:-3}
reps=${REPS:-3}
big_mb=${BIG_MB:-1024}
items=2000

install_dynalite
build_ours
start_ours 18101 full
start_ours 18102 normal
start_dynalite 18103
declare -A name=([18101]="esb (sync=full)" [18102]="esb (sync=normal)" [18103]="dynalite")
for port in 18101 18102 18103; do
  "$loadgen" "127.0.0.1:$port" setup bench
  "$loadgen" "127.0.0.1:$port" load bench "$items" 200 >/dev/null
done

results=$work/results.jsonl
for op in put get query; do
  for clients in 1 16; do
    for rep in $(seq 1 "$reps"); do
      # Rotate the order so no server always runs first.
      order=(18101 18102 18103)
      [ $((rep % 3)) -eq 1 ] && order=(18102 18103 18101)
      [ $((rep % 3)) -eq 2 ] && order=(18103 18101 18102)
      for port in "${order[@]}"; do
        line=$("$loadgen" "127.0.0.1:$port" "$op" bench "$clients" "$secs" "$items")
        echo "{\"server\": \"${name[$port]}\", \"r\": $line}" >>"$results"
      done
    done
  done
done

# RSS with a big table: load BIG_MB of items into a fresh store, then serve reads
# (BIG_MB=0 skips it).
peak=0 db_bytes=0
echo '{"items": 0, "secs": 0}' >"$work/load.json"
if [ "$big_mb" -gt 0 ]; then
start_ours 18104 full
"$loadgen" 127.0.0.1:18104 setup big
n=$((big_mb * 1024 / 4))   # 4 KiB items
"$loadgen" 127.0.0.1:18104 load big "$n" 4000 64 >"$work/load.json"
pid=${pids[-1]}
peak=0
"$loadgen" 127.0.0.1:18104 get big 16 "$secs" "$n" 64 >"$work/big-get.json" &
lg=$!
while kill -0 "$lg" 2>/dev/null; do
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  [ "$rss" -gt "$peak" ] && peak=$rss
  sleep 0.2
done
wait "$lg" || true
"$loadgen" 127.0.0.1:18104 query big 16 "$secs" "$n" 64 >"$work/big-query.json" &
lg=$!
while kill -0 "$lg" 2>/dev/null; do
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  [ "$rss" -gt "$peak" ] && peak=$rss
  sleep 0.2
done
wait "$lg" || true
db_bytes=$(du -sb "$work/ours-18104" | cut -f1)
fi

python3 - "$results" "$peak" "$db_bytes" "$work/load.json" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
peak_kib, db_bytes = int(sys.argv[2]), int(sys.argv[3])
load = json.load(open(sys.argv[4]))
med = {}
for r in rows:
    key = (r["server"], r["r"]["op"], r["r"]["clients"])
    med.setdefault(key, []).append(r["r"]["ops_per_sec"])
med = {k: statistics.median(v) for k, v in med.items()}
print("| operation | clients | esb sync=full ops/s | esb sync=normal ops/s | dynalite ops/s | full / dynalite | normal / dynalite |")
print("|---|---|---|---|---|---|---|")
for op, label in [("put", "PutItem"), ("get", "GetItem"), ("query", "Query (100 items/page)")]:
    for c in (1, 16):
        f = med[("esb (sync=full)", op, c)]
        n = med[("esb (sync=normal)", op, c)]
        d = med[("dynalite", op, c)]
        print(f"| {label} | {c} | {f:.0f} | {n:.0f} | {d:.0f} | {f / d:.1f}x | {n / d:.1f}x |")
print()
if db_bytes:
        print(f"RSS of the store serving a {db_bytes / 2**30:.2f} GiB database (GetItem then Query, 16 clients): "
          f"peak {peak_kib / 1024:.1f} MiB; load of {load['items']} items took {load['secs']:.0f} s")
PY
