#!/usr/bin/env bash
# The registry: cold start of a function whose ~100 MB image must be pulled first vs one
# already present, and `esb build --push` of a one-file change vs a full push. Loopback
# only, real docker-registry, containerd and agent. Run as root.
#   bench/registry/run.sh          (ROUNDS=5 CODE_MB=40)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
scripts/prereqs.sh --runtime-only
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${ESB_CACHE_DIR:-/var/cache/esb}/target}
cargo build --release -q -p esb
cargo build --release -q -p esb --example registry_bench
echo "# $(date -u +%FT%TZ) $(nproc) cores; containerd $(containerd --version | awk '{print $3}'); $(docker-registry --version)"
ESB_BIN="$CARGO_TARGET_DIR/release/esb" "$CARGO_TARGET_DIR/release/examples/registry_bench"
