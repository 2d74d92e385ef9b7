#!/usr/bin/env bash
# Load-tests the serve example on loopback with wrk: POST /predict (raw body) at each
# concurrency in $CONCURRENCY (default "1 8 32 128"), DURATION seconds each, with the
# server's resident memory: at rest, and its peak during each run (VmHWM, reset before each
# run through /proc/PID/clear_refs).
#
#   scripts/loadtest_serve.sh [DURATION] [IMAGE] [-- extra serve arguments]
#   scripts/loadtest_serve.sh 10 tests/fixtures/images/chelsea.png -- --max-batch 1   # unbatched
#
# Needs Debian's wrk (apt-get install -y wrk). Not run by CI. Traffic goes to 127.0.0.1 only.
# SKIP_BUILD=1 uses the release binary already built; PORT sets the port (default 18081).
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-20}
image=${2:-tests/fixtures/images/chelsea.png}
shift $(( $# < 2 ? $# : 2 ))
[ "${1:-}" = "--" ] && shift
port=${PORT:-18081}
url="http://127.0.0.1:${port}"
concurrency=${CONCURRENCY:-1 8 32 128}

[ -n "${SKIP_BUILD:-}" ] || cargo build --release --example serve
target/release/examples/serve --addr "127.0.0.1:${port}" "$@" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
# Ready: the weights are loaded and the warm-up pass ran.
for _ in $(seq 1 240); do
  if curl -fsS "$url/ready" >/dev/null 2>&1; then break; fi
  sleep 0.5
done
# The server's CPU time so far (user + system), in seconds.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$server/stat"; }
served() { curl -fsS "$url/metrics" | awk '/^serve_requests_total\{route="\/predict",status="200"\}/ {print $2}'; }
rss() { grep -E '^(VmRSS|VmHWM)' "/proc/$server/status" | tr -s ' \t' ' ' | paste -sd ' '; }
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  host: $(nproc) cores  serve args: $*  uptime:$(uptime | sed 's/.*load average/ load average/')"
echo "image: $image ($(stat -c %s "$image") bytes)"
echo "RSS after load, before traffic: $(rss)"
curl -fsS --data-binary "@$image" "$url/predict" >/dev/null   # one warm-up request
echo "RSS after one request: $(rss)"
for c in $concurrency; do
  echo 5 > "/proc/$server/clear_refs" 2>/dev/null || true   # resets VmHWM to the current RSS
  echo "=== concurrency $c ==="
  cpu0=$(cpu); ok0=$(served)
  IMAGE="$image" wrk -t1 -c"$c" -d"${duration}s" --timeout 30s --latency \
    -s scripts/wrk_predict.lua "$url/predict"
  cpu1=$(cpu); ok1=$(served)
  echo "RSS after c=$c (VmHWM: the peak during the run): $(rss)"
  awk -v a="$cpu0" -v b="$cpu1" -v n0="$ok0" -v n1="$ok1" 'BEGIN {n = n1 - n0;
    printf "server CPU: %.1f s for %d answered requests = %.1f ms a request\n", b - a, n, n ? 1000 * (b - a) / n : 0}'
done
curl -fsS "$url/metrics" | grep -E '^serve_(batch_size_(sum|count)|requests_total)' || true
echo "uptime after:$(uptime | sed 's/.*load average/ load average/')"
