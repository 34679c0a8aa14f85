#!/usr/bin/env bash
# Runs the box on its embedded defaults (Debian 12, as root): installs the Debian packages
# the box needs, builds `esb`, the static `esb-supervisor` and the example application's
# Rust function in release mode, installs them (/usr/local/bin, /usr/local/share/esb), and
# runs `esb up`: with no template.yaml in the current directory it serves the bundled
# example application (examples/). Extra arguments go to `esb up` (e.g. --port 8443,
# --template path/to/template.yaml, --foreground). `esb down` stops the box.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/prereqs.sh" --runtime-only
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${ESB_CACHE_DIR:-/var/cache/esb}/target}
echo "==> building esb (release)" >&2
(cd "$root" && cargo build --release -q -p esb -p esb-example-greeter)
install -m 0755 "$CARGO_TARGET_DIR/release/esb" /usr/local/bin/esb
# The supervisor that goes into every function image: static, so it runs in any image.
echo "==> building the static esb-supervisor" >&2
(cd "$root" && RUSTFLAGS="-C target-feature=+crt-static" \
  CARGO_TARGET_DIR="$CARGO_TARGET_DIR/esb-supervisor-static" \
  cargo build --release -q -p esb-supervisor --target x86_64-unknown-linux-gnu)
install -m 0755 "$CARGO_TARGET_DIR/esb-supervisor-static/x86_64-unknown-linux-gnu/release/esb-supervisor" \
  /usr/local/bin/esb-supervisor
# The example application, with its Rust function's bootstrap.
share=/usr/local/share/esb
rm -rf "$share/examples.new"
mkdir -p "$share"
cp -r "$root/examples" "$share/examples.new"
rm -rf "$share/examples.new/functions/greeter/src" "$share/examples.new/functions/greeter/Cargo.toml"
install -D -m 0755 "$CARGO_TARGET_DIR/release/esb-example-greeter" \
  "$share/examples.new/functions/greeter/dist/bootstrap"
rm -rf "$share/examples" && mv "$share/examples.new" "$share/examples"
install -D -m 0644 "$root/packaging/systemd/esb.service" "$share/systemd/esb.service"
if [ -f template.yaml ]; then
  exec esb up "$@"
fi
exec esb up --template "$share/examples/template.yaml" "$@"
