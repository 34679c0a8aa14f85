#!/usr/bin/env bash
# Gateway vs nginx (Debian) in front of the same warm workers, same client (wrk), same run.
#
# Workers: N copies of the Rust test function (lambda_runtime) under esb-supervisor on
# 127.0.0.1. The gateway serves an open HttpApi route (`ANY /bench`): TLS, routing, a
# payload 2.0 event, a pooled keep-alive connection to an idle worker, the proxy response.
# nginx serves TLS with the same certificate and proxies to the workers' invoke endpoint
# (upstream with keepalive, least_conn, max_conns=1 per worker since a worker takes one
# invocation at a time). wrk posts `{}` over HTTPS keep-alive connections at concurrency 1
# and 64 for DURATION seconds each.
#
# Usage: [ROUNDS=3] bench/gateway/run.sh [DURATION_SECONDS=5] [WORKERS=64]   (root, loopback
# only). Rounds alternate gateway and nginx; medians are reported.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-5}
WORKERS=${2:-64}
ROUNDS=${ROUNDS:-3}
GW_PORT=18443
NGX_PORT=18444

need() { command -v "$1" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$2"; }; }
need wrk wrk
need nginx nginx-light

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -q -p esb-supervisor --bin esb-supervisor
cargo build --release -q -p esb-test-functions --bin esb-test-function
cargo build --release -q -p esb-gateway --example bench_gateway
REL=$CARGO_TARGET_DIR/release

WORK=$(mktemp -d)
NGX_PID=""
cleanup() {
  [ -n "$NGX_PID" ] && kill "$NGX_PID" 2>/dev/null || true
  [ -n "${GW_PID:-}" ] && { exec {GW[1]}>&- 2>/dev/null || true; wait "$GW_PID" 2>/dev/null || true; }
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/task" "$WORK/gw" "$WORK/nginx/logs"
ln -s "$REL/esb-test-function" "$WORK/task/bootstrap"

coproc GW { exec "$REL/examples/bench_gateway" "$REL/esb-supervisor" "$WORK/task" "$WORKERS" "$GW_PORT" "$WORK/gw"; }
GW_PID=$GW_PID
read -r -t 120 line <&"${GW[0]}"
case "$line" in READY*) ;; *) echo "gateway did not start: $line" >&2; exit 1;; esac
PORTS=${line#READY workers=}

{
  echo "worker_processes 2; daemon off; pid $WORK/nginx.pid; error_log $WORK/nginx/error.log warn;"
  echo "events { worker_connections 4096; }"
  echo "http { access_log off;"
  echo "  client_body_temp_path $WORK/nginx/body; proxy_temp_path $WORK/nginx/proxy;"
  echo "  fastcgi_temp_path $WORK/nginx/fcgi; uwsgi_temp_path $WORK/nginx/uwsgi; scgi_temp_path $WORK/nginx/scgi;"
  echo "  upstream workers { zone workers 256k; least_conn; keepalive $WORKERS;"
  for p in ${PORTS//,/ }; do echo "    server 127.0.0.1:$p max_conns=1;"; done
  echo "  }"
  echo "  server { listen 127.0.0.1:$NGX_PORT ssl http2;"
  echo "    ssl_certificate $WORK/gw/server.pem; ssl_certificate_key $WORK/gw/server.key;"
  echo "    location / { proxy_pass http://workers/2015-03-31/functions/function/invocations;"
  echo "      proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
  echo "}"
} > "$WORK/nginx.conf"
nginx -p "$WORK/nginx" -c "$WORK/nginx.conf" &
NGX_PID=$!
sleep 1

cat > "$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
LUA

# ms from wrk's "1.23ms" / "456.00us" / "1.01s".
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/, "", v); print v/1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v); print v+0 } else { sub(/s$/, "", v); print v*1000 } }'; }

run() { # name url conns -> "rps p50 p99 non2xx"
  local out
  out=$(wrk -t"$(( $3 < 2 ? $3 : 2 ))" -c"$3" -d"${DURATION}s" --latency -s "$WORK/post.lua" "$2")
  local rps p50 p99 bad
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
  bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); bad=${bad:-0}
  echo "$rps $p50 $p99 $bad"
}

# Warm both paths.
wrk -t1 -c4 -d2s -s "$WORK/post.lua" "https://127.0.0.1:$GW_PORT/bench" >/dev/null
wrk -t1 -c4 -d2s -s "$WORK/post.lua" "https://127.0.0.1:$NGX_PORT/" >/dev/null

median() { tr ' ' '\n' <<<"$*" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf "%-6s %-8s %12s %10s %10s %8s\n" conc server "req/s" "p50 ms" "p99 ms" non2xx
for c in 1 64; do
  G_RPS=(); G_P50=(); G_P99=(); G_BAD=0; N_RPS=(); N_P50=(); N_P99=(); N_BAD=0
  for _ in $(seq "$ROUNDS"); do
    read -r a b d e < <(run gateway "https://127.0.0.1:$GW_PORT/bench" "$c")
    G_RPS+=("$a"); G_P50+=("$b"); G_P99+=("$d"); G_BAD=$((G_BAD + e))
    read -r a b d e < <(run nginx "https://127.0.0.1:$NGX_PORT/" "$c")
    N_RPS+=("$a"); N_P50+=("$b"); N_P99+=("$d"); N_BAD=$((N_BAD + e))
  done
  g_rps=$(median "${G_RPS[@]}"); g_p50=$(median "${G_P50[@]}"); g_p99=$(median "${G_P99[@]}")
  n_rps=$(median "${N_RPS[@]}"); n_p50=$(median "${N_P50[@]}"); n_p99=$(median "${N_P99[@]}")
  printf "%-6s %-8s %12s %10s %10s %8s\n" "$c" gateway "$g_rps" "$g_p50" "$g_p99" "$G_BAD"
  printf "%-6s %-8s %12s %10s %10s %8s\n" "$c" nginx "$n_rps" "$n_p50" "$n_p99" "$N_BAD"
  awk -v c="$c" -v a="$g_rps" -v b="$n_rps" -v p="$g_p50" -v q="$n_p50" -v r="$g_p99" -v s="$n_p99" \
    'BEGIN { printf "c=%s  gateway/nginx: req/s %.2fx  p50 %.2fx  p99 %.2fx\n", c, a/b, p/q, r/s }'
done
