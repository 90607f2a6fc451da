#!/usr/bin/env bash
# Refresh the abcjs bundle that report.html inlines: the npm release named in ABCJS_VERSION (edit it
# first to move to another release), its minified "basic" build (rendering + audio sequence) and its licence.
set -euo pipefail
cd "$(dirname "$0")"
version="$(cat ABCJS_VERSION)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack "abcjs@$version" --silent >/dev/null && tar xzf "abcjs-$version.tgz")
cp "$tmp/package/dist/abcjs-basic-min.js" abcjs-basic-min.js
cp "$tmp/package/LICENSE.md" abcjs-LICENSE.md
echo "abcjs $version: $(sha256sum abcjs-basic-min.js | cut -c1-16)..."
