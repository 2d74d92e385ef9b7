#!/usr/bin/env bash
# The crate's public API as a plain-text listing, from stable rustdoc's HTML (cargo-public-api
# needs nightly rustdoc JSON and did not install on the build machine in time): every public
# item's declaration (struct and enum bodies with their public fields and variants), every
# inherent method's signature, and every trait the item implements. Items marked
# `#[doc(hidden)]` are not part of the supported API and do not appear.
#
#   .ci/public-api.sh          regenerate and diff against docs/public-api.txt (exit 1 on a change)
#   .ci/public-api.sh --bless  rewrite docs/public-api.txt
#
# Needs python3 (standard library only); .ci/run runs it after the docs build.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo doc --no-deps --quiet
out=$(mktemp)
python3 - target/doc/fastai_infer >"$out" <<'PY'
import html, os, re, sys

root = sys.argv[1]

def text(fragment):
    t = re.sub(r"<[^>]+>", "", fragment)
    t = html.unescape(t).replace("\u00a0", " ")
    return re.sub(r"\s+", " ", t).strip().replace("( ", "(").replace(" )", ")").replace(", )", ")")

def section(page, name):
    start = page.find(f'id="{name}"')
    if start < 0:
        return ""
    nxt = [page.find(f'id="{n}"', start + 1) for n in
           ("implementations-list", "trait-implementations-list", "synthetic-implementations-list",
            "blanket-implementations-list", "deref-methods", "implementors")]
    nxt = [n for n in nxt if n > start]
    return page[start:min(nxt) if nxt else len(page)]

crate_root = open(os.path.join(root, "index.html"), encoding="utf-8").read()
for use in re.findall(r"<code>(pub use .*?;)</code>", crate_root, re.S):
    print(f"reexport fastai_infer: {text(use)}")
index = open(os.path.join(root, "all.html"), encoding="utf-8").read()
items = sorted(set(re.findall(r'<li><a href="([^"]+)">([^<]+)</a></li>', index)), key=lambda x: x[1])
for href, path in items:
    kind = os.path.basename(href).split(".")[0]
    page = open(os.path.join(root, href), encoding="utf-8").read()
    decl = re.search(r'<pre class="rust item-decl"><code>(.*?)</code></pre>', page, re.S)
    decl = text(decl.group(1)) if decl else ""
    decl = re.sub(r"/\*.*?\*/ ?", "", decl)
    print(f"{kind} fastai_infer::{path}" + (f": {decl}" if decl else ""))
    inherent = section(page, "implementations-list")
    for h in re.findall(r'<h4 class="code-header">(.*?)</h4>', inherent, re.S):
        print(f"    {text(h)}")
    traits = section(page, "trait-implementations-list")
    for h in re.findall(r'<h3 class="code-header">(.*?)</h3>', traits, re.S):
        print(f"    {text(h)}")
PY
if [ "${1:-}" = "--bless" ]; then
    mv "$out" docs/public-api.txt
    echo "wrote docs/public-api.txt ($(grep -c '^[a-z]' docs/public-api.txt) items)"
    exit 0
fi
if ! diff -u docs/public-api.txt "$out"; then
    echo "the public API changed: review the diff, then run .ci/public-api.sh --bless" >&2
    rm -f "$out"
    exit 1
fi
rm -f "$out"
echo "public API unchanged"
