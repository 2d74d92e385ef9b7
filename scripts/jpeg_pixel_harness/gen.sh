#!/bin/sh
# Writes src/jpeg/mod.rs: the repository's src/decode/jpeg/mod.rs with every stage module
# included by path and made public, plus the harness entry point. Then build with
#   CARGO_TARGET_DIR=/tmp/jpeg_pixel_harness cargo build --release
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
mkdir -p "$HERE/src/jpeg"
sed -E "s#^mod ([a-z_]+);#\#[path = \"$REPO/src/decode/jpeg/\1.rs\"] pub mod \1;#; s/^#!\[allow\(dead_code\)\].*//" \
  "$REPO/src/decode/jpeg/mod.rs" > "$HERE/src/jpeg/mod.rs"
cat >> "$HERE/src/jpeg/mod.rs" <<'EOT'
/// Harness entry.
pub(crate) fn harness_to_pixels(f: &Frame) -> JpegResult<Decoded> { pixels::to_pixels(f) }
EOT
