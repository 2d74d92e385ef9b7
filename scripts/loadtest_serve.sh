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
rss() { grep -E '^(VmRSS|VmHWM)' "/proc/$server/status" | tr -s ' \t' ' ' | paste -sd ' '; }
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  host: $(nproc) cores  serve args: $*  uptime:$(uptime | sed 's/.*load average/ load average/')"
echo "image: $image ($(stat -c %s "$image") bytes)"
echo "RSS after load, before traffic: $(rss)"
curl -fsS --data-binary "@$image" "$url/predict" >/dev/null   # one warm-up request
echo "RSS after one request: $(rss)"
for c in $concurrency; do
  echo 5 > "/proc/$server/clear_refs" 2>/dev/null || true   # resets VmHWM to the current RSS
  echo "=== concurrency $c ==="
  IMAGE="$image" wrk -t1 -c"$c" -d"${duration}s" --timeout 30s --latency \
    -s scripts/wrk_predict.lua "$url/predict"
  echo "RSS after c=$c (VmHWM: the peak during the run): $(rss)"
done
curl -fsS "$url/metrics" | grep -E '^serve_(batch_size_(sum|count)|requests_total)' || true
echo "uptime after:$(uptime | sed 's/.*load average/ load average/')"
