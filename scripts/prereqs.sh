#!/usr/bin/env bash
# Installs what esb and its tests need on a Debian 12 machine (run as root).
#   - Debian packages listed in scripts/deps/apt.txt and crates/*/deps/apt.txt, and npm
#     (for the Node.js base images) when the machine has none
#   - a Python virtualenv with scripts/deps/requirements.txt and crates/*/deps/requirements.txt
#   - cargo-nextest when missing
# With --runtime-only, just the Debian packages the box needs to run.
# Idempotent and quiet when everything is already there. Caches live outside the clone
# (ESB_CACHE_DIR, default /var/cache/esb) so repeat runs are fast.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${ESB_CACHE_DIR:-/var/cache/esb}
mkdir -p "$cache"

say() { printf '==> %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------------
mapfile -t pkgs < <(cat "$root"/scripts/deps/apt.txt "$root"/crates/*/deps/apt.txt 2>/dev/null \
  | sed 's/#.*//' | tr -s ' \t' '\n' | sed '/^$/d' | sort -u)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm installs the AWS SDK for JavaScript into the Node.js base images. Any npm will do: a
# machine with Node.js from elsewhere (NodeSource's package bundles npm) keeps its own,
# otherwise Debian's nodejs and npm are installed.
if ! command -v npm >/dev/null 2>&1; then
  say "installing Debian packages: nodejs npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

if [ "${1:-}" = "--runtime-only" ]; then
  exit 0
fi

# --- Python virtualenv with real AWS clients --------------------------------------
venv=${ESB_VENV:-$cache/venv}
reqs=$(cat "$root"/scripts/deps/requirements.txt "$root"/crates/*/deps/requirements.txt 2>/dev/null \
  | sed 's/#.*//' | sed '/^[[:space:]]*$/d' | sort -u)
stamp="$venv/.esb-requirements"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$reqs" ]; then
  say "preparing Python virtualenv at $venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  printf '%s\n' "$reqs" > "$cache/requirements.txt"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$cache/requirements.txt"
  printf '%s' "$reqs" > "$stamp"
fi

# --- Rust test runner --------------------------------------------------------------
if ! command -v cargo-nextest >/dev/null 2>&1; then
  say "installing cargo-nextest"
  cargo install --locked -q cargo-nextest
fi
echo "$venv"
