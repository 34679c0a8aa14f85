#!/usr/bin/env bash
# Differential run: the scripted operation sequence of
# crates/esb-dynamodb/tests/py/differential.py against dynalite and against the box's
# store, live, results compared. With --record, also rewrites the golden file the CI test
# (tests/clients.rs: differential_against_dynalite_golden) compares against.
#
#   bench/dynamodb/differential.sh [--record]
source "$(dirname "$0")/common.sh"
py=${ESB_VENV:-${ESB_CACHE_DIR:-/var/cache/esb}/venv}/bin/python
[ -x "$py" ] || { echo "no Python venv with boto3: run scripts/prereqs.sh" >&2; exit 1; }
install_dynalite
build_ours
start_ours 18111
start_dynalite 18112
cd "$root/crates/esb-dynamodb/tests/py"
if [ "${1:-}" = "--record" ]; then
  # Record from the fresh dynalite, then compare against what was recorded.
  "$py" differential.py --endpoint http://127.0.0.1:18112 --record dynalite_golden.json
  "$py" differential.py --endpoint http://127.0.0.1:18111 --compare dynalite_golden.json
else
  "$py" differential.py --endpoint http://127.0.0.1:18111 --against http://127.0.0.1:18112
fi
