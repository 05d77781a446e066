#!/usr/bin/env bash
# Rebuilds the portal's editor bundle (../src/portal/editor.js) from editor.mjs and the locked
# CodeMirror packages. The bundle is committed, so building Warren needs no Node.js; run this
# after changing editor.mjs or package.json, and commit both the bundle and package-lock.json.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --ignore-scripts
node node_modules/esbuild/bin/esbuild editor.mjs --bundle --minify --format=iife --target=es2020 \
  --legal-comments=none --outfile=../src/portal/editor.js
# The sources' digest, checked by a test: a bundle older than its sources fails it.
sources=$(cat editor.mjs package-lock.json | sha256sum | cut -d' ' -f1)
printf '// CodeMirror 6 (MIT, https://codemirror.net), bundled by management/server/portal-editor/build.sh\n// from editor.mjs and package-lock.json, sha256 %s\n' "$sources" |
  cat - ../src/portal/editor.js > ../src/portal/editor.js.tmp
mv ../src/portal/editor.js.tmp ../src/portal/editor.js
