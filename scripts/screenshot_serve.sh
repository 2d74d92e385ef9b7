#!/usr/bin/env bash
# Starts the serve example (release build) on a free loopback port, drives headless Chromium
# against it (upload an image, wait for the bars, save a screenshot), then stops the server.
#
#   scripts/screenshot_serve.sh [OUT.png] [IMAGE]
#
# Needs: Debian's chromium (apt-get install -y chromium) and Node 18+; installs playwright-core
# into scripts/screenshot/node_modules on first use (npm). Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/serve_screenshot.png}
image=${2:-tests/fixtures/images/chelsea.png}
port=${PORT:-18080}

if [ ! -d scripts/screenshot/node_modules/playwright-core ]; then
  (cd scripts/screenshot && npm install --no-audit --no-fund)
fi
cargo build --release --example serve
target/release/examples/serve --addr "127.0.0.1:${port}" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:${port}/health" >/dev/null 2>&1; then break; fi
  sleep 0.5
done
node scripts/screenshot/screenshot_serve.mjs --url "http://127.0.0.1:${port}/" --image "$image" --out "$out"
