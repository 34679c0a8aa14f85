# Shared by run.sh and differential.sh: dynalite from npm (bench-only peer), our release
# binaries, and helpers to start servers on 127.0.0.1 and stop them by PID.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${ESB_CACHE_DIR:-/var/cache/esb}/bench/dynalite
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
work=$(mktemp -d /tmp/esb-ddb-bench.XXXXXX)
pids=()
export AWS_ACCESS_KEY_ID=AKIDBENCH AWS_SECRET_ACCESS_KEY=bench-secret
export ESB_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID ESB_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

install_dynalite() {
  if [ ! -x "$cache/node_modules/.bin/dynalite" ]; then
    command -v npm >/dev/null || { echo "npm is required (apt-get install npm)" >&2; exit 1; }
    mkdir -p "$cache"
    (cd "$cache" && npm install --silent --no-audit --no-fund dynalite@4.0.0 >/dev/null)
  fi
}

build_ours() {
  (cd "$root" && cargo build -q --release -p esb-dynamodb --example serve --example loadgen)
  serve=$CARGO_TARGET_DIR/release/examples/serve
  loadgen=$CARGO_TARGET_DIR/release/examples/loadgen
}

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on 127.0.0.1:$1" >&2
  exit 1
}

# start_ours PORT [sync]   start_dynalite PORT
start_ours() {
  ESB_DYNAMODB_SYNC=${2:-full} "$serve" "127.0.0.1:$1" "$work/ours-$1" >"$work/ours-$1.log" 2>&1 &
  pids+=($!)
  wait_port "$1"
}

start_dynalite() {
  node "$cache/node_modules/.bin/dynalite" --host 127.0.0.1 --port "$1" \
    --createTableMs 0 --deleteTableMs 0 --updateTableMs 0 >"$work/dynalite-$1.log" 2>&1 &
  pids+=($!)
  wait_port "$1"
}
