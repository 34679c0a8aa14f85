#!/usr/bin/env bash
# Warm invocation round trip through esb-supervisor (client -> :8080 -> runtime client ->
# response) against the floor (the same handler called in a loop inside its own process),
# for a Rust handler (lambda_runtime) and a Python handler (awslambdaric); plus the
# supervisor's resident memory against the function processes' own.
#
#   bench/supervisor/run.sh            # N=10000 timed invocations per case, 1000 warm-up,
#                                      # ROUNDS=3 rounds alternating the cases, medians
#   N=20000 ROUNDS=5 bench/supervisor/run.sh
#
# Everything listens on 127.0.0.1 only; every process started here is stopped by PID.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
N=${N:-10000}
WARMUP=${WARMUP:-1000}
ROUNDS=${ROUNDS:-3}
BODY=${BODY:-'{"hello":"world","items":[1,2,3],"nested":{"k":"v"}}'}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
venv=${ESB_VENV:-/var/cache/esb/venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import awslambdaric' 2>/dev/null || "$venv/bin/pip" install -q awslambdaric
py=$venv/bin/python
# The runtime name matches the interpreter (python3.12+ makes awslambdaric poll in a thread,
# as on Lambda).
pyrt=python$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

echo "==> building (release; the supervisor as shipped: static, stripped)" >&2
RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_DEBUG=false \
  CARGO_PROFILE_RELEASE_STRIP=symbols \
  cargo build -q --release -p esb-supervisor --target x86_64-unknown-linux-gnu \
  --target-dir "$CARGO_TARGET_DIR/esb-supervisor-static"
sup=$CARGO_TARGET_DIR/esb-supervisor-static/x86_64-unknown-linux-gnu/release/esb-supervisor
cargo build -q --release -p esb-test-functions --bin esb-test-function --example floor
cargo build -q --release -p esb-supervisor --example bench_client --example http_echo
rel=$CARGO_TARGET_DIR/release

tmp=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
field() { sed -E "s/.*\"$2\": ?([0-9.]+).*/\1/" <<<"$1"; }

# run_case NAME ENV... : starts the supervisor with ENV, benchmarks it, prints results.
run_case() {
  local name=$1; shift
  env -i PATH="$PATH" ESB_SUPERVISOR_LISTEN=127.0.0.1:0 ESB_RUNTIME_API_LISTEN=127.0.0.1:0 \
    AWS_LAMBDA_FUNCTION_TIMEOUT=30 "$@" "$sup" >/dev/null 2>"$tmp/$name.err" &
  pid=$!
  local addr=
  for _ in $(seq 300); do
    addr=$(sed -nE 's/^esb-supervisor: listening invoke=([^ ]+) .*/\1/p' "$tmp/$name.err")
    [ -n "$addr" ] && break
    sleep 0.05
  done
  [ -n "$addr" ] || { cat "$tmp/$name.err" >&2; exit 1; }
  for _ in $(seq 300); do
    curl -s "http://$addr/health" | grep -q '"ready"' && break
    sleep 0.05
  done
  local idle_rss; idle_rss=$(kib "$pid" VmRSS)
  local res; res=$("$rel/examples/bench_client" "$addr" "$N" "$WARMUP" "$BODY")
  local child; child=$(cat "/proc/$pid/task/$pid/children" | awk '{print $1}')
  local sup_rss sup_hwm fn_rss
  sup_rss=$(kib "$pid" VmRSS); sup_hwm=$(kib "$pid" VmHWM); fn_rss=$(kib "$child" VmRSS)
  kill -TERM "$pid"; wait "$pid" || true; pid=
  echo "$res" > "$tmp/$name"
  printf '%s %s %s %s\n' "$idle_rss" "$sup_rss" "$sup_hwm" "$fn_rss" > "$tmp/$name.mem"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for round in $(seq "$ROUNDS"); do
  echo "==> round $round/$ROUNDS" >&2
  "$rel/examples/floor" "$N" "$BODY" > "$tmp/rust_floor.$round"
  (cd crates/esb-test-functions/python && "$py" floor.py "$N" "$BODY") > "$tmp/python_floor.$round"

  # One loopback HTTP exchange on the same stack (hyper echo server), for scale.
  "$rel/examples/http_echo" > "$tmp/echo.out" &
  pid=$!
  for _ in $(seq 100); do grep -q listening "$tmp/echo.out" && break; sleep 0.05; done
  echo_addr=$(awk '{print $2}' "$tmp/echo.out")
  "$rel/examples/bench_client" "$echo_addr" "$N" "$WARMUP" "$BODY" > "$tmp/http.$round"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=

  mkdir -p "$tmp/rust" && cp "$rel/esb-test-function" "$tmp/rust/bootstrap"
  run_case "rust.$round" ESB_RUNTIME=provided.al2023 LAMBDA_TASK_ROOT="$tmp/rust"
  run_case "python.$round" ESB_RUNTIME="$pyrt" _HANDLER=handlers.echo ESB_PYTHON="$py" \
    LAMBDA_TASK_ROOT="$root/crates/esb-test-functions/python"
done

# med FILE-PREFIX FIELD: median over rounds of a JSON field.
med() { for r in $(seq "$ROUNDS"); do field "$(cat "$tmp/$1.$r")" "$2"; done | median; }
# memcol NAME COLUMN: median over rounds of a column of NAME.ROUND.mem
memcol() { for r in $(seq "$ROUNDS"); do awk -v c="$2" '{print $c}' "$tmp/$1.$r.mem"; done | median; }

echo
echo "N=$N timed warm invocations per case (after $WARMUP), body $(printf %s "$BODY" | wc -c) bytes," \
  "median of $ROUNDS rounds, $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| handler | round trip p50 µs | p99 µs | floor p50 µs | floor p99 µs | added p50 µs | p50 / floor |"
echo "|---|---|---|---|---|---|---|"
for name in rust python; do
  awk -v n="$name" -v p50="$(med "$name" p50_us)" -v p99="$(med "$name" p99_us)" \
    -v f50="$(med "${name}_floor" p50_us)" -v f99="$(med "${name}_floor" p99_us)" 'BEGIN {
    printf "| %s | %.1f | %.1f | %.2f | %.2f | %.1f | %.0fx |\n", n, p50, p99, f50, f99, p50 - f50, p50 / f50 }'
done
awk -v p50="$(med http p50_us)" -v p99="$(med http p99_us)" 'BEGIN {
  printf "| (scale) one HTTP exchange, hyper echo server, no function | %.1f | %.1f | | | | |\n", p50, p99 }'
echo
echo "| case | supervisor RSS idle KiB | after bench KiB | peak KiB | function process RSS KiB | supervisor peak / function |"
echo "|---|---|---|---|---|---|"
for name in rust python; do
  awk -v n="$name" -v i="$(memcol "$name" 1)" -v r="$(memcol "$name" 2)" -v h="$(memcol "$name" 3)" \
    -v f="$(memcol "$name" 4)" 'BEGIN {
    printf "| %s | %d | %d | %d | %d | %.2f |\n", n, i, r, h, f, h / f }'
done
