#!/usr/bin/env bash
# Agent cold start vs `ctr run` (same image, same first invocation, same run), workers
# ready per second with 50 ensures at once, agent RSS with 100 workers. Run as root.
#   bench/agent/run.sh          (ROUNDS=10 WORKERS=100)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
scripts/prereqs.sh --runtime-only
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${ESB_CACHE_DIR:-/var/cache/esb}/target}
cargo build --release -q -p esb
cargo build --release -q -p esb --example agent_bench
echo "# $(date -u +%FT%TZ) $(nproc) cores; containerd $(containerd --version | awk '{print $3}')"
ESB_BIN="$CARGO_TARGET_DIR/release/esb" "$CARGO_TARGET_DIR/release/examples/agent_bench"
