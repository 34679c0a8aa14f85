#!/usr/bin/env bash
# Where a GetItem's time goes, in figures that hold on a shared machine:
#   1. callgrind: the server's user-space instructions per GetItem (repeatable to the
#      instruction; valgrind runs the software SHA-256, shown apart);
#   2. perf stat: the server's CPU per GetItem under 16 clients, esb and dynalite
#      alternated (needs perf; noisy, but both in the same minutes);
#   3. the round-trip floor: the same client against requests the server refuses from
#      their headers alone (unknown key: no body, no signature, no store).
#
#   bench/dynamodb/profile.sh              SERVE=/path/to/other/serve bench/dynamodb/profile.sh
source "$(dirname "$0")/common.sh"
install_dynalite
build_ours
serve=${SERVE:-$serve}
items=2000

echo "== callgrind: instructions per GetItem (1 client, 5 s)"
ESB_DYNAMODB_SYNC=full valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
  "$serve" 127.0.0.1:18161 "$work/cg" >"$work/cg.log" 2>&1 &
pids+=($!)
cg=${pids[-1]}
for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/18161) 2>/dev/null && break; sleep 0.2; done
"$loadgen" 127.0.0.1:18161 setup bench
"$loadgen" 127.0.0.1:18161 load bench "$items" 200 >/dev/null
"$loadgen" 127.0.0.1:18161 get bench 1 1 "$items" >/dev/null
callgrind_control -z "$cg" >/dev/null
ops=$("$loadgen" 127.0.0.1:18161 get bench 1 5 "$items" | python3 -c "import json,sys; print(json.load(sys.stdin)['ops'])")
callgrind_control -d "$cg" >/dev/null
sleep 1
dump=$(ls -t "$work"/cg.out.* | head -1)
total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ && !n++ {gsub(",", "", $1); print $1}')
sha=$(callgrind_annotate --inclusive=yes "$dump" 2>/dev/null |
  awk '/sha2::sha256::compress256 \[/ && !n++ {gsub(",", "", $1); print $1}')
echo "GetItems: $ops; instructions per GetItem: $((total / ops)), of which SHA-256: $((${sha:-0} / ops))"
kill "$cg"; wait "$cg" 2>/dev/null || true

if perf stat -e task-clock true >/dev/null 2>&1; then
  echo "== perf stat: server CPU per GetItem, 16 clients"
  start_ours 18162 full
  start_dynalite 18163
  declare -A who=([18162]="esb" [18163]="dynalite")
  declare -A pid=([18162]=${pids[-2]} [18163]=${pids[-1]})
  for port in 18162 18163; do
    "$loadgen" "127.0.0.1:$port" setup bench
    "$loadgen" "127.0.0.1:$port" load bench "$items" 200 >/dev/null
  done
  for _ in 1 2 3; do
    for port in 18162 18163; do
      perf stat -e task-clock -x, -o "$work/stat" -p "${pid[$port]}" -- sleep 3 2>/dev/null &
      st=$!
      ops=$("$loadgen" "127.0.0.1:$port" get bench 16 3 "$items" | python3 -c "import json,sys; print(json.load(sys.stdin)['ops'])")
      wait "$st"
      ms=$(grep task-clock "$work/stat" | cut -d, -f1)
      python3 -c "print(f'${who[$port]}: {$ops / 3:.0f} GetItem/s, {$ms * 1000 / $ops:.1f} us of server CPU each')"
    done
  done
fi

echo "== round trips: refused from the headers vs GetItem (same server, same client)"
start_ours 18164 full
"$loadgen" 127.0.0.1:18164 setup bench
"$loadgen" 127.0.0.1:18164 load bench "$items" 200 >/dev/null
for c in 1 16; do
  refused=$(AWS_ACCESS_KEY_ID=NOBODY "$loadgen" 127.0.0.1:18164 get bench "$c" 3 "$items" 2>/dev/null |
    python3 -c "import json,sys; r=json.load(sys.stdin); print(round(r['errors'] / r['secs']))")
  real=$("$loadgen" 127.0.0.1:18164 get bench "$c" 3 "$items" | python3 -c "import json,sys; print(json.load(sys.stdin)['ops_per_sec'])")
  echo "$c client(s): refused $refused/s, GetItem $real/s"
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
