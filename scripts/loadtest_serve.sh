#!/usr/bin/env bash
# Load-tests the serve example on loopback with wrk: POST /predict (raw body) at concurrency
# 1, 8 and 32, DURATION seconds each, and the server's RSS before and after.
#
#   scripts/loadtest_serve.sh [DURATION] [IMAGE] [-- extra serve arguments]
#
# Needs Debian's wrk (apt-get install -y wrk). Not run by CI. Traffic goes to 127.0.0.1 only
# and stops after 3 x DURATION seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-20}
image=${2:-tests/fixtures/images/chelsea.png}
shift $(( $# < 2 ? $# : 2 ))
[ "${1:-}" = "--" ] && shift
port=${PORT:-18081}
url="http://127.0.0.1:${port}"

cargo build --release --example serve
target/release/examples/serve --addr "127.0.0.1:${port}" "$@" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if curl -fsS "$url/health" >/dev/null 2>&1; then break; fi
  sleep 0.5
done
rss() { grep -E '^(VmRSS|VmHWM)' "/proc/$server/status" | tr -s ' \t' ' ' | paste -sd ' '; }
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  host: $(nproc) cores  uptime:$(uptime | sed 's/.*load average/ load average/')"
echo "image: $image ($(stat -c %s "$image") bytes)"
echo "RSS after load, before traffic: $(rss)"
curl -fsS --data-binary "@$image" "$url/predict" >/dev/null   # one warm-up request
echo "RSS after one request: $(rss)"
for c in 1 8 32; do
  echo "=== concurrency $c ==="
  IMAGE="$image" wrk -t1 -c"$c" -d"${duration}s" --timeout 30s --latency \
    -s scripts/wrk_predict.lua "$url/predict"
  echo "RSS after c=$c: $(rss)"
done
echo "uptime after:$(uptime | sed 's/.*load average/ load average/')"
