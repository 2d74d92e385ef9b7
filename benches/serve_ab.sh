#!/usr/bin/env bash
# A/B load test of builds of the serve example: `--workers 2`, wrk at concurrency 8, the builds
# alternated ROUNDS times so that a slow spell of a shared machine lands on each alike. Prints,
# per run: requests/s, p50 and p99 latency, and the server's CPU time (user + system, from
# /proc/PID/stat) per request.
#
#   benches/serve_ab.sh ROUNDS DURATION SERVE_BINARY_A SERVE_BINARY_B [...]
#
# Build each variant with `cargo build --release --example serve` and copy
# target/release/examples/serve aside. Needs wrk. Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=$1 duration=$2
shift 2
image=${IMAGE:-tests/fixtures/images/chelsea.png}
port=${PORT:-18082}
url="http://127.0.0.1:${port}"
tck=$(getconf CLK_TCK)
run() {
  local bin=$1
  "$bin" --addr "127.0.0.1:${port}" --workers 2 >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 1 120); do
    curl -fsS "$url/health" >/dev/null 2>&1 && break
    sleep 0.5
  done
  for _ in 1 2 3; do curl -fsS --data-binary "@$image" "$url/predict" >/dev/null; done
  local t0 t1 out
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  out=$(IMAGE="$image" wrk -t1 -c8 -d"${duration}s" --timeout 30s --latency \
    -s scripts/wrk_predict.lua "$url/predict")
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local reqs rps p50 p99 non2xx
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  awk -v b="$bin" -v r="$reqs" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v c0="$t0" -v c1="$t1" \
    -v tck="$tck" -v bad="${non2xx:-0}" \
    'BEGIN { printf "%-28s %6s req %8s req/s  p50 %8s  p99 %8s  cpu/req %6.1f ms  non-2xx %s\n",
             b, r, rps, p50, p99, 1000 * (c1 - c0) / tck / r, bad }'
}
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  host: $(nproc) cores  load:$(uptime | sed 's/.*load average://')"
for r in $(seq 1 "$rounds"); do
  bins=("$@")
  if (( r % 2 == 0 )); then
    mapfile -t bins < <(printf '%s\n' "$@" | tac)
  fi
  for b in "${bins[@]}"; do run "$b"; done
done
echo "load after:$(uptime | sed 's/.*load average://')"
