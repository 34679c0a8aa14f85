#!/usr/bin/env bash
# Runs the box on its embedded defaults: installs what it needs (Debian 12, root), builds
# `esb` in release mode, and brings the box up. Today that is the runtime-node with its
# local proxy (`esb node up`); `esb node status` and `esb doctor` show it, `esb node down`
# removes it. Extra arguments go to `esb node up`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/scripts/prereqs.sh" --runtime-only
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${ESB_CACHE_DIR:-/var/cache/esb}/target}
cargo build --release -q -p esb
install -m 0755 "$CARGO_TARGET_DIR/release/esb" /usr/local/bin/esb
# The supervisor that goes into every function image: static, so it runs in any image.
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$CARGO_TARGET_DIR/esb-supervisor-static" \
  cargo build --release -q -p esb-supervisor --target x86_64-unknown-linux-gnu
install -m 0755 "$CARGO_TARGET_DIR/esb-supervisor-static/x86_64-unknown-linux-gnu/release/esb-supervisor" \
  /usr/local/bin/esb-supervisor
exec esb node up "$@"
