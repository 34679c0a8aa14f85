#!/usr/bin/env bash
# Runs every test of esb: installs prerequisites, then the whole workspace's tests with
# cargo-nextest (unit tests, and integration tests that drive real clients, namespaces and
# containerd; they need root). Extra arguments go to nextest (e.g. a test name filter).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=$("$root/scripts/prereqs.sh" | tail -n 1)
export ESB_VENV="$venv"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${ESB_CACHE_DIR:-/var/cache/esb}/target}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
exec cargo nextest run --workspace --no-fail-fast --profile ci "$@"
