#!/usr/bin/env bash
# WireGuard (userspace, esb-wireguard) vs the same veth path without it: TCP throughput and
# 1-byte round trip between two host namespaces made for the run. Run as root.
#   bench/wireguard/run.sh          (MB=256 ROUNDS=3)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${ESB_CACHE_DIR:-/var/cache/esb}/target}
cargo build --release -q -p esb-wireguard --example wg_bench
echo "# $(date -u +%FT%TZ) $(nproc) cores; $(uname -r)"
"$CARGO_TARGET_DIR/release/examples/wg_bench"
