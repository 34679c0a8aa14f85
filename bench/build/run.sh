#!/usr/bin/env bash
# Image builder benchmark: esb's builder vs `sam build` (PyPI aws-sam-cli, no Docker) on the
# same generated 20-function Python template, in the same run:
#   1. no-change rebuild  (everything built once before)
#   2. one-file change    (one function's app.py edited between builds)
# Each figure is the median of ROUNDS runs, alternating the two tools. sam is run in its
# incremental mode (`sam build --cached --parallel`, its fastest) and in its default mode.
# Output: a markdown table on stdout. Needs root only for the first esb build (the python
# base image is built with debootstrap once and cached in $ESB_CACHE_DIR/base-images).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cache=${ESB_CACHE_DIR:-/var/cache/esb}
rounds=${ROUNDS:-5}
functions=${FUNCTIONS:-20}
work=$(mktemp -d /tmp/esb-bench-build.XXXXXX)
trap 'rm -rf "$work"' EXIT

# --- peers and tools (bench-only: not CI dependencies) ---------------------------------
venv="$cache/bench-sam-venv"
if [ ! -x "$venv/bin/sam" ]; then
  echo "==> installing aws-sam-cli into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check aws-sam-cli
fi
export SAM_CLI_TELEMETRY=0
echo "==> building the esb-build example (release)" >&2
(cd "$root" && CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target} cargo build -q --release -p esb-image --example esb-build)
esb_build="${CARGO_TARGET_DIR:-$root/target}/release/examples/esb-build"
# The supervisor binary only occupies one cached layer; any file of similar size will do here.
head -c 3000000 /dev/urandom > "$work/esb-supervisor"

# --- the application: N python functions, each with its own code directory -------------
app="$work/app"
mkdir -p "$app/layers/common/python"
echo 'def shared(): return "shared"' > "$app/layers/common/python/common_lib.py"
{
  echo "AWSTemplateFormatVersion: '2010-09-09'"
  echo "Transform: AWS::Serverless-2016-10-31"
  echo "Globals:"
  echo "  Function:"
  echo "    Runtime: python3.11"
  echo "    Handler: app.handler"
  echo "    Timeout: 10"
  echo "Resources:"
  for i in $(seq 1 "$functions"); do
    mkdir -p "$app/src/fn$i/lib"
    cat > "$app/src/fn$i/app.py" <<PY
import json
from lib import helpers

def handler(event, context):
    return {"statusCode": 200, "body": json.dumps({"fn": $i, "x": helpers.double(event.get("x", 1))})}
PY
    printf 'def double(x):\n    return 2 * x\n' > "$app/src/fn$i/lib/helpers.py"
    : > "$app/src/fn$i/lib/__init__.py"
    cat <<YAML
  Fn$i:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src/fn$i/
      Events:
        Get:
          Type: Api
          Properties:
            Path: /fn$i
            Method: get
YAML
  done
} > "$app/template.yaml"

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }

esb() { "$esb_build" "$app/template.yaml" "$work/esb-supervisor" "$work/esb-layout" -q >/dev/null; }
sam_cached() { (cd "$app" && "$venv/bin/sam" build --cached --parallel --build-dir "$work/sam-cached" >/dev/null 2>&1); }
sam_plain() { (cd "$app" && "$venv/bin/sam" build --build-dir "$work/sam-plain" >/dev/null 2>&1); }

echo "==> first builds (not timed)" >&2
esb; sam_cached; sam_plain

declare -A nochange onefile
for r in $(seq 1 "$rounds"); do
  for tool in esb sam_cached sam_plain; do
    t0=$(now); $tool; t1=$(now)
    nochange[$tool]+=" $(elapsed "$t0" "$t1")"
  done
  for tool in esb sam_cached sam_plain; do
    echo "# edit $r $tool" >> "$app/src/fn7/app.py"
    t0=$(now); $tool; t1=$(now)
    onefile[$tool]+=" $(elapsed "$t0" "$t1")"
  done
  echo "   round $r done" >&2
done

e1=$(median ${nochange[esb]}); c1=$(median ${nochange[sam_cached]}); p1=$(median ${nochange[sam_plain]})
e2=$(median ${onefile[esb]}); c2=$(median ${onefile[sam_cached]}); p2=$(median ${onefile[sam_plain]})
ratio() { python3 -c "print(f'{$1 / $2:.4f}')"; }
echo
echo "| scenario ($functions functions, median of $rounds) | esb (s) | sam build --cached --parallel (s) | sam build (s) | esb / sam cached | esb / sam |"
echo "|---|---|---|---|---|---|"
echo "| no-change rebuild | $e1 | $c1 | $p1 | $(ratio "$e1" "$c1")x | $(ratio "$e1" "$p1")x |"
echo "| one-file change | $e2 | $c2 | $p2 | $(ratio "$e2" "$c2")x | $(ratio "$e2" "$p2")x |"
echo
echo "samples: esb no-change:${nochange[esb]} | sam cached:${nochange[sam_cached]} | sam:${nochange[sam_plain]}"
echo "samples: esb one-file:${onefile[esb]} | sam cached:${onefile[sam_cached]} | sam:${onefile[sam_plain]}"
