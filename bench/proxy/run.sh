#!/usr/bin/env bash
# Local proxy vs HAProxy: same backend, same client, same run, alternating rounds.
# Everything listens on 127.0.0.1; processes started here are stopped by PID on exit.
#   bench/proxy/run.sh            (ROUNDS=3 CONNS=10000 by default)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
command -v haproxy >/dev/null || { apt-get update -qq && apt-get install -y -qq haproxy >/dev/null; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${ESB_CACHE_DIR:-/var/cache/esb}/target}
cargo build --release -q -p esb
cargo build --release -q -p esb-local-proxy --example proxy_bench
bin=$CARGO_TARGET_DIR/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$bin/examples/proxy_bench" backend 127.0.0.1:19101 127.0.0.1:19102 & pids+=($!)
# esb's local proxy, as `esb node up` runs it (2 worker threads), listening on loopback.
"$bin/esb" --state-dir "$work" --log warn proxy --listen 127.0.0.1 \
  --s3-port 19201 --db-port 19203 --logs-port 19204 \
  --s3-backend 127.0.0.1:19101 --db-backend 127.0.0.1:19101 --logs-backend 127.0.0.1:19101 \
  --hosts-file /dev/null & pids+=($!)
cat > "$work/haproxy.cfg" <<CFG
global
    maxconn 4096
    nbthread 2
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend bench
    bind 127.0.0.1:19202
    default_backend b
backend b
    server s1 127.0.0.1:19102
CFG
haproxy -f "$work/haproxy.cfg" -db & pids+=($!)
sleep 1
echo "# $(date -u +%FT%TZ) $(nproc) cores; haproxy $(haproxy -v | head -1 | awk '{print $3}')"
"$bin/examples/proxy_bench" client esb=127.0.0.1:19201 haproxy=127.0.0.1:19202
