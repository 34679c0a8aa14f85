#!/usr/bin/env bash
# Benchmark of the embedded S3 store (esb-s3) against moto's server mode and s3rver, with
# the same client (crates/esb-s3/examples/s3_bench.rs) in the same run, plus a plain file
# copy of 1 GiB on the same disk (the floor for the 1 GiB figures).
#
#   bench/s3/run.sh            # prints a markdown section for bench/RESULTS.md
#
# Environment: SECONDS_PER_OP (default 10), CLIENTS (default 16), ROUNDS (1 GiB transfers
# and floor copies per server, median reported; default 3), BENCH_DIR (scratch space,
# default /var/tmp/esb-s3-bench), ESB_CACHE_DIR (where moto and s3rver get installed).
# BASELINE_BIN: optionally, another build of the `s3_server` example (say, of an earlier
# commit) run as "esb-s3-base" right after esb-s3 in each phase, to compare the two builds
# in the same run. Every server listens on 127.0.0.1 only.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cache=${ESB_CACHE_DIR:-/var/cache/esb}/bench-s3
scratch=${BENCH_DIR:-/var/tmp/esb-s3-bench}
secs=${SECONDS_PER_OP:-10}
clients=${CLIENTS:-16}
rounds=${ROUNDS:-3}
export RUST_BACKTRACE=0
say() { printf '==> %s\n' "$*" >&2; }
mkdir -p "$cache" "$scratch"

# --- peers (bench-only: installed here, not in CI) ---------------------------------
if [ ! -x "$cache/venv/bin/moto_server" ]; then
  say "installing moto[server] into $cache/venv"
  python3 -m venv "$cache/venv"
  "$cache/venv/bin/pip" install -q --disable-pip-version-check "moto[server]"
fi
if [ ! -x "$cache/npm/node_modules/.bin/s3rver" ]; then
  say "installing s3rver into $cache/npm"
  mkdir -p "$cache/npm"
  npm install --silent --prefix "$cache/npm" s3rver@3 >/dev/null
fi

say "building esb-s3 (release)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
(cd "$root" && cargo build -q --release -p esb-s3 --example s3_server --example s3_bench)
bin=$CARGO_TARGET_DIR/release/examples

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$scratch"/data-*; }
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.2
  done
  echo "server on port $1 did not start" >&2
  return 1
}

# run_peer NAME PORT ACCESS SECRET -- command...
results=$scratch/results.jsonl
: > "$results"
# Each phase runs against a fresh server process, so the RSS sampled during the 1 GiB
# transfers is not inflated by what the 4 KiB phase left resident.
run_peer() {
  local name=$1 port=$2 access=$3 secret=$4 phase=$5
  shift 6
  say "$name: starting"
  "$@" >"$scratch/$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_port "$port"
  if [ "$phase" = small ]; then
    say "$name: small"
    "$bin/s3_bench" "http://127.0.0.1:$port" "$access" "$secret" small "$clients" "$secs" |
      sed "s/^{/{\"server\":\"$name\",/" >> "$results"
    if [ "$name" = esb-s3 ]; then
      hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
      echo "{\"server\":\"$name\",\"measure\":\"peak_rss\",\"value\":$((hwm / 1024)),\"unit\":\"MiB\"}" >> "$results"
    fi
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    return
  fi
  # Sample the server's RSS every 100 ms during the 1 GiB transfers.
  echo 0 > "$scratch/rss-$name"
  (max=0; while kill -0 "$pid" 2>/dev/null; do
     r=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
     if [ "${r:-0}" -gt "$max" ]; then max=$r; echo "$max" > "$scratch/rss-$name"; fi
     sleep 0.1
   done) &
  local sampler=$!
  for _ in $(seq 1 "$rounds"); do
    say "$name: large"
    "$bin/s3_bench" "http://127.0.0.1:$port" "$access" "$secret" large "$clients" "$secs" |
      sed "s/^{/{\"server\":\"$name\",/" >> "$results"
  done
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  echo "{\"server\":\"$name\",\"measure\":\"rss_during_1g\",\"value\":$(( $(cat "$scratch/rss-$name") / 1024 )),\"unit\":\"MiB\"}" >> "$results"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

rm -rf "$scratch"/data-*
for phase in small large; do
  ESB_ACCESS_KEY_ID=bench ESB_SECRET_ACCESS_KEY=bench-secret \
    run_peer esb-s3 19100 bench bench-secret "$phase" -- "$bin/s3_server" 127.0.0.1:19100 "$scratch/data-esb"
  if [ -n "${BASELINE_BIN:-}" ]; then
    ESB_ACCESS_KEY_ID=bench ESB_SECRET_ACCESS_KEY=bench-secret \
      run_peer esb-s3-base 19103 bench bench-secret "$phase" -- "$BASELINE_BIN" 127.0.0.1:19103 "$scratch/data-esb-base"
  fi
  run_peer moto 19101 bench bench-secret "$phase" -- "$cache/venv/bin/moto_server" -H 127.0.0.1 -p 19101
  run_peer s3rver 19102 S3RVER S3RVER "$phase" -- node "$cache/npm/node_modules/.bin/s3rver" \
    --address 127.0.0.1 --port 19102 --directory "$scratch/data-s3rver" --silent
done

# --- the floor: copy a 1 GiB file on the same disk, fsync included ----------------------
say "floor: cp 1 GiB + fsync"
mkdir -p "$scratch/data-floor"
head -c $((1 << 30)) /dev/zero | tr '\0' 'x' > "$scratch/data-floor/src"
sync "$scratch/data-floor/src"
for _ in $(seq 1 "$rounds"); do
  rm -f "$scratch/data-floor/dst"
  t0=$(date +%s.%N)
  cp "$scratch/data-floor/src" "$scratch/data-floor/dst"
  sync "$scratch/data-floor/dst"
  t1=$(date +%s.%N)
  echo "{\"server\":\"floor\",\"measure\":\"copy_1g\",\"value\":$(echo "1073.741824 / ($t1 - $t0)" | bc -l),\"unit\":\"MB/s\"}" >> "$results"
done
rm -rf "$scratch/data-floor"

python3 - "$results" "$clients" "$secs" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
samples = {}
for r in rows:
    samples.setdefault((r["server"], r["measure"]), []).append(r["value"])
v = {k: statistics.median(x) for k, x in samples.items()}
clients, secs = sys.argv[2], sys.argv[3]
print("| measure | esb-s3 | moto | s3rver | esb-s3 / faster peer |")
print("|---|---|---|---|---|")
for m, unit in [("put_4k_ops", "ops/s"), ("get_4k_ops", "ops/s"), ("put_1g", "MB/s"), ("get_1g", "MB/s")]:
    e, mo, s3 = v.get(("esb-s3", m)), v.get(("moto", m)), v.get(("s3rver", m))
    peer = max(x for x in (mo, s3) if x is not None)
    print("| %s (%s) | %.0f | %.0f | %.0f | %.1fx |" % (m, unit, e, mo, s3, e / peer))
floor = v[("floor", "copy_1g")]
print()
print("| 1 GiB vs floor (cp + fsync, %.0f MB/s) | esb-s3 / floor |" % floor)
print("|---|---|")
for m in ("put_1g", "get_1g"):
    print("| %s | %.2fx |" % (m, v[("esb-s3", m)] / floor))
print()
print("Server RSS during the 1 GiB transfers (max of 100 ms samples): esb-s3 %d MiB, moto %d MiB, s3rver %d MiB" % (
    v[("esb-s3", "rss_during_1g")], v[("moto", "rss_during_1g")], v[("s3rver", "rss_during_1g")]))
print("esb-s3 peak RSS during the 4 KiB phase, 16 clients (VmHWM): %d MiB" % v[("esb-s3", "peak_rss")])
print()
if ("esb-s3-base", "put_4k_ops") in v:
    print("| measure | esb-s3 | esb-s3-base (BASELINE_BIN) | esb-s3 / base |")
    print("|---|---|---|---|")
    for m, unit in [("put_4k_ops", "ops/s"), ("get_4k_ops", "ops/s"), ("put_1g", "MB/s"), ("get_1g", "MB/s")]:
        e, b = v[("esb-s3", m)], v[("esb-s3-base", m)]
        print("| %s (%s) | %.0f | %.0f | %.2f |" % (m, unit, e, b, e / b))
    print()
print("4 KiB figures: %s clients, %s s per operation; 1 GiB figures and floor: median of %d rounds." % (clients, secs, len(samples[("floor", "copy_1g")])))
PY
